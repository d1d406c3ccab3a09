"""The engine: all mutable serving state, stepped by one thread (see runtime.py).

One step = one model forward: a prefill batch (new or chunked requests) when the scheduler admits
any, else a decode batch of every running request. Memory comes from one KV pool shared by running
requests and the radix cache; when it runs short the cache evicts, then requests are retracted.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

import torch

from sglbench.runtime.attention import make_attention_backend
from sglbench.runtime.cpu_memory import retain_freed_memory
from sglbench.runtime.events import EventLog
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.grammar import GrammarCompiler, GrammarMatcher, plan_jump
from sglbench.runtime.kv_pool import KVPool, KVPoolConfig, ReqToTokenTable
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.loader import load_model, resolve_dtype
from sglbench.runtime.radix_cache import RadixCache
from sglbench.runtime.records import CacheEvent, EngineMetrics
from sglbench.runtime.request import ReqState, Request
from sglbench.runtime.sampling import SamplerRow, sample
from sglbench.runtime.scheduler import PrefixMatch, Scheduler, SchedulerConfig
from sglbench.runtime.tokenizer import Tokenizer, find_stop, streamable_length
from sglbench.sequences import common_prefix_len

CPU_DEFAULT_MAX_TOKENS = 65536
CPU_MEMORY_FRACTION = 0.1


@dataclass(frozen=True)
class EngineConfig:
    model_path: str
    device: str = "cpu"
    dtype: str | torch.dtype = "auto"
    max_total_tokens: int | None = None
    mem_fraction_static: float = 0.85
    context_length: int | None = None
    attention_backend: str = "auto"
    disable_radix_cache: bool = False
    schedule_policy: str = "lpm"
    max_running_requests: int = 64
    max_prefill_tokens: int = 8192
    chunked_prefill_size: int = 2048
    random_seed: int = 0
    jump_forward: bool = True  # append a grammar's forced text without decoding it token by token
    retain_freed_memory: bool = True  # CPU: keep freed activations in the heap (runtime/cpu_memory.py)

    def __post_init__(self) -> None:
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")


@dataclass
class Constraint:
    """A constrained request's grammar position and the output tokens jump-forward appended to it."""

    matcher: GrammarMatcher
    jump_forward_tokens: int = 0


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.model_config = ModelConfig.from_path(config.model_path)
        self.tokenizer = Tokenizer(config.model_path)
        self.device = config.device
        self.dtype = resolve_dtype(config.dtype, config.device, self.model_config)
        if self.device == "cpu" and config.retain_freed_memory:
            retain_freed_memory()
        self.model = load_model(config.model_path, self.device, self.dtype, self.model_config)
        mc = self.model_config
        pool_cfg = KVPoolConfig(self._pool_size(), mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype, self.device)
        self.pool = KVPool(pool_cfg)
        self.context_length = min(config.context_length or mc.max_position_embeddings, mc.max_position_embeddings)
        self.req_to_token = ReqToTokenTable(config.max_running_requests, self.context_length + 1, self.device)
        backend = config.attention_backend
        if backend == "auto":
            backend = "triton" if self.device.startswith("cuda") else "torch"
        self.attention = make_attention_backend(backend, self.pool, mc.head_dim**-0.5)
        self.events = EventLog()
        self.cache = RadixCache(free_slots=self.pool.free, disable=config.disable_radix_cache,
                                on_event=self._on_cache_event, device=self.device)
        self.scheduler = Scheduler(SchedulerConfig(
            policy=config.schedule_policy, max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens, chunked_prefill_size=config.chunked_prefill_size,
            seed=config.random_seed,
        ))
        self.eos_token_ids = frozenset(mc.eos_token_ids) | frozenset(self.tokenizer.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer.hf, mc.vocab_size, self.eos_token_ids)
        self._generator = torch.Generator(device=self.device).manual_seed(config.random_seed)
        self._by_rid: dict[str, Request] = {}
        self._constraints: dict[str, Constraint] = {}  # rid -> grammar state of constrained requests
        self._stats = {"prefill_tokens": 0, "decode_tokens": 0, "num_steps": 0, "num_finished": 0,
                       "num_retractions": 0, "jump_forward_tokens": 0}
        self.metrics = self._build_metrics()

    # ------------------------------------------------------------------ set-up
    def _pool_size(self) -> int:
        mc, cfg = self.model_config, self.config
        if cfg.max_total_tokens:
            return cfg.max_total_tokens
        bytes_per_token = 2 * mc.num_layers * mc.num_kv_heads * mc.head_dim * torch.tensor([], dtype=self.dtype).element_size()
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return max(int(free * cfg.mem_fraction_static) // bytes_per_token, 2)
        # CPU: a slice of the memory available now, capped so a notebook kernel stays light.
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return max(min(int(available * CPU_MEMORY_FRACTION) // bytes_per_token, CPU_DEFAULT_MAX_TOKENS), 2)

    def _on_cache_event(self, event: CacheEvent) -> None:
        self.events.emit(f"cache.{event.kind}", node_id=event.node_id, num_tokens=event.num_tokens)

    # ------------------------------------------------------------------ requests
    def validate_prompt(self, input_ids: list[int], max_new_tokens: int) -> None:
        """Raise ValueError for a prompt this engine can never serve (called before submission)."""
        if not input_ids:
            raise ValueError("prompt is empty: give a non-empty text or input_ids")
        vocab = self.model_config.vocab_size
        bad = [t for t in input_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"input_ids contain token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if len(input_ids) > self.context_length - (1 if max_new_tokens > 0 else 0):
            raise ValueError(
                f"prompt has {len(input_ids)} tokens; the model's context is {self.context_length} tokens"
                f" (room is needed for at least one new token)"
            )
        if len(input_ids) + 1 > self.pool.num_slots:
            raise ValueError(f"prompt has {len(input_ids)} tokens; the KV pool holds only {self.pool.num_slots} (max_total_tokens)")

    def add_request(self, req: Request, matcher: GrammarMatcher | None = None) -> None:
        """Queue req. A constrained request brings its grammar matcher (compiled on the caller's
        thread, see `Runtime.submit`) or gets one here; text its grammar forces at once is appended now."""
        spec = req.params.grammar
        if spec is not None:
            self._constraints[req.rid] = Constraint(matcher or self.grammars.matcher(spec))
        if req.params.seed is not None:
            req.generator = torch.Generator(device=self.device).manual_seed(req.params.seed)
        else:
            req.generator = self._generator
        self._by_rid[req.rid] = req
        self.scheduler.add(req)
        self.events.emit("request.arrived", rid=req.rid, prompt_tokens=len(req.input_ids), program_id=req.program_id)
        if spec is not None:
            self._advance_forced(req, self._constraints[req.rid])

    def abort(self, rid: str, message: str = "aborted by the caller") -> None:
        req = self._by_rid.get(rid)
        if req is None or req.finished:
            return
        self._finish(req, {"type": "abort", "message": message})

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ admission
    def _match(self, req: Request, record: bool = False) -> PrefixMatch:
        result = self.cache.match_prefix(self._matchable(req), record=record)
        return PrefixMatch(result.matched_len, result.last_node)

    def _matchable(self, req: Request) -> list[int]:
        """Tokens whose K/V may come from the cache: all but the last (its logits are needed), and
        none from where prompt logprobs are asked (their logits are needed too)."""
        limit = req.prefill_len - 1
        if req.wants_prompt_logprobs:
            limit = min(limit, max(req.params.logprob_start_len - 1, 0))
        return req.fill_ids[:limit]

    def _ensure_free(self, n: int) -> bool:
        if self.pool.free_count < n:
            self.cache.evict(n - self.pool.free_count)
        return self.pool.free_count >= n

    def _admit(self, req: Request, max_tokens: int) -> int:
        """Give req KV for its next chunk (matching the cache first if it is new). 0 when no room."""
        first_chunk = req.row < 0
        if first_chunk:
            if self.req_to_token.free_rows == 0:
                return 0
            match = self.cache.match_prefix(self._matchable(req))
            self.cache.inc_lock_ref(match.last_node)
            req.last_node, req.prefix_len = match.last_node, match.matched_len
            req.kv_len = req.alloc_len = match.matched_len
            req.row = self.req_to_token.alloc()
            self.req_to_token.write(req.row, 0, match.slots)
        remaining = req.prefill_len - req.kv_len
        reserve = self._decode_reserve()
        n = min(remaining, max_tokens)
        if not self._ensure_free(n + reserve):
            n = min(n, self.pool.free_count - reserve)
            alone = not self.scheduler.running or self.scheduler.running == [req]
            if n <= 0 and alone:
                n = min(remaining, max_tokens, self.pool.free_count)
                if n <= 0:  # nothing else holds memory, so it can never fit
                    self._finish(req, {"type": "length", "message": "the KV pool cannot hold this request's context"})
                    return 0
        if n <= 0:
            if first_chunk:
                self._release_kv(req, insert=False)
            return 0
        self._alloc_slots(req, n)
        if first_chunk:
            req.cached_tokens = min(req.prefix_len, len(req.input_ids))
            req.state = ReqState.RUNNING
            if req.timings.scheduled is None:
                req.timings.scheduled = time.time()
            self.events.emit("request.scheduled", rid=req.rid, cached_tokens=req.prefix_len, program_id=req.program_id)
        return n

    def _alloc_slots(self, req: Request, n: int) -> None:
        """Append n fresh slots to req's table row, right after its computed tokens."""
        assert req.alloc_len == req.kv_len, "a request's previous step was not committed"
        self.req_to_token.write(req.row, req.kv_len, self.pool.alloc(n))
        req.alloc_len = req.kv_len + n

    def _decode_reserve(self) -> int:
        """Slots kept free for the next decode step of the requests already decoding."""
        return len(self.scheduler.decoding())

    def _release_kv(self, req: Request, insert: bool) -> None:
        """Return req's KV: its computed tokens go into the radix cache (or back to the pool), its lock is dropped."""
        if req.row < 0:
            return
        slots = self.req_to_token.slots(req.row, 0, req.alloc_len).clone()
        #   0 ........ prefix_len ............ kv_len .......... alloc_len
        #   |- cache's -|---- computed, ours ----|- not computed -|
        self.pool.free(slots[req.kv_len :])
        if insert and not self.cache.disable:
            result = self.cache.insert(req.fill_ids[: req.kv_len], slots[: req.kv_len])
            self.pool.free(slots[req.prefix_len : result.prefix_len])  # ours duplicated what others cached meanwhile
        else:
            self.pool.free(slots[req.prefix_len : req.kv_len])
        self.cache.dec_lock_ref(req.last_node)
        self.req_to_token.free(req.row)
        req.row, req.kv_len, req.alloc_len, req.prefix_len, req.last_node = -1, 0, 0, 0, None

    def _cache_computed_prefix(self, req: Request) -> None:
        """Hand a running request's computed tokens to the radix cache now (not at finish), so requests
        arriving meanwhile share them; the request keeps them locked."""
        if self.cache.disable or req.kv_len == req.prefix_len:
            return
        slots = self.req_to_token.slots(req.row, 0, req.kv_len).clone()
        result = self.cache.insert(req.fill_ids[: req.kv_len], slots)
        self.pool.free(slots[req.prefix_len : result.prefix_len])  # duplicates of what others cached meanwhile
        match = self.cache.match_prefix(req.fill_ids[: req.kv_len], record=False)
        self.cache.inc_lock_ref(match.last_node)
        self.cache.dec_lock_ref(req.last_node)
        self.req_to_token.write(req.row, 0, match.slots)
        req.prefix_len, req.last_node = req.kv_len, match.last_node

    def _retract(self, req: Request) -> None:
        """Send a running request back to the queue; its K/V stays in the cache to resume from."""
        self._requeue(req)
        req.num_retractions += 1
        self._stats["num_retractions"] += 1
        self.events.emit("request.retracted", rid=req.rid, output_tokens=len(req.output_ids))

    def _requeue(self, req: Request) -> None:
        """Put a running request first in the queue, its computed tokens in the radix cache."""
        self._release_kv(req, insert=True)
        self.scheduler.running.remove(req)
        req.state = ReqState.WAITING
        self.scheduler.waiting.insert(0, req)

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """Run one batch. Errors inside a batch abort that batch's requests and nothing else."""
        plan = self.scheduler.plan_prefill(self._admit, self._match)
        if plan:
            reqs = [r for r, _ in plan]
            self._guarded(reqs, lambda: self._run_extend(plan))
        else:
            reqs = self._prepare_decode()
            if reqs:
                self._guarded(reqs, lambda: self._run_decode(reqs))
            elif self.scheduler.running:
                # Only part-prefilled requests, all short of memory: free one so the others can go on.
                self._retract(self.scheduler.running[-1])
        self._stats["num_steps"] += 1
        self.refresh_metrics()

    def _guarded(self, reqs: list[Request], run) -> None:
        try:
            run()
        except Exception as exc:  # keep serving: only this batch's requests fail
            self.events.emit("engine.error", message=repr(exc), rids=[r.rid for r in reqs])
            for r in reqs:
                if not r.finished:  # their new K/V may be half written: never cache it
                    self._finish(r, {"type": "abort", "message": f"engine error: {exc!r}"}, cache_kv=False)

    def _prepare_decode(self) -> list[Request]:
        """Give every decoding request one slot, evicting cache and then retracting requests as needed."""
        reqs = self.scheduler.decoding()
        while reqs and not self._ensure_free(len(reqs)):
            prefilling = [r for r in self.scheduler.running if self.scheduler.is_prefilling(r)]
            if prefilling:  # part-prefilled requests give way to those already decoding
                self._retract(prefilling[-1])
                continue
            if len(reqs) == 1:
                self._finish(reqs[0], {"type": "length", "message": "the KV pool cannot hold a longer context"})
                return []
            victim = min(reqs, key=lambda r: (len(r.output_ids), -len(r.input_ids)))
            self._retract(victim)
            reqs = self.scheduler.decoding()
        for r in reqs:
            self._alloc_slots(r, 1)
        return reqs

    def _run_extend(self, plan: list[tuple[Request, int]]) -> None:
        if self.attention.wants_prefix_order:
            plan = sorted(plan, key=lambda entry: entry[0].fill_ids)
        ids, positions, out_loc, kv_indices = [], [], [], []
        qo, kv = [0], [0]
        logits_rows: list[int] = []
        sample_row: dict[int, int] = {}  # plan index -> position in logits_rows
        prompt_rows: dict[int, list[tuple[int, int]]] = {}  # plan index -> [(logits position, token position)]
        offset = 0
        for i, (req, n) in enumerate(plan):
            start, end = req.kv_len, req.kv_len + n
            ids.extend(req.fill_ids[start:end])
            positions.extend(range(start, end))
            out_loc.append(self.req_to_token.slots(req.row, start, end))
            kv_indices.append(self.req_to_token.slots(req.row, 0, end))
            qo.append(qo[-1] + n)
            kv.append(kv[-1] + end)
            if req.wants_prompt_logprobs:
                first = max(req.params.logprob_start_len - 1, start)
                rows = []
                for p in range(first, min(end, len(req.input_ids) - 1)):
                    rows.append((len(logits_rows), p + 1))
                    logits_rows.append(offset + p - start)
                prompt_rows[i] = rows
            if end == req.prefill_len and not req.output_ids:  # a resumed request already has its next token
                sample_row[i] = len(logits_rows)
                logits_rows.append(offset + n - 1)
            offset += n
        batch = self._make_batch(ForwardMode.EXTEND, ids, positions, out_loc, qo, kv, kv_indices, logits_rows)
        logits = self.model(batch, self.attention)  # [rows, vocab]
        self._stats["prefill_tokens"] += offset
        self.events.emit("batch.step", mode="prefill", batch_size=len(plan), tokens=offset)
        to_sample = []
        for i, (req, n) in enumerate(plan):
            req.kv_len += n
            self._cache_computed_prefix(req)
            if i in prompt_rows:
                self._record_prompt_logprobs(req, logits, prompt_rows[i])
            if i in sample_row:
                if req.params.max_new_tokens == 0:
                    self._finish(req, {"type": "length", "matched": None})
                else:
                    to_sample.append((req, sample_row[i]))
        if to_sample:
            rows = torch.tensor([r for _, r in to_sample], device=logits.device)
            self._sample_and_append([r for r, _ in to_sample], logits[rows])

    def _run_decode(self, reqs: list[Request]) -> None:
        ids = [r.output_ids[-1] for r in reqs]
        positions = [r.kv_len for r in reqs]
        out_loc = [self.req_to_token.slots(r.row, r.kv_len, r.kv_len + 1) for r in reqs]
        kv_indices = [self.req_to_token.slots(r.row, 0, r.kv_len + 1) for r in reqs]
        qo = list(range(len(reqs) + 1))
        kv = [0]
        for r in reqs:
            kv.append(kv[-1] + r.kv_len + 1)
        batch = self._make_batch(ForwardMode.DECODE, ids, positions, out_loc, qo, kv, kv_indices, list(range(len(reqs))))
        logits = self.model(batch, self.attention)  # [batch, vocab]
        for r in reqs:
            r.kv_len += 1
        self._stats["decode_tokens"] += len(reqs)
        self.events.emit("batch.step", mode="decode", batch_size=len(reqs), tokens=len(reqs))
        self._sample_and_append(reqs, logits)

    def _make_batch(self, mode, ids, positions, out_loc, qo, kv, kv_indices, logits_rows) -> ForwardBatch:
        dev = self.device
        return ForwardBatch(
            max_q_len=max(b - a for a, b in itertools.pairwise(qo)),
            mode=mode,
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            out_cache_loc=torch.cat(out_loc),
            qo_indptr=torch.tensor(qo, dtype=torch.int64, device=dev),
            kv_indptr=torch.tensor(kv, dtype=torch.int64, device=dev),
            kv_indices=torch.cat(kv_indices),
            logits_rows=torch.tensor(logits_rows, dtype=torch.int64, device=dev),
        )

    # ------------------------------------------------------------------ outputs
    def _sampler_row(self, req: Request) -> SamplerRow:
        p = req.params
        block = ()
        if len(req.output_ids) < p.min_new_tokens:
            block = tuple(sorted((set() if p.ignore_eos else set(self.eos_token_ids)) | set(p.stop_token_ids)))
        constraint = self._constraint(req)
        allowed = constraint.matcher.allowed_tokens() if constraint is not None else None
        return SamplerRow(p, req.generator, req.output_counts, block, allowed)

    def _constraint(self, req: Request) -> Constraint | None:
        """req's grammar state; no lookup at all while no constrained request is in flight."""
        return self._constraints.get(req.rid) if self._constraints else None

    def _sample_and_append(self, reqs: list[Request], logits: torch.Tensor) -> None:
        next_ids = sample(logits, [self._sampler_row(r) for r in reqs]).tolist()
        want_logprobs = [i for i, r in enumerate(reqs) if r.params.return_logprob]
        logprobs = torch.log_softmax(logits[want_logprobs], dim=-1) if want_logprobs else None
        now = time.time()
        for j, (req, token) in enumerate(zip(reqs, next_ids)):
            req.output_ids.append(token)
            if req.timings.first_token is None:
                req.timings.first_token = now
                self.events.emit("request.first_token", rid=req.rid, program_id=req.program_id)
            if req.params.uses_penalties:
                if req.output_counts is None:
                    req.output_counts = torch.zeros(self.model_config.vocab_size, dtype=torch.int32)
                req.output_counts[token] += 1
            if logprobs is not None and req.params.return_logprob:
                row = logprobs[want_logprobs.index(j)]
                req.output_token_logprobs.append((float(row[token]), token))
                if req.params.top_logprobs_num:
                    top = row.topk(req.params.top_logprobs_num)
                    req.output_top_logprobs.append(list(zip(top.values.tolist(), top.indices.tolist())))
            constraint = self._constraint(req)
            if constraint is not None:
                constraint.matcher.accept(token)
            self._check_finished(req, token)
            if constraint is not None and not req.finished:
                self._advance_forced(req, constraint)

    def _advance_forced(self, req: Request, constraint: Constraint) -> None:
        """Jump forward over the text the grammar forces next (when enabled), then check for the end."""
        if self.config.jump_forward and self._jump_forward(req, constraint):
            self._check_finished(req, None)

    def _jump_forward(self, req: Request, constraint: Constraint) -> bool:
        """Append the grammar's forced text to req's output without decoding it; True when it did.

        The last output tokens are retokenized with the forced text (`plan_jump`). If that changes a
        token whose K/V is computed, req goes back to the queue and resumes over its cached prefix
        (the old tokens stay in the radix cache as another branch); otherwise it stays running and
        is prefilling again: the next extend step computes the new tokens' K/V.
        """
        forced = constraint.matcher.forced_string()
        if not forced:
            return False
        limit = min(req.params.max_new_tokens, self.context_length - 1 - len(req.input_ids))
        jump = plan_jump(self.tokenizer, req.output_ids, forced, limit)
        if jump is None or not constraint.matcher.replace_tail(req.output_ids[jump.keep :], list(jump.tokens)):
            return False
        new_ids = req.output_ids[: jump.keep] + list(jump.tokens)
        computed = req.kv_len - len(req.input_ids)  # output tokens whose K/V is in the pool
        resumed = req.row >= 0 and common_prefix_len(req.output_ids, new_ids) < computed
        if resumed:
            self._requeue(req)
        saved = max(len(new_ids) - len(req.output_ids), 0)
        req.output_ids = new_ids
        constraint.jump_forward_tokens += saved
        self._stats["jump_forward_tokens"] += saved
        self.events.emit("request.jump_forward", rid=req.rid, tokens=saved, resumed=resumed, program_id=req.program_id)
        return True

    def _record_prompt_logprobs(self, req: Request, logits: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        if not req.input_token_logprobs and req.params.logprob_start_len == 0:
            req.input_token_logprobs.append((None, req.input_ids[0]))
        if not rows:
            return
        idx = torch.tensor([r for r, _ in rows], device=logits.device)
        lp = torch.log_softmax(logits[idx], dim=-1)  # [rows, vocab]
        tokens = [req.input_ids[p] for _, p in rows]
        chosen = lp[torch.arange(len(rows)), torch.tensor(tokens, device=lp.device)].tolist()
        req.input_token_logprobs.extend(zip(chosen, tokens))

    def _check_finished(self, req: Request, token: int | None) -> None:
        """Finish req if its last token (None: after a jump-forward) or text ends it, else stream."""
        p = req.params
        prev_len = len(req.text)
        req.text = self.tokenizer.decode(req.output_ids, skip_special_tokens=p.skip_special_tokens)
        reason = None
        if len(req.output_ids) >= p.min_new_tokens:
            if token in p.stop_token_ids or (token in self.eos_token_ids and not p.ignore_eos):
                reason = {"type": "stop", "matched": token}
            elif p.stop:
                hit = find_stop(req.text, p.stop, prev_len)
                if hit is not None:
                    req.text = hit.text
                    reason = {"type": "stop", "matched": hit.matched}
        if reason is None:
            reason = self._grammar_end(req, token)
        if reason is None and len(req.output_ids) >= p.max_new_tokens:
            reason = {"type": "length", "matched": None}
        if reason is None and req.kv_len + 1 >= self.context_length:
            reason = {"type": "length", "matched": None, "message": "reached the model's context length"}
        if reason is None:
            self._stream(req, streamable_length(req.text, p.stop))
        else:
            self._finish(req, reason)

    def _grammar_end(self, req: Request, token: int | None) -> dict | None:
        """A stop reason once req's grammar took a stop token or allows nothing but one; else None."""
        constraint = self._constraint(req)
        if constraint is None:
            return None
        if constraint.matcher.is_terminated():
            return {"type": "stop", "matched": token}
        if constraint.matcher.must_stop():
            return {"type": "stop", "matched": None}
        return None

    def _stream(self, req: Request, upto: int) -> None:
        if req.handle is not None and upto > req.emitted_len:
            req.handle.push_delta(req.text[req.emitted_len : upto])
        req.emitted_len = max(req.emitted_len, upto)

    def _finish(self, req: Request, reason: dict, cache_kv: bool = True) -> None:
        if req.finished:
            return
        self._release_kv(req, insert=cache_kv)
        self.scheduler.remove(req)
        req.state = ReqState.FINISHED
        req.finish_reason = reason
        req.timings.finished = time.time()
        self._stream(req, len(req.text))
        self._by_rid.pop(req.rid, None)
        constraint = self._constraints.pop(req.rid, None)
        self._stats["num_finished"] += 1
        self.events.emit(
            "request.finished", rid=req.rid, program_id=req.program_id, finish_reason=reason.get("type"),
            prompt_tokens=len(req.input_ids), completion_tokens=len(req.output_ids), cached_tokens=req.cached_tokens,
        )
        if req.handle is not None:
            result = req.result()
            if constraint is not None:
                result["meta_info"]["jump_forward_tokens"] = constraint.jump_forward_tokens
            req.handle.finish(result)

    # ------------------------------------------------------------------ inspection
    def refresh_metrics(self) -> None:
        """Publish a new immutable metrics record (readers on other threads just read the attribute)."""
        self.metrics = self._build_metrics()

    def _build_metrics(self) -> EngineMetrics:
        return EngineMetrics(
            time=time.time(),
            num_waiting=len(self.scheduler.waiting),
            num_running=len(self.scheduler.running),
            pool_slots=self.pool.num_slots,
            pool_free=self.pool.free_count,
            cache_evictable=self.cache.evictable_size(),
            cache_protected=self.cache.protected_size(),
            cache=self.cache.counters(),
            **self._stats,
        )

    def check_integrity(self) -> None:
        """free + cached + owned by running requests == total slots, and the cache's own invariants."""
        owned = sum(r.alloc_len - r.prefix_len for r in self.scheduler.running)
        self.cache.check_integrity(free=self.pool.free_count, running=owned, total=self.pool.num_slots)
        if self.pool.allocator.allocated_count() != self.cache.total_size() + owned:
            raise AssertionError("allocated slots differ from cached + running")

    def flush_cache(self) -> bool:
        """Drop every cached prefix; refused (False) while requests are running."""
        if self.scheduler.has_work():
            return False
        self.cache.flush()
        self.refresh_metrics()
        return True
