"""The KV/cache manager: which slots each running request holds, and what the radix cache keeps.

One owner for the KV pool, the request-to-token table and the radix cache, so the accounting
`free + cached + owned by running requests == total slots` lives in one place. A running request's
table row is laid out as

    0 ........ prefix_len ............ kv_len .......... alloc_len
    |- cache's -|---- computed, ours ----|- not computed -|

`prefix_len` tokens are the radix cache's (locked through `last_node`, never freed by the request);
the rest are the request's own until it hands them to the cache or frees them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from sglbench.runtime.kv_pool import KVPool, KVPoolConfig, ReqToTokenTable
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.radix_cache import MatchResult, RadixCache
from sglbench.runtime.records import CacheEvent
from sglbench.runtime.request import Request

CPU_DEFAULT_MAX_TOKENS = 65536
CPU_MEMORY_FRACTION = 0.1


def default_pool_size(mc: ModelConfig, dtype: torch.dtype, device: str, mem_fraction_static: float) -> int:
    """KV slots that fit: a fraction of free GPU memory, or on the CPU a slice of available memory,
    capped so a notebook kernel stays light."""
    bytes_per_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * torch.tensor([], dtype=dtype).element_size()
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return max(int(free * mem_fraction_static) // bytes_per_token, 2)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(min(int(available * CPU_MEMORY_FRACTION) // bytes_per_token, CPU_DEFAULT_MAX_TOKENS), 2)


class CacheManager:
    """Match, lock, admit, allocate, release and cache requests' KV over one pool and one radix cache."""

    def __init__(self, pool_config: KVPoolConfig, max_running_requests: int, context_length: int,
                 disable_radix_cache: bool, on_event: Callable[[CacheEvent], None]):
        self.pool = KVPool(pool_config)
        self.req_to_token = ReqToTokenTable(max_running_requests, context_length + 1, pool_config.device)
        self.cache = RadixCache(free_slots=self.pool.free, disable=disable_radix_cache, on_event=on_event,
                                device=pool_config.device)

    # ------------------------------------------------------------------ matching
    @staticmethod
    def matchable(req: Request) -> tuple[int, ...]:
        """Tokens whose K/V may come from the cache: all but the last (its logits are needed), and
        none from where prompt logprobs are asked (their logits are needed too). A tuple: the radix tree's
        key as it is (`radix_cache._as_key`)."""
        limit = req.prefill_len - 1
        if req.wants_prompt_logprobs:
            limit = min(limit, max(req.params.logprob_start_len - 1, 0))
        return tuple(req.fill_ids[:limit])

    def match(self, req: Request, record: bool = False) -> MatchResult:
        return self.cache.match_prefix(self.matchable(req), record=record)

    def peek(self, req: Request) -> int:
        """Tokens of req the cache holds now, changing nothing (RadixCache.peek_prefix)."""
        return self.cache.peek_prefix(self.matchable(req))

    # ------------------------------------------------------------------ admission
    def available(self) -> int:
        """Slots free now or held only by evictable cache entries."""
        return self.pool.free_count + self.cache.evictable_size()

    def ensure_free(self, n: int) -> bool:
        """Evict unlocked cache leaves until n slots are free; whether they are."""
        if self.pool.free_count < n:
            self.cache.evict(n - self.pool.free_count)
        return self.pool.free_count >= n

    def admit(self, req: Request, max_tokens: int, reserve: int, alone: bool) -> int | None:
        """Give req KV for up to max_tokens of its next chunk, keeping `reserve` slots free (matching
        and locking the cache first if req is new). Returns the tokens given (0: no room now), or
        None when req can never fit (alone: nothing else holds memory)."""
        first_chunk = req.row < 0
        if first_chunk:
            if self.req_to_token.free_rows == 0:
                return 0
            match = self.cache.match_prefix(self.matchable(req))
            self.cache.inc_lock_ref(match.last_node)
            req.last_node, req.prefix_len = match.last_node, match.matched_len
            req.kv_len = req.alloc_len = match.matched_len
            req.row = self.req_to_token.alloc()
            self.req_to_token.write(req.row, 0, match.slots)
        # Through the last token: a resumed request (jump-forward, retraction) computes its last sampled
        # token with the rest and samples its next one in the same step, not in a decode step after it.
        remaining = len(req.fill_ids) - req.kv_len
        n = min(remaining, max_tokens)
        if not self.ensure_free(n + reserve):
            n = min(n, self.pool.free_count - reserve)
            if n <= 0 and alone:
                n = min(remaining, max_tokens, self.pool.free_count)
                if n <= 0:
                    return None
        if n <= 0:
            if first_chunk:
                self.release(req, insert=False)
            return 0
        self.alloc_slots(req, n)
        return n

    def alloc_slots(self, req: Request, n: int) -> None:
        """Append n fresh slots to req's table row, right after its computed tokens."""
        assert req.alloc_len == req.kv_len, "a request's previous step was not committed"
        self.req_to_token.write(req.row, req.kv_len, self.pool.alloc(n))
        req.alloc_len = req.kv_len + n

    def alloc_next_slots(self, reqs: list[Request]) -> None:
        """`alloc_slots(req, 1)` for each of reqs (a decode batch) in one allocation and one table write: per
        request, those took about 28 us, a millisecond of a 32-request step."""
        assert all(r.alloc_len == r.kv_len for r in reqs), "a request's previous step was not committed"
        self.req_to_token.write_one_each([r.row for r in reqs], [r.kv_len for r in reqs], self.pool.alloc(len(reqs)))
        for r in reqs:
            r.alloc_len = r.kv_len + 1

    def rewind(self, req: Request, keep: int) -> bool:
        """Free req's slots past its first `keep` tokens, so it computes them again from there; False, changing
        nothing, when the cache's part of its row (locked, shared) reaches past `keep`."""
        if req.row < 0 or keep < req.prefix_len or keep > req.kv_len:
            return False
        assert req.alloc_len == req.kv_len, "a request's previous step was not committed"
        self.pool.free(self.req_to_token.slots(req.row, keep, req.alloc_len).clone())
        req.kv_len = req.alloc_len = keep
        return True

    # ------------------------------------------------------------------ release
    def release(self, req: Request, insert: bool) -> None:
        """Return req's KV: its computed tokens go into the radix cache (or back to the pool), its lock is dropped."""
        if req.row < 0:
            return
        slots = self.req_to_token.slots(req.row, 0, req.alloc_len).clone()
        self.pool.free(slots[req.kv_len :])  # allocated, never computed
        if insert and not self.cache.disable:
            result = self.cache.insert(tuple(req.fill_ids[: req.kv_len]), slots[: req.kv_len], below=req.last_node)
            self.pool.free(slots[req.prefix_len : result.prefix_len])  # ours duplicated what others cached meanwhile
        else:
            self.pool.free(slots[req.prefix_len : req.kv_len])
        self.cache.dec_lock_ref(req.last_node)
        self.req_to_token.free(req.row)
        req.row, req.kv_len, req.alloc_len, req.prefix_len, req.last_node = -1, 0, 0, 0, None

    def cache_computed_prefix(self, req: Request) -> None:
        """Hand a running request's computed tokens to the radix cache now (not at finish), so requests
        arriving meanwhile share them; the request keeps them locked (prefix_len moves up to kv_len).

        Only while its prompt is not all cached: once it is, tokens computed later are output (a jump-forward's
        re-prefill), which waits for the finish as decoded tokens do. Inserting them would walk the tree and
        rewrite the request's slot row from the root at each jump, for text no other request shares."""
        if self.cache.disable or req.kv_len == req.prefix_len or req.prefix_len >= len(req.input_ids):
            return
        tokens = tuple(req.fill_ids[: req.kv_len])
        slots = self.req_to_token.slots(req.row, 0, req.kv_len).clone()
        result = self.cache.insert(tokens, slots, below=req.last_node)
        if result.prefix_len > req.prefix_len:  # others cached some of these tokens meanwhile: use their slots
            self.pool.free(slots[req.prefix_len : result.prefix_len])
            self.req_to_token.write(req.row, req.prefix_len,
                                    self.cache.slots_between(req.last_node, result.last_node, result.prefix_len))
        self.cache.inc_lock_ref(result.last_node)
        self.cache.dec_lock_ref(req.last_node)
        req.prefix_len, req.last_node = req.kv_len, result.last_node

    # ------------------------------------------------------------------ inspection
    def check_integrity(self, running: list[Request]) -> None:
        """free + cached + owned by running requests == total slots, and the cache's own invariants."""
        owned = sum(r.alloc_len - r.prefix_len for r in running)
        self.cache.check_integrity(free=self.pool.free_count, running=owned, total=self.pool.num_slots)
        if self.pool.allocator.allocated_count() != self.cache.total_size() + owned:
            raise AssertionError("allocated slots differ from cached + running")
