"""`TransformersBackend`: sglbench programs on Hugging Face `transformers`, batched as a notebook user
batches by hand.

Without an engine, a notebook user runs a data set step by step: at each step of the program one
left-padded `generate` call per batch of prompts, and a select as one forward pass over the
prompt + choice rows, picking by the choices' token logprobs. This backend does the same for the
programs run_batch runs at once: calls that arrive together (programs reach the same step together)
are gathered into batches of up to `batch_size` rows with equal sampling settings. Nothing is reused
between calls: every row is prefilled in full. Regex and JSON-schema gens use xgrammar's logits
processor for transformers. Greedy or sampled; no n > 1, logprobs, stop_regex or penalties.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from sglbench.bench.paper.measure import Usage
from sglbench.bench.paper.optimal import RequestRecord
from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.backend.runtime_backend import choice_start
from sglbench.lang.backend.scoring import decide
from sglbench.lang.chat_template import ChatTemplate, chat_template_from_tokenizer
from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from sglbench.lang.ir import SglSamplingParams
from sglbench.runtime.grammar import tokenizer_info
from sglbench.runtime.regex_dialect import xgrammar_regex
from sglbench.runtime.sampling_params import GrammarSpec, SamplingParams

GATHER_S = 0.01  # a batch closes once no call arrived for this long
_STOP = object()


@dataclass(frozen=True, eq=False)
class _Call:
    """One gen (one row) or one select (a row per choice) waiting for the batcher."""

    key: tuple  # calls with equal keys share a batch
    rows: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]  # select: first scored position of each row
    params: SglSamplingParams | None
    grammar: GrammarSpec | None
    future: Future


class TransformersBackend(BaseBackend):
    """Runs programs on a transformers causal LM; `close()` stops its batching thread."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.chat_template = chat_template_from_tokenizer(tokenizer)
        eos = model.generation_config.eos_token_id
        self._eos = {*([eos] if isinstance(eos, int) else eos or ()), tokenizer.eos_token_id} - {None}
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos)
        self._bos = tokenizer.encode("")  # what encode() prepends: [bos] or []
        self._tok_lock = threading.Lock()  # the Rust tokenizer is not for concurrent use
        self._stats_lock = threading.Lock()
        self._usage = Usage()
        self._records: list[RequestRecord] = []
        self._compiler = None  # xgrammar compiler, built on the first constrained gen
        self._grammars: dict[GrammarSpec, Any] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="sglbench-transformers-batcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()

    def usage(self) -> Usage:
        with self._stats_lock:
            return self._usage

    def records(self) -> list[RequestRecord]:
        with self._stats_lock:
            return list(self._records)

    # ------------------------------------------------------------------ BaseBackend
    def generate(self, ctx: CallContext, params: SglSamplingParams) -> tuple[str, dict]:
        unsupported = [name for name, bad in (
            ("n > 1", (params.n or 1) != 1), ("return_logprob", bool(params.return_logprob)),
            ("stop_regex", params.stop_regex is not None),
            ("penalties", bool(params.frequency_penalty) or bool(params.presence_penalty))) if bad]
        if unsupported:
            raise ValueError(f"the transformers baseline does not support {', '.join(unsupported)}")
        grammar = _grammar(params)
        key = ("gen", params.max_new_tokens, params.min_new_tokens, params.stop, params.ignore_eos,
               params.temperature, params.top_p, params.top_k, params.min_p, grammar)
        return self._submit(_Call(key, (self._encode(ctx.text),), (), params, grammar, Future()))

    def generate_stream(self, ctx: CallContext, params: SglSamplingParams) -> Iterator[tuple[str, dict | None]]:
        text, meta = self.generate(ctx, params)  # a batched generate call returns all text at once
        yield text, None
        yield "", meta

    def select(self, ctx: CallContext, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if temperature > 1e-5:
            raise ValueError(f"select scores choices greedily: temperature must be 0, got {temperature}")
        prompt = self._encode(ctx.text)
        full = [self._encode(ctx.text + c) for c in choices]
        starts = [choice_start(list(prompt), list(ids)) for ids in full]
        rows, row_starts = list(full), list(starts)
        if choices_method.requires_unconditional_logprobs:
            rows += [tuple(self._bos) + ids[start:] for ids, start in zip(full, starts)]
            row_starts += [len(self._bos)] * len(full)
        scored = self._submit(_Call(("score",), tuple(rows), tuple(row_starts), None, None, Future()))
        in_context, alone = scored[: len(choices)], scored[len(choices):] or None
        counts = [{"prompt_tokens": len(ids), "cached_tokens": 0} for ids in full]  # nothing is cached
        return decide(choices, choices_method, in_context, alone, counts, requests=[])

    def get_chat_template(self) -> ChatTemplate:
        return self.chat_template

    def flush_cache(self) -> bool:
        return True  # nothing is cached between calls

    def get_model_name(self) -> str:
        return getattr(self.model, "name_or_path", "")

    def get_server_info(self) -> dict[str, Any]:
        return {"backend": "transformers", "model_path": self.get_model_name(),
                "device": str(self.model.device), "dtype": str(self.model.dtype), "batch_size": self.batch_size}

    # ------------------------------------------------------------------ batching
    def _encode(self, text: str) -> tuple[int, ...]:
        with self._tok_lock:
            return tuple(self.tokenizer.encode(text))

    def _submit(self, call: _Call):
        if not self._thread.is_alive():
            raise RuntimeError("this TransformersBackend is closed")
        self._queue.put(call)
        return call.future.result()

    def _serve(self) -> None:
        """Batcher thread: gather calls until the queue is quiet, run them in batches, repeat."""
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            calls, stopping = [first], False
            while True:
                try:
                    item = self._queue.get(timeout=GATHER_S)
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                calls.append(item)
            for batch in self._batches(calls):
                try:
                    results = self._score(batch) if batch[0].key == ("score",) else self._generate(batch)
                except Exception as exc:
                    for call in batch:
                        call.future.set_exception(exc)
                    continue
                for call, result in zip(batch, results):
                    call.future.set_result(result)
            if stopping:
                return

    def _batches(self, calls: list[_Call]) -> Iterator[list[_Call]]:
        """Calls grouped by key in arrival order, cut into batches of at most batch_size rows."""
        groups: dict[tuple, list[_Call]] = {}
        for call in calls:
            groups.setdefault(call.key, []).append(call)
        for group in groups.values():
            batch: list[_Call] = []
            rows = 0
            for call in group:
                if batch and rows + len(call.rows) > self.batch_size:
                    yield batch
                    batch, rows = [], 0
                batch.append(call)
                rows += len(call.rows)
            yield batch

    def _left_pad(self, rows: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)  # [rows, width]
        mask = torch.zeros((len(rows), width), dtype=torch.long)  # [rows, width]
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def _account(self, records: list[RequestRecord], prefill: int, decode: int) -> None:
        with self._stats_lock:
            self._records += records
            u = self._usage
            self._usage = Usage(u.query_tokens, u.hit_tokens, u.prefill_tokens + prefill, u.decode_tokens + decode)

    # ------------------------------------------------------------------ model calls (batcher thread)
    @torch.inference_mode()
    def _generate(self, batch: list[_Call]) -> list[tuple[str, dict]]:
        p = batch[0].params
        rows = [call.rows[0] for call in batch]
        ids, mask = self._left_pad(rows)
        kwargs: dict[str, Any] = {"attention_mask": mask, "max_new_tokens": p.max_new_tokens,
                                  "pad_token_id": self._pad, "do_sample": p.temperature > 1e-5}
        if kwargs["do_sample"]:
            kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k if p.top_k > 0 else None,
                          min_p=p.min_p or None)
        min_new = p.max_new_tokens if p.ignore_eos and batch[0].grammar is None else p.min_new_tokens
        if min_new:
            kwargs["min_new_tokens"] = min_new
        if p.stop:
            kwargs.update(stop_strings=list(p.stop), tokenizer=self.tokenizer)
        if batch[0].grammar is not None:
            import xgrammar as xgr
            from transformers import LogitsProcessorList

            compiled = self._compile(batch[0].grammar)
            kwargs["logits_processor"] = LogitsProcessorList([xgr.contrib.hf.LogitsProcessor([compiled] * len(rows))])
        out = self.model.generate(ids, **kwargs)[:, ids.shape[1]:].tolist()  # [rows, new tokens]
        results, records, decoded = [], [], 0
        for row, new in zip(rows, out):
            new = self._until_end(new)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = min((i for i in (text.find(s) for s in p.stop or ()) if i >= 0), default=-1)
            finish = "stop" if cut >= 0 or (new and new[-1] in self._eos) else "length"
            results.append((text[:cut] if cut >= 0 else text, {
                "prompt_tokens": len(row), "completion_tokens": len(new), "cached_tokens": 0,
                "finish_reason": {"type": finish}}))
            records.append(RequestRecord(row + tuple(new[:-1]), len(row) - 1))
            decoded += len(new)
        self._account(records, sum(len(r) for r in rows), decoded)
        return results

    def _until_end(self, new: list[int]) -> list[int]:
        """Generated tokens up to the first eos (kept) or padding (dropped)."""
        for i, token in enumerate(new):
            if token in self._eos:
                return new[: i + 1]
            if token == self._pad:
                return new[:i]
        return new

    @torch.inference_mode()
    def _score(self, batch: list[_Call]) -> list[list[list[tuple[float | None, int]]]]:
        """Per call, per row: (logprob, token) of every token from the row's start on."""
        rows = [row for call in batch for row in call.rows]
        starts = [start for call in batch for start in call.starts]
        ids, mask = self._left_pad(rows)
        keep = max(len(r) - s for r, s in zip(rows, starts)) + 1  # last positions whose logits are needed
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [rows, width]
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [rows, keep, vocab]
        scored = []
        for i, (row, start) in enumerate(zip(rows, starts)):
            n = len(row)
            # token at row position p is predicted by the logits at p - 1, kept index p - 1 - n + keep
            scored.append([(None, row[0]) if p == 0 else (float(logprobs[i, p - 1 - n + keep, row[p]]), row[p])
                           for p in range(start, n)])
        self._account([RequestRecord(r, max(min(len(r) - 1, s - 1), 0)) for r, s in zip(rows, starts)],
                      sum(len(r) for r in rows), 0)
        out, at = [], 0
        for call in batch:
            out.append(scored[at: at + len(call.rows)])
            at += len(call.rows)
        return out

    def _compile(self, spec: GrammarSpec):
        import xgrammar as xgr

        if spec not in self._grammars:
            if self._compiler is None:
                info = tokenizer_info(self.tokenizer, self.model.config.vocab_size, tuple(sorted(self._eos)))
                self._compiler = xgr.GrammarCompiler(info)
            self._grammars[spec] = (self._compiler.compile_regex(xgrammar_regex(spec.pattern)) if spec.kind == "regex"
                                    else self._compiler.compile_json_schema(spec.pattern, any_whitespace=False))
        return self._grammars[spec]


def _grammar(params: SglSamplingParams) -> GrammarSpec | None:
    values = params.engine_values()
    return SamplingParams(regex=values.get("regex"), json_schema=values.get("json_schema")).grammar


