"""Radix cache (RadixAttention): a radix tree over token ids whose nodes own the KV slots of cached prefixes.

Page size 1: every cached token owns exactly one KV slot. A node holds a run of tokens and their
slots; the path from the root to a node spells the prefix those slots were computed for.

    root
     |-- [1 2 3]            node A: key (1, 2, 3), value [s1 s2 s3]
     |     |-- [4 5]        node B: prefix 1 2 3 4 5
     |     `-- [9]          node C: prefix 1 2 3 9
     `-- [7 7]              node D: prefix 7 7

Sizes: every cached token is either *protected* (its node has lock_ref > 0, a running request
reads it) or *evictable* (lock_ref == 0). total_size == evictable_size + protected_size.
Only unlocked leaves are evicted, least recently used first; a parent becomes a candidate
once its last child is gone. The root holds no tokens and is never evicted.

All mutable state belongs to the engine thread; other threads read `snapshot()` results,
which are immutable.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import NamedTuple

import torch

from sglbench.runtime.records import (
    PREVIEW_TOKENS,
    CacheCounters,
    CacheEvent,
    CacheSnapshot,
    EventKind,
    NodeSnapshot,
)
from sglbench.sequences import common_prefix_len


class CacheIntegrityError(RuntimeError):
    """`RadixCache.check_integrity()` found the tree and its bookkeeping out of agreement."""


class TreeNode:
    """A run of tokens with their KV slots. Children are keyed by the first token id of their run."""

    __slots__ = (
        "children",
        "hit_count",
        "id",
        "key",
        "last_access",
        "lock_ref",
        "own_locks",
        "parent",
        "value",
    )

    def __init__(self, node_id: int, key: tuple[int, ...], value: torch.Tensor, parent: TreeNode | None):
        self.id = node_id
        self.key = key  # token ids of this run
        self.value = value  # [len(key)] int64 KV slots, value[i] holds the KV of key[i]
        self.parent = parent
        self.children: dict[int, TreeNode] = {}
        # lock_ref = own_locks + sum(child.lock_ref): every lock taken at or below this node passes here.
        self.lock_ref = 0
        self.own_locks = 0  # inc_lock_ref(self) calls not yet matched by dec_lock_ref(self)
        self.last_access = 0  # logical clock of the cache, larger = more recent
        self.hit_count = 0  # recorded match_prefix calls whose match covered this node

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, tokens={len(self.key)}, lock_ref={self.lock_ref})"


class MatchResult(NamedTuple):
    """slots: [matched_len] int64 KV slots of the cached prefix; last_node covers exactly that prefix."""

    slots: torch.Tensor
    last_node: TreeNode
    matched_len: int


class InsertResult(NamedTuple):
    """prefix_len: leading tokens that were already cached; last_node covers the whole inserted sequence."""

    prefix_len: int
    last_node: TreeNode


def _as_key(token_ids: Sequence[int] | torch.Tensor) -> tuple[int, ...]:
    """The tree's key for token_ids: a tuple of Python ints. A tuple is taken as one already (the engine's
    CacheManager passes its requests' tokens so): converting 400 tokens element by element took 20 us of a
    40 us match, and the engine matches, peeks and inserts every request's tokens."""
    if type(token_ids) is tuple:
        return token_ids
    if isinstance(token_ids, torch.Tensor):
        return tuple(token_ids.tolist())
    return tuple(map(int, token_ids))


