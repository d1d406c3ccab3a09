"""Radix cache: unit tests for each operation, then a stateful property test against a naive model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sglbench.runtime.kv_pool import TokenSlotAllocator
from sglbench.runtime.radix_cache import (
    CacheCounters,
    CacheEvent,
    CacheIntegrityError,
    RadixCache,
    TreeNode,
)


def slots_of(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


class FreeLog:
    """A free_slots callback that records what the cache gave back."""

    def __init__(self) -> None:
        self.freed: list[list[int]] = []

    def __call__(self, slots: torch.Tensor) -> None:
        self.freed.append(slots.tolist())

    def all(self) -> list[int]:
        return sorted(s for batch in self.freed for s in batch)


def make_cache(**kwargs) -> tuple[RadixCache, FreeLog, list[CacheEvent]]:
    log, events = FreeLog(), []
    return RadixCache(log, on_event=events.append, **kwargs), log, events


def tree_contents(cache: RadixCache) -> dict[tuple[int, ...], int]:
    """Every cached prefix (as a token tuple) mapped to the slot of its last token."""
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[tuple[int, ...], TreeNode]] = [((), cache.root)]
    while stack:
        prefix, node = stack.pop()
        for child in node.children.values():
            for i, slot in enumerate(child.value.tolist()):
                out[prefix + child.key[: i + 1]] = slot
            stack.append((prefix + child.key, child))
    return out


# ---------------------------------------------------------------------------- unit tests


def test_match_on_empty_cache_returns_root_and_counts_query():
    cache, _, _ = make_cache()
    m = cache.match_prefix([1, 2, 3])
    assert m.matched_len == 0 and m.last_node is cache.root
    assert m.slots.dtype == torch.int64 and m.slots.numel() == 0
    assert cache.counters() == CacheCounters(
        query_tokens=3, hit_tokens=0, inserted_tokens=0, evicted_tokens=0
    )


def test_match_splits_node_where_the_match_ends():
    cache, _, events = make_cache()
    cache.insert([1, 2, 3, 4], slots_of(11, 12, 13, 14))
    events.clear()
    m = cache.match_prefix([1, 2, 9])
    assert m.matched_len == 2
    assert m.slots.tolist() == [11, 12]
    assert m.last_node.key == (1, 2)
    (lower,) = m.last_node.children.values()
    assert lower.key == (3, 4) and lower.value.tolist() == [13, 14]
    assert events == [CacheEvent("split", m.last_node.id, 2)]
    assert cache.total_size() == 4
    cache.check_integrity()


def test_full_match_returns_all_slots_as_a_fresh_tensor():
    cache, _, _ = make_cache()
    cache.insert([1, 2], slots_of(11, 12))
    cache.insert([1, 2, 3], slots_of(99, 98, 13))
    m = cache.match_prefix([1, 2, 3, 4])
    assert m.matched_len == 3 and m.slots.tolist() == [11, 12, 13]
    m.slots.fill_(0)  # the caller may scribble on what it got back
    assert cache.match_prefix([1, 2, 3]).slots.tolist() == [11, 12, 13]


def test_insert_reports_prefix_len_and_splits_inside_a_node():
    cache, _, events = make_cache()
    first = cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4))
    assert first.prefix_len == 0 and first.last_node.key == (1, 2, 3, 4)

    again = cache.insert([1, 2, 3, 4], slots_of(5, 6, 7, 8))
    assert again.prefix_len == 4 and again.last_node is first.last_node
    assert cache.total_size() == 4  # nothing new stored; the caller frees 5..8

    events.clear()
    branch = cache.insert([1, 2, 7, 7, 7], slots_of(9, 10, 11, 12, 13))
    assert branch.prefix_len == 2
    assert branch.last_node.key == (7, 7, 7) and branch.last_node.value.tolist() == [11, 12, 13]
    assert [e.kind for e in events] == ["split", "insert"]
    assert cache.total_size() == 7
    assert cache.match_prefix([1, 2, 7, 7, 7]).slots.tolist() == [1, 2, 11, 12, 13]

    inner = cache.insert([1, 2, 3], slots_of(20, 21, 22))  # ends inside (3, 4): split, last_node is exact
    assert inner.prefix_len == 3 and inner.last_node.key == (3,)
    cache.check_integrity()


def test_insert_below_a_node_walks_from_it_and_checks_it_spells_a_prefix():
    """Inserting from a locked node (what a running request holds) caches the same as from the root, also after
    a split moved the node's upper tokens into a new parent; a node that does not spell a prefix is refused."""
    cache, _, _ = make_cache()
    base = cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4)).last_node
    cache.inc_lock_ref(base)
    cache.insert([1, 2, 9], slots_of(5, 6, 7))  # splits base: (1, 2) above, base keeps (3, 4)
    assert base.key == (3, 4)
    result = cache.insert([1, 2, 3, 4, 5, 6], slots_of(1, 2, 3, 4, 8, 9), below=base)
    assert result.prefix_len == 4 and result.last_node.key == (5, 6) and result.last_node.parent is base
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).slots.tolist() == [1, 2, 3, 4, 8, 9]
    assert cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4), below=base).last_node is base
    with pytest.raises(ValueError, match="does not spell a prefix"):
        cache.insert([1, 2, 7, 4, 5], slots_of(1, 2, 10, 11, 12), below=base)
    with pytest.raises(ValueError, match="does not spell a prefix"):
        cache.insert([1, 2, 3], slots_of(1, 2, 3), below=base)
    cache.dec_lock_ref(base)
    cache.check_integrity()


