"""The engine: one step = plan, run, process, publish metrics. Stepped by one thread (see runtime.py).

A step is one model forward: a prefill batch (new or chunked requests) when the scheduler admits
any, else a decode batch of every running request. The engine wires its owners together and holds
the request lifecycle (add, retract, finish):

    Scheduler        which requests run next (owns the waiting and running queues)
    CacheManager     KV pool, request-to-token table, radix cache: match, admit, release
    ModelRunner      model and attention backend: build a ForwardBatch, run it
    OutputProcessor  sample, logprobs, stops, streaming, jump-forward

Memory comes from one KV pool shared by running requests and the radix cache; when it runs short
the cache evicts, then requests are retracted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from sglbench.runtime.cache_manager import CacheManager, default_pool_size
from sglbench.runtime.cpu_memory import retain_freed_memory
from sglbench.runtime.events import EventLog
from sglbench.runtime.grammar import GrammarCompiler, GrammarMatcher
from sglbench.runtime.kv_pool import KVPoolConfig
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.model_runner import ModelRunner
from sglbench.runtime.models.loader import resolve_dtype
from sglbench.runtime.output_processor import OutputProcessor
from sglbench.runtime.records import CacheEvent, EngineMetrics
from sglbench.runtime.request import ReqState, Request
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.scheduler import PrefixMatch, Scheduler, SchedulerConfig
from sglbench.runtime.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine: model, device, memory, scheduling and decoding options."""

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


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        mc = self.model_config = ModelConfig.from_path(config.model_path)
        self.tokenizer = Tokenizer(config.model_path)
        self.device = config.device
        self.dtype = resolve_dtype(config.dtype, config.device, mc)
        if self.device == "cpu" and config.retain_freed_memory:
            retain_freed_memory()
        self.context_length = min(config.context_length or mc.max_position_embeddings, mc.max_position_embeddings)
        self.events = EventLog()
        num_slots = config.max_total_tokens or default_pool_size(mc, self.dtype, self.device, config.mem_fraction_static)
        self.kv = CacheManager(
            KVPoolConfig(num_slots, mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype, self.device),
            config.max_running_requests, self.context_length, config.disable_radix_cache, self._on_cache_event,
        )
        self.pool, self.cache, self.req_to_token = self.kv.pool, self.kv.cache, self.kv.req_to_token
        self.runner = ModelRunner(config.model_path, mc, self.device, self.dtype, self.pool, config.attention_backend)
        self.model, self.attention = self.runner.model, self.runner.attention
        self.scheduler = Scheduler(SchedulerConfig(
            policy=config.schedule_policy, max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens, chunked_prefill_size=config.chunked_prefill_size,
            seed=config.random_seed,
        ))
        self.eos_token_ids = frozenset(mc.eos_token_ids) | frozenset(self.tokenizer.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer.hf, mc.vocab_size, self.eos_token_ids)
        self.outputs = OutputProcessor(
            self.tokenizer, self.eos_token_ids, mc.vocab_size, self.context_length, self.grammars, self.events,
            jump_forward=config.jump_forward, device=self.device, seed=config.random_seed,
            finish=self._finish, requeue=self._requeue,
        )
        self._by_rid: dict[str, Request] = {}
        self._stats = {"prefill_tokens": 0, "decode_tokens": 0, "num_steps": 0, "num_finished": 0,
                       "num_retractions": 0}
        self.metrics = self._build_metrics()

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

    def validate_params(self, params: SamplingParams) -> None:
        """Raise for sampling parameters this engine cannot honour, before submission, so a step never
        raises for them: unimplemented ones (NotImplementedError), token ids outside the vocabulary, more
        top logprobs than tokens (ValueError)."""
        params.check_implemented()
        vocab = self.model_config.vocab_size
        checked = {"stop_token_ids": params.stop_token_ids, "token_ids_logprob": params.token_ids_logprob,
                   "logit_bias": tuple(params.logit_bias or ())}
        for name, ids in checked.items():
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
        if params.top_logprobs_num > vocab:
            raise ValueError(f"top_logprobs_num must be at most the vocabulary size {vocab}, "
                             f"got {params.top_logprobs_num}")

    def add_request(self, req: Request, matcher: GrammarMatcher | None = None) -> None:
        """Queue req. A constrained request brings its grammar matcher (compiled on the caller's
        thread, see `Runtime.submit`) or gets one here; text its grammar forces at once is appended now."""
        self.outputs.register(req, matcher)
        self._by_rid[req.rid] = req
        self.scheduler.add(req)
        self.events.emit("request.arrived", rid=req.rid, prompt_tokens=len(req.input_ids), program_id=req.program_id)
        if req.params.grammar is not None:
            self.outputs.advance_forced(req)

    def abort(self, rid: str, message: str = "aborted by the caller") -> None:
        req = self._by_rid.get(rid)
        if req is None or req.finished:
            return
        self._finish(req, {"type": "abort", "message": message})

    def abort_all(self, message: str) -> None:
        """Finish every request in flight with an abort (the runtime is shutting down)."""
        for req in self.scheduler.requests():
            self.abort(req.rid, message)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ admission and retraction
    def _match(self, req: Request) -> PrefixMatch:
        result = self.kv.match(req)
        return PrefixMatch(result.matched_len, result.last_node)

    def _admit(self, req: Request, max_tokens: int) -> int:
        """Give req KV for its next chunk (the scheduler's admit callback); 0 when there is no room now."""
        first_chunk = req.row < 0
        reserve = len(self.scheduler.decoding())  # slots kept for the next decode step of those decoding
        n = self.kv.admit(req, max_tokens, reserve, alone=self.scheduler.runs_alone(req))
        if n is None:  # nothing else holds memory, so it can never fit
            self._finish(req, {"type": "length", "message": "the KV pool cannot hold this request's context"})
            return 0
        if n and first_chunk:
            req.cached_tokens = min(req.prefix_len, len(req.input_ids))
            req.state = ReqState.RUNNING
            if req.timings.scheduled is None:
                req.timings.scheduled = time.time()
            self.events.emit("request.scheduled", rid=req.rid, cached_tokens=req.prefix_len, program_id=req.program_id)
        return n

    def _retract(self, req: Request) -> None:
        """Send a running request back to the queue; its K/V stays in the cache to resume from."""
        self._requeue(req)
        req.num_retractions += 1
        self._stats["num_retractions"] += 1
        self.events.emit("request.retracted", rid=req.rid, output_tokens=len(req.output_ids))

    def _requeue(self, req: Request) -> None:
        """Put a running request first in the queue, its computed tokens in the radix cache."""
        self.kv.release(req, insert=True)
        self.scheduler.requeue(req)
        req.state = ReqState.WAITING

    def _prepare_decode(self) -> list[Request]:
        """Give every decoding request one slot, evicting cache and then retracting requests as needed."""
        reqs = self.scheduler.decoding()
        while reqs and not self.kv.ensure_free(len(reqs)):
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
            self.kv.alloc_slots(r, 1)
        return reqs

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """Run one batch. Errors inside a batch abort that batch's requests and nothing else."""
        plan = self.scheduler.plan_prefill(self._admit, self._match)
        if plan:
            self._guarded([r for r, _ in plan], lambda: self._run_extend(plan))
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

    def _run_extend(self, plan: list[tuple[Request, int]]) -> None:
        batch, layout = self.runner.prepare_extend(plan, self.req_to_token)
        logits = self.runner.run(batch)  # [rows, vocab]
        self._stats["prefill_tokens"] += layout.num_tokens
        self.events.emit("batch.step", mode="prefill", batch_size=len(plan), tokens=layout.num_tokens)
        to_sample = []
        for i, (req, n) in enumerate(layout.plan):
            req.kv_len += n
            self.kv.cache_computed_prefix(req)
            if i in layout.prompt_rows:
                self.outputs.record_prompt_logprobs(req, logits, layout.prompt_rows[i])
            if i in layout.sample_rows:
                if req.params.max_new_tokens == 0:
                    self._finish(req, {"type": "length", "matched": None})
                else:
                    to_sample.append((req, layout.sample_rows[i]))
        if to_sample:
            rows = torch.tensor([r for _, r in to_sample], device=logits.device)
            self.outputs.sample_and_append([r for r, _ in to_sample], logits[rows])

    def _run_decode(self, reqs: list[Request]) -> None:
        logits = self.runner.run(self.runner.prepare_decode(reqs, self.req_to_token))  # [batch, vocab]
        for r in reqs:
            r.kv_len += 1
        self._stats["decode_tokens"] += len(reqs)
        self.events.emit("batch.step", mode="decode", batch_size=len(reqs), tokens=len(reqs))
        self.outputs.sample_and_append(reqs, logits)

    def _finish(self, req: Request, reason: dict, cache_kv: bool = True) -> None:
        if req.finished:
            return
        self.kv.release(req, insert=cache_kv)
        self.scheduler.remove(req)
        req.state = ReqState.FINISHED
        req.finish_reason = reason
        req.timings.finished = time.time()
        self.outputs.stream(req, len(req.text))
        self._by_rid.pop(req.rid, None)
        jump_forward_tokens = self.outputs.release(req)
        self._stats["num_finished"] += 1
        self.events.emit(
            "request.finished", rid=req.rid, program_id=req.program_id, finish_reason=reason.get("type"),
            prompt_tokens=len(req.input_ids), completion_tokens=len(req.output_ids), cached_tokens=req.cached_tokens,
        )
        if req.handle is not None:
            result = req.result()
            if jump_forward_tokens is not None:
                result["meta_info"]["jump_forward_tokens"] = jump_forward_tokens
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
            jump_forward_tokens=self.outputs.jump_forward_tokens,
            **self._stats,
        )

    def check_integrity(self) -> None:
        """free + cached + owned by running requests == total slots, and the cache's own invariants."""
        self.kv.check_integrity(self.scheduler.running)

    def flush_cache(self) -> bool:
        """Drop every cached prefix; refused (False) while requests are running."""
        if self.scheduler.has_work():
            return False
        self.cache.flush()
        self.refresh_metrics()
        return True