class RadixCache:
    """Prefix cache over the shared KV pool: match, insert, lock, LRU-evict.

    `free_slots` receives the slots of evicted tokens (the engine passes `pool.free`).
    `disable=True` turns the cache into a no-op for ablations (see `insert` for the caller's duty).
    `on_event` is called synchronously, on the engine thread, for every insert / split / evict / flush.
    `device` is where returned slot tensors live (the pool's device); inserted slots are moved there.
    """

    def __init__(
        self,
        free_slots: Callable[[torch.Tensor], None],
        disable: bool = False,
        on_event: Callable[[CacheEvent], None] | None = None,
        *,
        device: str | torch.device = "cpu",
    ):
        self._free_slots = free_slots
        self.disable = disable
        self._on_event = on_event
        self.device = torch.device(device)
        self._ids = itertools.count(1)
        self._counters = CacheCounters()
        self._version = 0
        self._snapshot: CacheSnapshot | None = None
        self.root = TreeNode(0, (), torch.empty(0, dtype=torch.int64, device=self.device), None)
        self._reset()

    def _reset(self) -> None:
        """Empty tree. The root object survives (requests may hold it as their last_node)."""
        self.root.children = {}
        self._nodes: dict[int, TreeNode] = {0: self.root}  # live nodes by id
        # Lazy min-heap of (last_access, node_id) eviction candidates. An entry is current iff the
        # node is still live, an unlocked leaf, and its last_access is unchanged; stale entries are
        # skipped when popped. Every unlocked non-root leaf has a current entry.
        self._heap: list[tuple[int, int]] = []
        self._evictable = 0
        self._protected = 0
        self._clock = 0

    # ------------------------------------------------------------------ queries

    def match_prefix(self, token_ids: Sequence[int], *, record: bool = True) -> MatchResult:
        """Find the longest cached prefix of `token_ids` and mark it recently used.

        A match ending inside a node splits it, so `last_node` covers exactly the matched prefix
        and can be locked. `record=False` leaves counters and hit counts alone (bookkeeping
        lookups such as a scheduler's prefix-length estimate); recency is updated either way.
        """
        tokens = _as_key(token_ids)
        path = [] if self.disable else self._walk(tokens)
        matched_len = sum(len(n.key) for n in path)
        if record:
            self._counters = replace(
                self._counters,
                query_tokens=self._counters.query_tokens + len(tokens),
                hit_tokens=self._counters.hit_tokens + matched_len,
            )
            for node in path:
                node.hit_count += 1
        self._touch(path)
        self._bump()
        slots = torch.cat([self.root.value, *(n.value for n in path)])  # [matched_len], a fresh tensor
        return MatchResult(slots, path[-1] if path else self.root, matched_len)

    def slots_between(self, upper: TreeNode, lower: TreeNode, end: int) -> torch.Tensor:
        """The cached slots of the tokens after `upper`'s up to position `end` on the path down to `lower` (upper
        an ancestor of lower, or lower itself; `end` at most lower's end): what a request holding `upper` reads
        from the tree once others cached the tokens it computed after it (no walk from the root)."""
        chain = []
        node = lower
        while node is not upper:
            if node is self.root:
                raise ValueError(f"node {upper.id} is not an ancestor of node {lower.id}")
            chain.append(node)
            node = node.parent
        chain.reverse()
        parts, pos = [], self._root_path(upper)[1]
        for node in chain:
            if pos >= end:
                break
            parts.append(node.value[: end - pos])
            pos += len(node.key)
        return torch.cat(parts) if parts else self.root.value.clone()

    def peek_prefix(self, token_ids: Sequence[int]) -> int:
        """Length of the longest cached prefix of `token_ids`, changing nothing (no split, recency or
        counters): for a scheduler ranking its waiting requests every step, where match_prefix's split and
        slot gather cost several times the walk (tree-of-thought: most of a step's host time)."""
        if self.disable:
            return 0
        return sum(c for _, c in self._descend(_as_key(token_ids)))

    def _walk(self, tokens: tuple[int, ...], node: TreeNode | None = None, at: int = 0) -> list[TreeNode]:
        """Nodes spelling the longest cached prefix of `tokens`, root excluded; splits the last if needed. From
        `node` (spelling tokens[:at]) on when given: then only the nodes below it."""
        return [child if c == len(child.key) else self._split(child, c)
                for child, c in self._descend(tokens, node or self.root, at)]

    def _descend(self, tokens: tuple[int, ...], node: TreeNode | None = None,
                 at: int = 0) -> Iterator[tuple[TreeNode, int]]:
        """(node, its tokens matched) down the longest cached prefix of `tokens` from `node` (default the root,
        excluded; it spells tokens[:at]); only the last may match partly (a caller may split it before asking
        for more: nothing follows it). A node matched whole costs one slice and one comparison, run in C."""
        node, i, n = node or self.root, at, len(tokens)
        while i < n:
            child = node.children.get(tokens[i])
            if child is None:
                return
            key = child.key
            if tokens[i : i + len(key)] == key:
                yield child, len(key)
                node, i = child, i + len(key)
                continue
            yield child, common_prefix_len(key, tokens[i : i + len(key)])
            return

    # ------------------------------------------------------------------ mutation

    def insert(self, token_ids: Sequence[int], slots: torch.Tensor, *, below: TreeNode | None = None) -> InsertResult:
        """Cache `token_ids` with their KV `slots`; returns how much was already cached.

        `below`, when given, is a live node whose path spells a prefix of token_ids (a running request's
        locked last_node): the walk starts there instead of at the root, so caching a request that continues
        a long shared prefix compares only its own tokens (tree-of-thought: a 16-node path per insert).

        The tree keeps its own slots for the first `prefix_len` tokens and takes ownership of
        slots[prefix_len:] only. Of slots[:prefix_len], whatever the caller allocated itself
        (rather than got from match_prefix) is now a duplicate the caller must free:

            token_ids  | t0 ... t(c-1) | tc ... t(p-1)     | tp ... t(n-1) |
            slots      |  from match   | caller's copies   | caller's      |
                       |  (tree's own) | -> caller frees   | -> tree owns  |
                       0               c = cached_len      p = prefix_len  n

        where cached_len is what match_prefix returned when the request started (its prefix was
        locked, so p >= c). A caller that allocated every slot itself frees slots[:prefix_len].
        With `disable=True` nothing is stored and prefix_len is 0: the caller frees all slots.
        """
        tokens = _as_key(token_ids)
        if slots.dim() != 1 or slots.numel() != len(tokens):
            raise ValueError(
                f"need one slot per token: {len(tokens)} tokens, slots of shape {tuple(slots.shape)}"
            )
        if self.disable or not tokens:
            return InsertResult(0, self.root)
        path, depth = self._path_to(below, tokens) if below is not None else ([], 0)
        walked = self._walk(tokens, path[-1] if path else None, depth)
        path += walked
        prefix_len = depth + sum(len(n.key) for n in walked)
        if prefix_len < len(tokens):
            parent = path[-1] if path else self.root
            # Own copy: the caller may reuse or overwrite its tensor.
            owned = slots[prefix_len:].to(self.device, torch.int64, copy=True)
            leaf = TreeNode(next(self._ids), tokens[prefix_len:], owned, parent)
            parent.children[leaf.key[0]] = leaf
            self._nodes[leaf.id] = leaf
            self._evictable += len(leaf.key)
            self._counters = replace(
                self._counters, inserted_tokens=self._counters.inserted_tokens + len(leaf.key)
            )
            path.append(leaf)
            self._emit("insert", leaf.id, len(leaf.key))
        self._touch(path)
        self._bump()
        return InsertResult(prefix_len, path[-1])

    def _root_path(self, node: TreeNode) -> tuple[list[TreeNode], int]:
        """The nodes from the root (excluded) down to `node`, and how many tokens they spell."""
        path, depth = [], 0
        while node is not self.root:
            path.append(node)
            depth += len(node.key)
            node = node.parent
        path.reverse()
        return path, depth

    def _path_to(self, node: TreeNode, tokens: tuple[int, ...]) -> tuple[list[TreeNode], int]:
        """`_root_path` of `node`, which must be live and spell a prefix of tokens (its own run is checked against
        them: ValueError otherwise)."""
        self._check_live(node)
        path, end = self._root_path(node)
        if path and (end > len(tokens) or tokens[end - len(node.key) : end] != node.key):
            raise ValueError(f"node {node.id} does not spell a prefix of the {len(tokens)} tokens inserted")
        return path, end

    def _split(self, node: TreeNode, at: int) -> TreeNode:
        """Cut `node` after `at` tokens; returns the new upper node. `node` keeps its id and any locks on it.

        parent -> node[k0 .. k(L-1)]   becomes   parent -> upper[k0 .. k(at-1)] -> node[k(at) .. k(L-1)]
        """
        parent = node.parent
        assert parent is not None and 0 < at < len(node.key), "split must cut a non-root node strictly inside"
        upper = TreeNode(next(self._ids), node.key[:at], node.value[:at].clone(), parent)
        upper.lock_ref = node.lock_ref  # all locks through `node` also pass through `upper`
        upper.last_access = node.last_access
        upper.hit_count = node.hit_count
        upper.children[node.key[at]] = node
        parent.children[upper.key[0]] = upper
        node.key = node.key[at:]
        node.value = node.value[at:].clone()
        node.parent = upper
        self._nodes[upper.id] = upper
        self._emit("split", upper.id, at)
        return upper

    def inc_lock_ref(self, node: TreeNode) -> int:
        """Lock `node` and its ancestors against eviction; returns how many tokens became protected."""
        self._check_live(node)
        if node is self.root:
            return 0
        node.own_locks += 1
        moved = 0
        walk: TreeNode | None = node
        while walk is not None and walk is not self.root:
            if walk.lock_ref == 0:
                moved += len(walk.key)
            walk.lock_ref += 1
            walk = walk.parent
        self._evictable -= moved
        self._protected += moved
        self._bump()
        return moved

    def dec_lock_ref(self, node: TreeNode) -> int:
        """Release one `inc_lock_ref(node)`; returns how many tokens became evictable.

        Raises RuntimeError if `node` holds no lock of its own (an unmatched unlock).
        """
        self._check_live(node)
        if node is self.root:
            return 0
        if node.own_locks == 0:
            raise RuntimeError(f"dec_lock_ref on node {node.id}, which holds no lock taken by inc_lock_ref")
        node.own_locks -= 1
        moved = 0
        walk: TreeNode | None = node
        while walk is not None and walk is not self.root:
            walk.lock_ref -= 1
            if walk.lock_ref == 0:
                moved += len(walk.key)
                if walk.is_leaf:
                    self._push(walk)
            walk = walk.parent
        self._evictable += moved
        self._protected -= moved
        self._bump()
        return moved

    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` cached tokens, least recently used unlocked leaves first.

        Whole leaves go, so the result may exceed `num_tokens`; it is smaller only when every
        remaining token is locked. Returns the number of tokens whose slots went to `free_slots`.
        """
        evicted = 0
        while evicted < num_tokens and self._heap:
            last_access, node_id = heapq.heappop(self._heap)
            node = self._nodes.get(node_id)
            if node is None or node.last_access != last_access or node.children or node.lock_ref:
                continue  # stale entry
            parent = node.parent
            assert parent is not None
            self._free_slots(node.value)
            del parent.children[node.key[0]]
            del self._nodes[node.id]
            self._evictable -= len(node.key)
            evicted += len(node.key)
            self._emit("evict", node.id, len(node.key))
            if parent is not self.root and parent.is_leaf and parent.lock_ref == 0:
                self._push(parent)
        if evicted:
            self._counters = replace(self._counters, evicted_tokens=self._counters.evicted_tokens + evicted)
            self._bump()
        return evicted

    def flush(self) -> None:
        """Drop every cached token and free its slots. Raises RuntimeError while any node is locked."""
        if self._protected:
            raise RuntimeError(
                f"cannot flush the radix cache: {self._protected} tokens are locked by running requests"
            )
        dropped = self.total_size()
        if dropped:
            self._free_slots(torch.cat([n.value for n in self._iter_nodes() if n is not self.root]))
        self._reset()
        self._counters = replace(self._counters, evicted_tokens=self._counters.evicted_tokens + dropped)
        self._emit("flush", self.root.id, dropped)
        self._bump()

    # ------------------------------------------------------------------ sizes and records

    def evictable_size(self) -> int:
        """Cached tokens no request holds a lock on."""
        return self._evictable

    def protected_size(self) -> int:
        """Cached tokens locked by at least one request."""
        return self._protected

    def total_size(self) -> int:
        """All cached tokens (= KV slots the cache owns)."""
        return self._evictable + self._protected

    def counters(self) -> CacheCounters:
        """Cumulative query / hit / insert / evict token counts."""
        return self._counters

    @property
    def version(self) -> int:
        """Mutation counter; a snapshot taken at this version is still current."""
        return self._version

    def snapshot(self, decode: Callable[[Sequence[int]], str] | None = None) -> CacheSnapshot:
        """Immutable record of the tree for widgets; `decode` (e.g. tokenizer.decode) fills text_preview.

        Call on the engine thread and hand the result to readers.
        """
        if decode is None and self._snapshot is not None and self._snapshot.version == self._version:
            return self._snapshot
        nodes = tuple(
            NodeSnapshot(
                id=n.id,
                parent_id=None if n.parent is None else n.parent.id,
                num_tokens=len(n.key),
                token_ids_preview=n.key[:PREVIEW_TOKENS],
                lock_ref=n.lock_ref,
                last_access=n.last_access,
                hit_count=n.hit_count,
                text_preview=None if decode is None else decode(n.key[:PREVIEW_TOKENS]),
                token_ids=n.key,
            )
            for n in self._iter_nodes(sort=True)
        )
        snap = CacheSnapshot(
            version=self._version,
            disabled=self.disable,
            nodes=nodes,
            evictable_size=self._evictable,
            protected_size=self._protected,
            total_size=self.total_size(),
            counters=self._counters,
        )
        if decode is None:
            self._snapshot = snap
        return snap

    def check_integrity(
        self, *, free: int | None = None, running: int | None = None, total: int | None = None
    ) -> None:
        """Recompute everything from the tree and compare with the running bookkeeping.

        With `free` (pool free slots), `running` (slots held by running requests, not cached) and
        `total` (pool size) also checks free + evictable + protected + running == total.
        Raises CacheIntegrityError naming the first disagreement.
        """
        given = [x is not None for x in (free, running, total)]
        if any(given) and not all(given):
            raise ValueError("pass free, running and total together")

        def fail(msg: str) -> None:
            raise CacheIntegrityError(f"radix cache integrity: {msg}")

        if self.root.parent is not None or self.root.key or self.root.lock_ref or self.root.own_locks:
            fail("root must have no parent, no tokens and no locks")
        if self.disable and self.root.children:
            fail("a disabled cache holds nodes")
        current = set(self._heap)
        evictable = protected = reached = 0
        all_slots: list[torch.Tensor] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            reached += 1
            if self._nodes.get(node.id) is not node:
                fail(f"node {node.id} is in the tree but not registered as live")
            child_locks = 0
            for first, child in node.children.items():
                if child.parent is not node:
                    fail(f"node {child.id} is a child of {node.id} but points to another parent")
                if not child.key or child.key[0] != first:
                    fail(f"node {child.id} is keyed by token {first} but its run starts with {child.key[:1]}")
                if child.value.dim() != 1 or child.value.numel() != len(child.key):
                    fail(
                        f"node {child.id} has {len(child.key)} tokens but value of shape {tuple(child.value.shape)}"
                    )
                if child.value.dtype != torch.int64:
                    fail(f"node {child.id} stores slots as {child.value.dtype}, expected int64")
                if child.last_access > node.last_access and node is not self.root:
                    fail(f"node {child.id} was used after its parent {node.id}")
                child_locks += child.lock_ref
                stack.append(child)
            if node is self.root:
                continue
            if node.own_locks < 0 or node.lock_ref != node.own_locks + child_locks:
                fail(
                    f"node {node.id} has lock_ref {node.lock_ref}, expected own {node.own_locks}"
                    f" + children {child_locks}"
                )
            if node.lock_ref:
                protected += len(node.key)
            else:
                evictable += len(node.key)
                if node.is_leaf and (node.last_access, node.id) not in current:
                    fail(f"unlocked leaf {node.id} has no current eviction-heap entry")
            all_slots.append(node.value)
        if reached != len(self._nodes):
            fail(f"{len(self._nodes)} live nodes registered but {reached} reachable from the root")
        if (evictable, protected) != (self._evictable, self._protected):
            fail(
                f"tree holds evictable={evictable} protected={protected}, counters say"
                f" evictable={self._evictable} protected={self._protected}"
            )
        if all_slots:
            slots = torch.cat(all_slots)
            if slots.unique().numel() != slots.numel():
                fail("a KV slot is owned by two cached tokens")
        if self._counters.inserted_tokens - self._counters.evicted_tokens != self.total_size():
            fail(
                f"inserted {self._counters.inserted_tokens} - evicted {self._counters.evicted_tokens}"
                f" != cached {self.total_size()}"
            )
        if free is not None and running is not None and free + self.total_size() + running != total:
            fail(
                f"free {free} + evictable {self._evictable} + protected {self._protected}"
                f" + running {running} != total {total}"
            )

    def __repr__(self) -> str:
        return (
            f"RadixCache(nodes={len(self._nodes) - 1}, cached={self.total_size()}, "
            f"evictable={self._evictable}, protected={self._protected}, disabled={self.disable})"
        )

    # ------------------------------------------------------------------ helpers

    def _iter_nodes(self, sort: bool = False) -> Iterator[TreeNode]:
        """Depth-first, root first; `sort` orders siblings by first token id (deterministic displays)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            children = sorted(node.children.items(), reverse=True) if sort else node.children.items()
            stack.extend(child for _, child in children)

    def _touch(self, path: list[TreeNode]) -> None:
        """Mark a root-to-node path as used now; the path's end may be a fresh eviction candidate."""
        if not path:
            return
        self._clock += 1
        for node in path:
            node.last_access = self._clock
        end = path[-1]
        if end.is_leaf and end.lock_ref == 0:
            self._push(end)

    def _push(self, node: TreeNode) -> None:
        heapq.heappush(self._heap, (node.last_access, node.id))
        if len(self._heap) > 2 * len(self._nodes) + 64:  # too many stale entries: rebuild from live leaves
            self._heap = [
                (n.last_access, n.id)
                for n in self._nodes.values()
                if n is not self.root and n.is_leaf and n.lock_ref == 0
            ]
            heapq.heapify(self._heap)

    def _check_live(self, node: TreeNode) -> None:
        if self._nodes.get(node.id) is not node:
            raise RuntimeError(f"node {node.id} is no longer in the radix cache (evicted or flushed)")

    def _emit(self, kind: EventKind, node_id: int, num_tokens: int) -> None:
        if self._on_event is not None:
            self._on_event(CacheEvent(kind, node_id, num_tokens))

    def _bump(self) -> None:
        self._version += 1