def test_slots_between_reads_the_path_below_a_node_up_to_a_position():
    cache, _, _ = make_cache()
    upper = cache.insert([1, 2], slots_of(1, 2)).last_node
    lower = cache.insert([1, 2, 3, 4, 5, 6], slots_of(1, 2, 3, 4, 5, 6)).last_node
    cache.insert([1, 2, 3, 4, 9], slots_of(1, 2, 3, 4, 7))  # splits lower's run: (3, 4) above (5, 6)
    assert cache.slots_between(upper, lower, 6).tolist() == [3, 4, 5, 6]
    assert cache.slots_between(upper, lower, 5).tolist() == [3, 4, 5]
    assert cache.slots_between(upper, lower, 3).tolist() == [3]
    assert cache.slots_between(cache.root, lower, 4).tolist() == [1, 2, 3, 4]
    assert cache.slots_between(lower, lower, 6).tolist() == []
    other = cache.insert([7], slots_of(8)).last_node
    with pytest.raises(ValueError, match="not an ancestor"):
        cache.slots_between(other, lower, 6)


def test_insert_copies_slots_and_accepts_tensor_token_ids():
    cache, _, _ = make_cache()
    slots = slots_of(4, 5, 6)
    cache.insert(torch.tensor([1, 2, 3]), slots)
    slots.fill_(0)
    assert cache.match_prefix(torch.tensor([1, 2, 3])).slots.tolist() == [4, 5, 6]


def test_tuple_lists_and_tensors_of_token_ids_are_one_key():
    """A tuple is taken as the key as it is (the engine passes its requests' tokens so); lists and tensors are
    converted: any of them matches what another inserted."""
    cache, _, _ = make_cache()
    cache.insert((1, 2, 3, 4), torch.tensor([10, 11, 12, 13]))
    cache.insert([1, 2, 7], torch.tensor([20, 21, 22]))
    assert cache.match_prefix([1, 2, 3, 9]).matched_len == 3
    assert cache.match_prefix(torch.tensor([1, 2, 7, 9])).slots.tolist() == [10, 11, 22]
    assert cache.match_prefix((1, 2, 3, 4)).slots.tolist() == [10, 11, 12, 13]
    assert cache.peek_prefix((1, 2, 7)) == 3 and cache.peek_prefix([1, 5]) == 1


def test_insert_rejects_slot_count_mismatch():
    cache, _, _ = make_cache()
    with pytest.raises(ValueError, match="one slot per token"):
        cache.insert([1, 2, 3], slots_of(1, 2))


def test_lock_moves_tokens_between_evictable_and_protected():
    cache, _, _ = make_cache()
    cache.insert([1, 2, 3], slots_of(1, 2, 3))
    node = cache.insert([1, 2, 3, 4, 5], slots_of(1, 2, 3, 4, 5)).last_node
    assert (cache.evictable_size(), cache.protected_size()) == (5, 0)

    assert cache.inc_lock_ref(node) == 5
    assert (cache.evictable_size(), cache.protected_size()) == (0, 5)
    assert cache.inc_lock_ref(node) == 0  # second lock: already protected
    assert node.lock_ref == 2 and node.parent is not None and node.parent.lock_ref == 2
    assert cache.dec_lock_ref(node) == 0
    assert cache.dec_lock_ref(node) == 5
    assert (cache.evictable_size(), cache.protected_size()) == (5, 0)
    with pytest.raises(RuntimeError, match="holds no lock"):
        cache.dec_lock_ref(node)
    assert cache.inc_lock_ref(cache.root) == 0 and cache.dec_lock_ref(cache.root) == 0
    cache.check_integrity()


