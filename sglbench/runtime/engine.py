"""The engine: one step = plan, run, process, publish metrics. Stepped by one thread (see runtime.py).

A step is one model forward: a prefill batch (new or chunked requests) when the scheduler admits
any, with every decoding request riding along for its next token (mixed batches, SGLang's
`enable_mixed_chunk`), else a decode batch of every running request. The engine wires its owners
together and holds the request lifecycle (add, retract, finish):

    Scheduler        which requests run next (owns the waiting and running queues)
    CacheManager     KV pool, request-to-token table, radix cache: match, admit, release
    ModelRunner      model and attention backend: build a ForwardBatch, run it
    OutputProcessor  sample, logprobs, stops, streaming, jump-forward

Memory comes from one KV pool shared by running requests and the radix cache; when it runs short
the cache evicts, then requests are retracted.

Faults: a request's parameters are checked before it is queued (`validate_prompt`, `validate_params`);
whatever still raises inside a step fails the request that causes it and nothing else (`_isolated`,
`_sample`). A finished request's result is delivered by `publish`, after the metrics record is rebuilt,
so a caller reading `metrics()` after its result sees its request counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import torch

from sglbench.runtime.cache_manager import CacheManager, default_pool_size
from sglbench.runtime.cpu_memory import retain_freed_memory
from sglbench.runtime.events import EventLog
from sglbench.runtime.grammar import GrammarCompiler, GrammarMatcher
from sglbench.runtime.graph_runner import CAPTURABLE_BACKENDS, capture_sizes
from sglbench.runtime.kv_pool import KVPoolConfig
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.model_runner import ModelRunner
from sglbench.runtime.models.loader import choose_dtype
from sglbench.runtime.output_processor import OutputProcessor
from sglbench.runtime.records import CacheEvent, EngineMetrics
from sglbench.runtime.request import ReqState, Request, RequestHandle
from sglbench.runtime.sample_rewind import SampleMark
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.scheduler import PrefixMatch, Scheduler, SchedulerConfig
from sglbench.runtime.tokenizer import Tokenizer

R = TypeVar("R")
logger = logging.getLogger(__name__)


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
    schedule_conservativeness: float = 1.0  # SGLang's: scales the memory kept for running requests' outputs
    random_seed: int = 0
    jump_forward: bool = True  # append a grammar's forced text without decoding it token by token
    # Decoding requests ride along with a prefill step (one token each) instead of waiting for a decode step
    # of their own: on the CPU a forward's fixed cost is most of a small batch's, and new requests, resumed
    # jump-forwards and multi-turn programs arrive while others decode.
    mixed_chunk: bool = True
    retain_freed_memory: bool = True  # CPU: keep freed activations in the heap (runtime/cpu_memory.py)
    huge_pages: bool = True  # CPU: dense weights and the KV pool on transparent huge pages (runtime/cpu_memory.py)
    # CUDA graphs for decode steps (runtime/graph_runner.py): on CUDA with the Triton backend unless disabled;
    # captured for cuda_graph_bs (None: SGLang's ladder) up to cuda_graph_max_bs (None: max_running_requests).
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int | None = None
    cuda_graph_bs: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1), got {self.mem_fraction_static}")
        if self.cuda_graph_max_bs is not None and self.cuda_graph_max_bs < 1:
            raise ValueError(f"cuda_graph_max_bs must be >= 1, got {self.cuda_graph_max_bs}")

    def graph_sizes(self, attention_backend: str) -> tuple[tuple[int, ...], str]:
        """(batch sizes to capture decode graphs for, why); no sizes when graphs are off."""
        if self.disable_cuda_graph:
            return (), "off: disable_cuda_graph=True"
        if not str(self.device).startswith("cuda"):
            return (), f"off: CUDA graphs need a CUDA device, this engine runs on {self.device}"
        if attention_backend not in CAPTURABLE_BACKENDS:
            return (), f"off: the {attention_backend} attention backend plans decode on the host"
        max_bs = min(self.cuda_graph_max_bs or self.max_running_requests, self.max_running_requests)
        sizes = capture_sizes(max_bs, self.cuda_graph_bs)
        return sizes, f"on: decode batches of 1..{sizes[-1]} replay {len(sizes)} captured graphs"


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        mc = self.model_config = ModelConfig.from_path(config.model_path)
        self.tokenizer = Tokenizer(config.model_path)
        self.device = config.device
        self.dtype_choice = choose_dtype(config.dtype, config.device, mc)
        self.dtype = self.dtype_choice.dtype
        if self.device == "cpu" and config.retain_freed_memory:
            retain_freed_memory()
        self.context_length = mc.context_length(config.context_length)
        if self.context_length > mc.max_position_embeddings:  # allowed past the model's: the rotary table grows
            mc = self.model_config = replace(mc, max_position_embeddings=self.context_length)
        self.events = EventLog()
        num_slots = config.max_total_tokens or default_pool_size(mc, self.dtype, self.device, config.mem_fraction_static)
        self.kv = CacheManager(
            KVPoolConfig(num_slots, mc.num_layers, mc.num_kv_heads, mc.head_dim, self.dtype, self.device,
                         huge_pages=config.huge_pages),
            config.max_running_requests, self.context_length, config.disable_radix_cache, self._on_cache_event,
        )
        self.pool, self.cache, self.req_to_token = self.kv.pool, self.kv.cache, self.kv.req_to_token
        self.runner = ModelRunner(config.model_path, mc, self.device, self.dtype, self.pool, config.attention_backend,
                                  config.huge_pages)
        self.model, self.attention = self.runner.model, self.runner.attention
        sizes, self.cuda_graph_reason = config.graph_sizes(self.attention.name)
        if sizes:
            self.cuda_graph_reason = self._capture_graphs(sizes, self.cuda_graph_reason)
        self.scheduler = Scheduler(SchedulerConfig(
            policy=config.schedule_policy, max_running_requests=config.max_running_requests,
            max_prefill_tokens=config.max_prefill_tokens, chunked_prefill_size=config.chunked_prefill_size,
            seed=config.random_seed, schedule_conservativeness=config.schedule_conservativeness,
        ))
        self.eos_token_ids = frozenset(mc.eos_token_ids) | frozenset(self.tokenizer.eos_token_ids)
        self.grammars = GrammarCompiler(self.tokenizer.hf, mc.vocab_size, self.eos_token_ids)
        self.outputs = OutputProcessor(
            self.tokenizer, self.eos_token_ids, mc.vocab_size, self.context_length, self.grammars, self.events,
            jump_forward=config.jump_forward, device=self.device, seed=config.random_seed,
            finish=self._finish, rewind=self._rewind,
        )
        self._by_rid: dict[str, Request] = {}
        self._matchers: dict[str, GrammarMatcher] = {}  # rid -> grammar state of a constrained request
        self._deliveries: list[tuple[RequestHandle, dict]] = []  # results `publish` hands to their callers
        self._stats = {"prefill_tokens": 0, "decode_tokens": 0, "num_steps": 0, "num_finished": 0,
                       "num_retractions": 0}
        self.metrics = self._build_metrics()

    def _capture_graphs(self, sizes: tuple[int, ...], reason: str) -> str:
        """Capture decode graphs for sizes and say so; when capture fails (a driver, memory, a kernel that
        cannot be captured), decode eagerly and say why: graphs are an optimisation, never a reason not to serve."""
        start = time.perf_counter()
        try:
            self.runner.use_graphs(self.req_to_token, sizes)
        except Exception as exc:
            self.runner.graphs = None
            logger.warning("CUDA-graph capture failed, decode steps run eagerly: %r", exc)
            return f"off: capture failed ({exc!r}); decode steps run eagerly"
        return f"{reason} (captured in {time.perf_counter() - start:.1f} s)"

    def _on_cache_event(self, event: CacheEvent) -> None:
        self.events.emit(f"cache.{event.kind}", node_id=event.node_id, num_tokens=event.num_tokens)

    # ------------------------------------------------------------------ requests
    def validate_prompt(self, input_ids: list[int], max_new_tokens: int) -> None:
        """Raise ValueError for a prompt this engine can never serve (called before submission). A prompt that
        fits leaves room for one new token at least; generation stops at the context ("length")."""
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
        top logprobs than tokens (ValueError). `SamplingParams` itself checks types and ranges (seeds are
        64-bit ints, stop strings are strings...); a top_k beyond the vocabulary means no restriction."""
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
        thread, see `Runtime.submit`) or gets one here; text its grammar forces at once is appended now.
        Anything that raises here fails req alone."""
        if req.rid in self._by_rid:  # `Runtime.submit` refuses these; never let one take another's place
            self._reject(req, {"type": "abort", "message": f"request id {req.rid!r} is already in use"})
            return
        self._by_rid[req.rid] = req
        try:
            if req.params.grammar is not None:
                matcher = matcher or self.grammars.matcher(req.params.grammar)
                self._matchers[req.rid] = matcher
            self.outputs.register(req, matcher)
            self.scheduler.add(req)
            self.events.emit("request.arrived", rid=req.rid, prompt_tokens=len(req.input_ids),
                             program_id=req.program_id)
            if matcher is not None:
                self.outputs.advance_forced(req)
        except Exception as exc:
            self._fail(req, exc)

    def abort(self, rid: str, message: str = "aborted by the caller") -> None:
        req = self._by_rid.get(rid)
        if req is None or req.finished:
            return
        self._finish(req, {"type": "abort", "message": message})

    def abort_all(self, message: str) -> None:
        """Finish every request in flight with an abort (the runtime is shutting down)."""
        for req in list(self._by_rid.values()):
            self.abort(req.rid, message)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ------------------------------------------------------------------ admission and retraction
    def _match(self, req: Request) -> PrefixMatch:
        """A waiting request's cached prefix, for the scheduler's ordering: its length from a walk that changes
        nothing, unless dfs-weight needs the node (which match_prefix splits out)."""
        if self.scheduler.config.policy == "dfs-weight":
            result = self.kv.match(req)
            return PrefixMatch(result.matched_len, result.last_node)
        return PrefixMatch(self.kv.peek(req), None)

    def _admit(self, req: Request, max_tokens: int) -> int:
        """Give req KV for its next chunk (the scheduler's admit callback); 0 when there is no room now. A request
        starts only when the pool (its free and evictable slots) holds its prompt and what the running requests
        and it are expected to decode (`Scheduler.tokens_to_keep`), so those need not be retracted later."""
        first_chunk = req.row < 0
        alone = self.scheduler.runs_alone(req)
        if first_chunk and not alone:
            need, room = self.scheduler.tokens_to_keep(req), self.kv.available()
            if need > room and need - self.kv.peek(req) > room:  # the cache walk only when the pool is short
                return 0
        reserve = self.scheduler.decoding_count()  # slots kept for the next decode step of those decoding
        n = self.kv.admit(req, max_tokens, reserve, alone=alone)
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
        self.scheduler.retracted()
        req.num_retractions += 1
        self._stats["num_retractions"] += 1
        self.events.emit("request.retracted", rid=req.rid, output_tokens=len(req.output_ids))

    def _requeue(self, req: Request) -> None:
        """Put a running request first in the queue, its computed tokens in the radix cache."""
        self.kv.release(req, insert=True)
        self.scheduler.requeue(req)
        req.state = ReqState.WAITING

    def _rewind(self, req: Request, keep: int) -> None:
        """Drop a running request's K/V past its first `keep` tokens (a jump-forward rewrote the output after
        them): it stays running and its next extend step computes the rest. Requeued instead when the cache's
        locked part reaches past `keep`. Before, every such jump requeued: its tokens went to the cache unlocked,
        and with the pool full the next step's eviction took them, so the request prefilled its prompt again."""
        if not self.kv.rewind(req, keep):
            self._requeue(req)

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
        if reqs:
            self.kv.alloc_next_slots(reqs)
        return reqs

    # ------------------------------------------------------------------ stepping
    def step(self) -> None:
        """Run one batch, then publish. A fault inside it fails the request that causes it and nothing else."""
        plan = self.scheduler.plan_prefill(self._admit, self._match)
        if plan:
            self._run_extend(plan, self._riders() if self.config.mixed_chunk else [])
        else:
            reqs = self._prepare_decode()
            if reqs:
                self._run_decode(reqs)
            elif self.scheduler.running:
                # Only part-prefilled requests, all short of memory: free one so the others can go on.
                self._retract(self.scheduler.running[-1])
        self._stats["num_steps"] += 1
        self.publish()

    def _fail(self, req: Request, exc: BaseException) -> None:
        """End req with an abort naming exc; its new K/V may be half written, so none of it is cached."""
        self.events.emit("engine.error", message=repr(exc), rids=[req.rid])
        self._finish(req, {"type": "abort", "message": f"engine error: {exc!r}"}, cache_kv=False)

    def _isolated(self, reqs: list[Request], run: Callable[[list[int]], R]) -> list[tuple[list[int], R]]:
        """run(indices into reqs) for the whole batch; when it raises, for each request alone, failing the
        ones that still raise. Returns (indices, result) for each run that succeeded. For a model forward,
        which changes no request and rewrites only the batch's own new KV slots."""
        everyone = list(range(len(reqs)))
        try:
            return [(everyone, run(everyone))]
        except Exception as exc:
            if len(reqs) == 1:
                self._fail(reqs[0], exc)
                return []
            self.events.emit("engine.isolate", message=repr(exc), rids=[r.rid for r in reqs])
        done = []
        for i in everyone:
            try:
                done.append(([i], run([i])))
            except Exception as exc:
                self._fail(reqs[i], exc)
        return done

    def _riders(self) -> list[Request]:
        """The decoding requests, each given a slot for its next token, to ride along with this step's
        prefill; none when the pool cannot give them one now (a decode step of their own handles that)."""
        reqs = self.scheduler.decoding()
        if not reqs or not self.kv.ensure_free(len(reqs)):
            return []
        self.kv.alloc_next_slots(reqs)
        return reqs

    def _run_extend(self, plan: list[tuple[Request, int]], riders: list[Request]) -> None:
        """One forward over plan's prefill chunks, riders decoding one token each alongside."""
        def forward(indices: list[int]):
            batch, layout = self.runner.prepare_mixed([plan[i] for i in indices if i < len(plan)],
                                                      [riders[i - len(plan)] for i in indices if i >= len(plan)],
                                                      self.req_to_token)
            return layout, self.runner.run(batch)  # logits [rows, vocab]

        parts = self._isolated([r for r, _ in plan] + riders, forward)
        decoded = sum(layout.riders for _, (layout, _) in parts)
        prefilled = sum(layout.num_tokens for _, (layout, _) in parts) - decoded
        self._stats["prefill_tokens"] += prefilled
        self._stats["decode_tokens"] += decoded
        if decoded:
            self.scheduler.decode_ran()
        self.events.emit("batch.step", mode="mixed" if riders else "prefill", batch_size=len(plan) + len(riders),
                         tokens=prefilled + decoded, decode_size=decoded)
        to_sample: list[Request] = []
        sample_logits = []  # [k, vocab] per part
        for _, (layout, logits) in parts:
            rows = []
            for i, (req, n) in enumerate(layout.plan):
                rider = i >= layout.num_extend
                try:
                    req.kv_len += n
                    if not rider:
                        self.kv.cache_computed_prefix(req)
                        if i in layout.prompt_rows:
                            self.outputs.record_prompt_logprobs(req, logits, layout.prompt_rows[i])
                except Exception as exc:
                    self._fail(req, exc)
                    continue
                if i in layout.sample_rows:
                    if not rider and req.params.max_new_tokens == 0:
                        self._finish(req, {"type": "length", "matched": None})
                    else:
                        to_sample.append(req)
                        rows.append(layout.sample_rows[i])
            if rows:
                sample_logits.append(logits[torch.tensor(rows, device=logits.device)])
        if to_sample:
            self._sample(to_sample, sample_logits[0] if len(sample_logits) == 1 else torch.cat(sample_logits))

    def _run_decode(self, reqs: list[Request]) -> None:
        parts = self._isolated(reqs, lambda indices: self.runner.run_decode(
            [reqs[i] for i in indices], self.req_to_token))  # [batch, vocab]
        ran = [reqs[i] for indices, _ in parts for i in indices]
        for r in ran:
            r.kv_len += 1
        self._stats["decode_tokens"] += len(ran)
        self.scheduler.decode_ran()
        self.events.emit("batch.step", mode="decode", batch_size=len(ran), tokens=len(ran))
        if ran:
            self._sample(ran, parts[0][1] if len(parts) == 1 else torch.cat([logits for _, logits in parts]))

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Sample, append and check each request's next token from its logits row ([reqs, vocab]). When the
        batched call raises, the requests it did not reach are put back as they were and rerun one at a time,
        so only the request at fault fails (see `SampleMark`)."""
        reqs, logits = self._with_grammar_masks(reqs, logits)
        if len(reqs) <= 1:
            try:
                if reqs:
                    self.outputs.sample_and_append(reqs, logits)
            except Exception as exc:
                self._fail(reqs[0], exc)
            return
        marks = SampleMark.take(reqs, self._matchers)
        try:
            self.outputs.sample_and_append(reqs, logits)
            return
        except Exception as exc:
            error = exc
        progressed = marks.progressed(reqs)
        if progressed and not reqs[progressed[-1]].finished:
            # The call handles requests in order, each completely: it raised while handling the last one it reached.
            self._fail(reqs[progressed[-1]], error)
        self.events.emit("engine.isolate", message=repr(error), rids=[r.rid for r in reqs])
        for i in marks.rewind_generators(reqs, progressed):
            try:
                marks.rewind_grammar(i)
                self.outputs.sample_and_append([reqs[i]], logits[i : i + 1])
            except Exception as exc:
                self._fail(reqs[i], exc)

    def _with_grammar_masks(self, reqs: list[Request], logits: torch.Tensor) -> tuple[list[Request], torch.Tensor]:
        """Compute each constrained request's next-token mask now (the sampler reads it, cached), failing the
        requests whose grammar raises; the others and their logits rows. Rows whose mask waits for their best
        tokens to be tried (`OutputProcessor.probes_first`) are left to the sampler."""
        if not self._matchers:
            return reqs, logits
        keep = []
        for i, req in enumerate(reqs):
            matcher = self._matchers.get(req.rid)
            try:
                if matcher is not None and not self.outputs.probes_first(req):
                    matcher.token_bitmask()
            except Exception as exc:
                self._fail(req, exc)
                continue
            keep.append(i)
        if len(keep) == len(reqs):
            return reqs, logits
        return [reqs[i] for i in keep], logits[torch.tensor(keep, dtype=torch.int64, device=logits.device)]

    def _finish(self, req: Request, reason: dict, cache_kv: bool = True) -> None:
        """End req: free (or cache) its KV, forget it, and queue its result for `publish`."""
        if req.finished:
            return
        self.kv.release(req, insert=cache_kv)
        self.scheduler.remove(req)
        req.state = ReqState.FINISHED
        req.finish_reason = reason
        req.timings.finished = time.time()
        self.outputs.settle_text(req)
        self.outputs.stream(req, len(req.text))
        self._by_rid.pop(req.rid, None)
        self._matchers.pop(req.rid, None)
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
            self._deliveries.append((req.handle, result))

    def _reject(self, req: Request, reason: dict) -> None:
        """End a request the engine never took in (it holds nothing here)."""
        req.state, req.finish_reason, req.timings.finished = ReqState.FINISHED, reason, time.time()
        if req.handle is not None:
            self._deliveries.append((req.handle, req.result()))

    def publish(self) -> None:
        """Publish a new metrics record, then deliver the results of the requests finished since the last
        call: whoever reads `metrics()` after their result finds them counted."""
        self.refresh_metrics()
        deliveries, self._deliveries = self._deliveries, []
        for handle, result in deliveries:
            handle.finish(result)

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