def test_lock_on_a_child_protects_ancestors_only():
    cache, _, _ = make_cache()
    cache.insert([1, 2, 3], slots_of(1, 2, 3))
    child = cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4)).last_node
    sibling = cache.insert([1, 2, 3, 9, 9], slots_of(1, 2, 3, 5, 6)).last_node
    cache.inc_lock_ref(child)
    assert cache.protected_size() == 4 and cache.evictable_size() == 2
    assert sibling.lock_ref == 0
    assert cache.evict(100) == 2  # only the unlocked sibling goes
    assert cache.match_prefix([1, 2, 3, 4]).matched_len == 4
    cache.check_integrity()


def test_locked_node_keeps_its_lock_through_a_split():
    cache, _, _ = make_cache()
    node = cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4)).last_node
    cache.inc_lock_ref(node)
    upper = cache.match_prefix([1, 2]).last_node  # splits the locked node
    assert upper is not node and node.key == (3, 4) and node.parent is upper
    assert upper.lock_ref == 1 and node.lock_ref == 1
    cache.check_integrity()
    assert cache.dec_lock_ref(node) == 4
    with pytest.raises(RuntimeError, match="holds no lock"):
        cache.dec_lock_ref(upper)  # the lock was taken on `node`, not on its new parent
    cache.check_integrity()


def test_evict_follows_lru_order():
    cache, log, events = make_cache()
    cache.insert([1, 1], slots_of(1, 2))
    cache.insert([2, 2], slots_of(3, 4))
    cache.insert([3, 3], slots_of(5, 6))
    cache.match_prefix([1, 1])  # [1, 1] is now the most recently used
    events.clear()
    assert cache.evict(1) == 2  # a whole leaf goes, even if fewer tokens were asked for
    assert log.freed == [[3, 4]]
    assert cache.evict(2) == 2
    assert log.freed == [[3, 4], [5, 6]]
    assert [e.kind for e in events] == ["evict", "evict"]
    assert cache.match_prefix([1, 1]).matched_len == 2
    assert cache.counters().evicted_tokens == 4
    cache.check_integrity()


def test_parent_becomes_evictable_after_its_last_child_is_evicted():
    cache, log, _ = make_cache()
    cache.insert([1, 2, 3], slots_of(1, 2, 3))
    cache.insert([1, 2, 4], slots_of(1, 2, 4))  # tree: (1 2) -> {(3), (4)}
    cache.insert([5], slots_of(5))  # most recent, so the (1 2) subtree goes first
    assert cache.evict(1) == 1
    assert cache.evict(1) == 1
    assert sorted(log.all()) == [3, 4]
    assert cache.evict(1) == 2  # the parent (1 2) is a leaf now and older than (5)
    assert log.freed[-1] == [1, 2]
    assert cache.evict(10) == 1
    assert cache.total_size() == 0 and not cache.root.children
    cache.check_integrity()


def test_evict_returns_less_when_the_rest_is_locked():
    cache, _, _ = make_cache()
    node = cache.insert([1, 2, 3], slots_of(1, 2, 3)).last_node
    cache.insert([4], slots_of(4))
    cache.inc_lock_ref(node)
    assert cache.evict(10) == 1
    assert cache.evict(10) == 0
    assert cache.total_size() == 3
    cache.dec_lock_ref(node)
    assert cache.evict(10) == 3
    cache.check_integrity()
    with pytest.raises(RuntimeError, match="no longer in the radix cache"):
        cache.inc_lock_ref(node)


def test_flush_frees_everything_and_refuses_while_locked():
    cache, log, events = make_cache()
    cache.insert([1, 2, 3], slots_of(1, 2, 3))
    node = cache.insert([1, 2, 4], slots_of(1, 2, 4)).last_node
    cache.inc_lock_ref(node)
    with pytest.raises(RuntimeError, match="locked"):
        cache.flush()
    cache.dec_lock_ref(node)
    cache.flush()
    assert log.all() == [1, 2, 3, 4]
    assert events[-1] == CacheEvent("flush", 0, 4)
    assert cache.total_size() == 0 and cache.match_prefix([1, 2, 3]).matched_len == 0
    assert cache.counters().inserted_tokens - cache.counters().evicted_tokens == 0
    cache.check_integrity()
    cache.insert([1], slots_of(7))  # usable again, with fresh node ids
    cache.check_integrity()


def test_disabled_cache_stores_nothing():
    cache, log, events = make_cache(disable=True)
    res = cache.insert([1, 2, 3], slots_of(1, 2, 3))
    assert res.prefix_len == 0 and res.last_node is cache.root  # the caller frees all three slots
    m = cache.match_prefix([1, 2, 3])
    assert m.matched_len == 0 and m.slots.numel() == 0
    assert cache.evict(5) == 0
    assert cache.total_size() == 0 and log.freed == [] and events == []
    assert cache.counters() == CacheCounters(
        query_tokens=3, hit_tokens=0, inserted_tokens=0, evicted_tokens=0
    )
    assert cache.snapshot().disabled
    cache.check_integrity()


def test_events_report_insert_split_evict():
    cache, _, events = make_cache()
    a = cache.insert([1, 2, 3], slots_of(1, 2, 3)).last_node
    b = cache.insert([1, 2, 9, 9], slots_of(1, 2, 4, 5)).last_node
    upper = b.parent
    assert upper is not None
    assert events == [
        CacheEvent("insert", a.id, 3),
        CacheEvent("split", upper.id, 2),
        CacheEvent("insert", b.id, 2),
    ]
    events.clear()
    cache.evict(100)
    assert [(e.kind, e.num_tokens) for e in events] == [("evict", 1), ("evict", 2), ("evict", 2)]
    assert {e.node_id for e in events} == {a.id, b.id, upper.id}
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[0].kind = "insert"  # type: ignore[misc]


def test_counters_are_cumulative_and_subtract_to_a_window():
    cache, _, _ = make_cache()
    cache.insert([1, 2, 3, 4], slots_of(1, 2, 3, 4))
    cache.match_prefix([1, 2, 3, 4])
    start = cache.counters()
    cache.match_prefix([1, 2, 7, 7])
    cache.match_prefix([1, 2, 3, 4, 5, 6], record=False)  # bookkeeping lookups are not counted
    window = cache.counters() - start
    assert window == CacheCounters(query_tokens=4, hit_tokens=2, inserted_tokens=0, evicted_tokens=0)
    assert window.hit_rate == 0.5
    assert cache.counters().hit_rate == 6 / 8
    assert CacheCounters().hit_rate == 0.0


def test_snapshot_is_immutable_versioned_and_complete():
    cache, _, _ = make_cache()
    cache.insert(list(range(40)), torch.arange(1, 41))
    node = cache.insert([*range(10), 99], torch.arange(41, 52)).last_node
    cache.inc_lock_ref(node)
    cache.match_prefix(list(range(5)))
    snap = cache.snapshot(decode=lambda ids: " ".join(map(str, ids)))

    assert snap.version == cache.version
    assert snap.total_size == 41 and snap.protected_size == 11 and snap.evictable_size == 30
    assert snap.counters == cache.counters()
    by_id = {n.id: n for n in snap.nodes}
    assert snap.nodes[0].id == 0 and snap.nodes[0].parent_id is None and snap.nodes[0].num_tokens == 0
    assert sum(n.num_tokens for n in snap.nodes) == 41
    long_run = next(n for n in snap.nodes if n.num_tokens == 30)
    assert long_run.token_ids_preview == tuple(range(10, 40))
    locked = by_id[node.id]
    assert locked.lock_ref == 1 and locked.text_preview == "99"
    head = next(n for n in snap.nodes if n.token_ids_preview == (0, 1, 2, 3, 4))
    assert head.hit_count == 1 and head.lock_ref == 1 and head.parent_id == 0
    assert head.text_preview == "0 1 2 3 4"
    for n in snap.nodes[1:]:
        assert n.parent_id in by_id and n.num_tokens > 0

    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.version = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.nodes[0].lock_ref = 5  # type: ignore[misc]
    assert isinstance(snap.nodes, tuple)

    before = cache.version
    plain = cache.snapshot()
    assert plain.nodes[1].text_preview is None
    assert cache.snapshot() is plain  # unchanged tree: the same record
    cache.evict(100)
    assert cache.version > before
    later = cache.snapshot()
    assert later.version > snap.version and later.total_size == 11
    assert snap.total_size == 41 and len(snap.nodes) == 5  # the old record did not move


def test_preview_is_capped_at_32_tokens():
    cache, _, _ = make_cache()
    cache.insert(list(range(100)), torch.arange(1, 101))
    (node,) = cache.snapshot().nodes[1:]
    assert node.num_tokens == 100 and node.token_ids_preview == tuple(range(32))


def test_check_integrity_catches_corruption():
    def corrupted(mutate) -> RadixCache:
        cache, _, _ = make_cache()
        cache.insert([1, 2, 3], slots_of(1, 2, 3))
        cache.insert([1, 2, 4], slots_of(1, 2, 4))
        cache.check_integrity()
        mutate(cache)
        return cache

    def child(cache: RadixCache, *path: int) -> TreeNode:
        node = cache.root
        for tok in path:
            node = node.children[tok]
        return node

    cases = {
        "lock_ref": lambda c: setattr(child(c, 1), "lock_ref", 1),
        "value of shape": lambda c: setattr(child(c, 1, 3), "value", slots_of(3, 3)),
        "two cached tokens": lambda c: setattr(child(c, 1, 3), "value", slots_of(4)),
        "keyed by token": lambda c: setattr(child(c, 1, 3), "key", (5,)),
        "evictable=": lambda c: setattr(c, "_evictable", 7),
    }
    for message, mutate in cases.items():
        with pytest.raises(CacheIntegrityError, match=message):
            corrupted(mutate).check_integrity()

    cache, _, _ = make_cache()
    cache.insert([1, 2], slots_of(1, 2))
    cache.check_integrity(free=6, running=2, total=10)
    with pytest.raises(CacheIntegrityError, match="total 11"):
        cache.check_integrity(free=6, running=2, total=11)
    with pytest.raises(ValueError, match="together"):
        cache.check_integrity(free=6)


def test_repr_is_deterministic():
    cache, _, _ = make_cache()
    node = cache.insert([1, 2], slots_of(1, 2)).last_node
    assert repr(cache) == "RadixCache(nodes=1, cached=2, evictable=2, protected=0, disabled=False)"
    assert repr(node) == f"TreeNode(id={node.id}, tokens=2, lock_ref=0)"


# ---------------------------------------------------------------------------- stateful property test

NUM_SLOTS = 24
MAX_LEN = 8
tokens_st = st.lists(st.integers(0, 3), max_size=MAX_LEN)
# A sequence is a cut of an earlier one plus a fresh suffix, so that multi-turn style sharing happens often.
seq_st = st.tuples(st.integers(0, 15), st.integers(0, MAX_LEN), tokens_st)


class NaiveCache:
    """Token-level model: the set of cached prefixes, each with its slot and last-use time.

    Every cached token is named by its full prefix (a tuple). The set is prefix-closed, so the
    longest cached prefix of a query is found by extending one token at a time. LRU eviction is
    simulated token by token: the candidate is the least recently used unlocked prefix with no
    cached extension. Tokens that share a tree node share their last-use time, and distinct
    leaves never share one (each operation touches a single root path), so the tree's whole-node
    eviction is exactly the first k tokens of this order, where k is what the tree returned.
    """

    def __init__(self) -> None:
        self.store: dict[tuple[int, ...], int] = {}
        self.used: dict[tuple[int, ...], int] = {}
        self.clock = 0
        self.locks: list[tuple[int, ...]] = []  # one entry per held lock: the locked prefix

    def longest(self, seq: tuple[int, ...]) -> int:
        n = 0
        while n < len(seq) and seq[: n + 1] in self.store:
            n += 1
        return n

    def slots(self, seq: tuple[int, ...]) -> list[int]:
        return [self.store[seq[: i + 1]] for i in range(len(seq))]

    def touch(self, seq: tuple[int, ...]) -> None:
        self.clock += 1
        for i in range(len(seq)):
            self.used[seq[: i + 1]] = self.clock

    def add(self, seq: tuple[int, ...], slots: list[int], start: int) -> None:
        for i in range(start, len(seq)):
            self.store[seq[: i + 1]] = slots[i]

    def protected(self) -> set[tuple[int, ...]]:
        return {p[: i + 1] for p in self.locks for i in range(len(p))}

    def evict(self, num_tokens: int, evicted: int) -> None:
        """Replay the tree's eviction of `evicted` tokens after it was asked for `num_tokens`."""
        protected = self.protected()

        def candidates() -> list[tuple[int, ...]]:
            return [
                p
                for p in self.store
                if p not in protected and not any((*p, t) in self.store for t in range(4))
            ]

        times = []
        for _ in range(evicted):
            cands = candidates()
            assert cands, "the tree evicted more tokens than were unlocked"
            oldest = min(self.used[p] for p in cands)
            (victim,) = [p for p in cands if self.used[p] == oldest]  # LRU order is unambiguous
            times.append(oldest)
            del self.store[victim], self.used[victim]
        if evicted < num_tokens:
            assert not candidates(), f"asked for {num_tokens}, evicted {evicted}, but unlocked tokens remain"
        elif num_tokens <= 0:
            assert evicted == 0
        else:
            # Once enough tokens are freed no new node is started: the overshoot finishes one node.
            assert len(set(times[num_tokens - 1 :])) == 1, (
                "eviction started a new leaf after reaching its goal"
            )


class RadixCacheMachine(RuleBasedStateMachine):
    """Random insert / match / lock / unlock / evict / request lifecycles against NaiveCache."""

    operations = 0  # across all examples of a run

    def __init__(self) -> None:
        super().__init__()
        self.allocator = TokenSlotAllocator(NUM_SLOTS)
        self.cache = RadixCache(self.allocator.free)
        self.model = NaiveCache()
        self.history: list[tuple[int, ...]] = []
        self.locks: list[tuple[TreeNode, tuple[int, ...]]] = []
        # running requests: (token ids, cached_len at start, all slots, locked node)
        self.requests: list[tuple[tuple[int, ...], int, torch.Tensor, TreeNode]] = []
        self.query_tokens = 0
        self.hit_tokens = 0

    # ---- helpers

    def make_seq(self, spec: tuple[int, int, list[int]]) -> tuple[int, ...]:
        pick, cut, suffix = spec
        base = self.history[pick % len(self.history)][:cut] if self.history and pick else ()
        seq = (base + tuple(suffix))[: 2 * MAX_LEN]
        self.history.append(seq)
        return seq

    def running(self) -> int:
        return sum(slots.numel() - cached for _, cached, slots, _ in self.requests)

    def match(self, seq: tuple[int, ...], record: bool = True):
        m = self.cache.match_prefix(seq, record=record)
        expected = self.model.longest(seq)
        assert m.matched_len == expected
        assert m.slots.tolist() == self.model.slots(seq[:expected])
        assert len(m.last_node.key) > 0 or expected == 0
        self.model.touch(seq[:expected])
        if record:
            self.query_tokens += len(seq)
            self.hit_tokens += expected
        return m

    def evict(self, num_tokens: int) -> None:
        evicted = self.cache.evict(num_tokens)
        self.model.evict(num_tokens, evicted)
        locked = [prefix for _, prefix in self.locks] + [seq[:cached] for seq, cached, _, _ in self.requests]
        for prefix in locked:  # a locked prefix is never evicted
            assert self.match(prefix, record=False).matched_len == len(prefix)

    def make_room(self, need: int) -> bool:
        if self.allocator.free_count < need:
            self.evict(need - self.allocator.free_count)
        return self.allocator.free_count >= need

    def lock(self, node: TreeNode, prefix: tuple[int, ...]) -> None:
        newly = len(set(prefix[: i + 1] for i in range(len(prefix))) - self.model.protected())
        assert self.cache.inc_lock_ref(node) == newly
        self.model.locks.append(prefix)

    def unlock(self, node: TreeNode, prefix: tuple[int, ...]) -> None:
        self.model.locks.remove(prefix)
        freed = len(set(prefix[: i + 1] for i in range(len(prefix))) - self.model.protected())
        assert self.cache.dec_lock_ref(node) == freed

    def insert(self, seq: tuple[int, ...], slots: torch.Tensor, cached_len: int, below: TreeNode | None = None) -> None:
        expected = self.model.longest(seq)
        res = self.cache.insert(seq, slots, below=below)
        assert res.prefix_len == expected >= cached_len
        assert slots[:cached_len].tolist() == self.model.slots(seq[:cached_len])
        self.allocator.free(slots[cached_len : res.prefix_len])  # the caller's duplicates
        self.model.add(seq, slots.tolist(), res.prefix_len)
        self.model.touch(seq)
        if seq:
            assert (
                len(res.last_node.key) > 0 and res.last_node.key == seq[len(seq) - len(res.last_node.key) :]
            )

    def count(self) -> None:
        type(self).operations += 1

    # ---- rules

    @rule(spec=seq_st)
    def insert_fresh(self, spec):
        """A caller that allocated every slot itself (no match first) and frees slots[:prefix_len]."""
        self.count()
        seq = self.make_seq(spec)
        if self.make_room(len(seq)):
            self.insert(seq, self.allocator.alloc(len(seq)), cached_len=0)

    @rule(spec=seq_st, record=st.booleans())
    def match_only(self, spec, record):
        self.count()
        self.match(self.make_seq(spec), record)

    @rule(spec=seq_st)
    def peek(self, spec):
        """peek_prefix: the longest cached prefix's length, and nothing changes (no split, recency, counters)."""
        self.count()
        seq = self.make_seq(spec)
        before = (self.cache.version, self.cache.counters(), repr(self.cache))
        assert self.cache.peek_prefix(seq) == self.cache.peek_prefix(list(seq)) == self.model.longest(seq)
        assert (self.cache.version, self.cache.counters(), repr(self.cache)) == before

    @precondition(lambda self: len(self.requests) < 3)
    @rule(spec=seq_st)
    def start_request(self, spec):
        """match, lock the prefix, allocate the rest (evicting first if the pool is short)."""
        self.count()
        seq = self.make_seq(spec)
        m = self.match(seq)
        self.lock(m.last_node, seq[: m.matched_len])
        need = len(seq) - m.matched_len
        if not self.make_room(need):  # retract: give the lock back
            self.unlock(m.last_node, seq[: m.matched_len])
            return
        slots = torch.cat([m.slots, self.allocator.alloc(need)])
        self.requests.append((seq, m.matched_len, slots, m.last_node))

    @precondition(lambda self: self.requests)
    @rule(which=st.integers(0, 2), below=st.booleans())
    def finish_request(self, which, below):
        """insert the request's sequence (from the root, or from its locked node as the engine does), free its
        duplicate slots, release its prefix lock."""
        self.count()
        seq, cached_len, slots, node = self.requests.pop(which % len(self.requests))
        self.insert(seq, slots, cached_len, below=node if below else None)
        self.unlock(node, seq[:cached_len])

    @precondition(lambda self: len(self.locks) < 4)
    @rule(spec=seq_st)
    def lock_prefix(self, spec):
        self.count()
        seq = self.make_seq(spec)
        m = self.match(seq)
        self.lock(m.last_node, seq[: m.matched_len])
        self.locks.append((m.last_node, seq[: m.matched_len]))

    @precondition(lambda self: self.locks)
    @rule(which=st.integers(0, 3))
    def unlock_prefix(self, which):
        self.count()
        node, prefix = self.locks.pop(which % len(self.locks))
        self.unlock(node, prefix)

    @rule(num_tokens=st.integers(0, 12))
    def evict_tokens(self, num_tokens):
        self.count()
        self.evict(num_tokens)

    @rule()
    def flush(self):
        self.count()
        if self.model.protected():
            with pytest.raises(RuntimeError, match="locked"):
                self.cache.flush()
        else:
            self.cache.flush()
            self.model.store.clear()
            self.model.used.clear()

    # ---- invariants, checked after every step

    @invariant()
    def tree_matches_model(self):
        self.cache.check_integrity(free=self.allocator.free_count, running=self.running(), total=NUM_SLOTS)
        assert tree_contents(self.cache) == self.model.store
        protected = self.model.protected()
        assert self.cache.protected_size() == len(protected)
        assert self.cache.evictable_size() == len(self.model.store) - len(protected)
        counters = self.cache.counters()
        assert (counters.query_tokens, counters.hit_tokens) == (self.query_tokens, self.hit_tokens)


STATE_MACHINE_SETTINGS = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_radix_cache_against_naive_model():
    RadixCacheMachine.operations = 0
    run_state_machine_as_test(RadixCacheMachine, settings=STATE_MACHINE_SETTINGS)
    assert RadixCacheMachine.operations >= 10_000
