"""The output processor: turns a forward's logits into requests' tokens, text, logprobs and stops.

Sample (with penalties and grammar masks), append, record logprobs, match stop tokens and strings,
stream what is safe to show, and jump forward over text a grammar forces. When a request ends (or a
jump-forward rewrites tokens whose K/V is computed) it calls back into the engine, which owns
memory and queues: `finish(req, reason)` and `rewind(req, keep)`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import decoders

from sglbench.runtime.events import EventLog
from sglbench.runtime.grammar import GrammarCompiler, GrammarMatcher, plan_jump
from sglbench.runtime.request import Request
from sglbench.runtime.sampling import SamplerRow, masked_argmax, sample
from sglbench.runtime.sampling_params import SamplingParams
from sglbench.runtime.tokenizer import StopMatch, Tokenizer, find_stop, find_stop_regex, streamable_length
from sglbench.sequences import common_prefix_len


@dataclass
class Constraint:
    """A constrained request's grammar position and the output tokens jump-forward appended to it."""

    matcher: GrammarMatcher
    jump_forward_tokens: int = 0


# The best tokens a greedy constrained row tries before its grammar's mask is filled: on the JSON workload 8
# settled 48 % of the rows whose argmax the grammar refused, 16 55 % and 32 62 %, each try costing about 5 us.
PROBED_TOKENS = 8


def fitting_best(matcher: GrammarMatcher, logits: torch.Tensor, tried: int) -> int | None:
    """The greedy pick under the grammar without filling its mask, accepted into the matcher, when the row's
    argmax `tried` was refused ([vocab] fp32 logits): the next best tokens (argmax's rule: highest logit, then
    lowest id) tried in turn, up to PROBED_TOKENS in all; None, with the matcher unchanged, when none fits.

    The same token as masking the logits and taking the argmax: every token before it is refused, so none of
    them is allowed. Filling a mask costs 5-400 us (xgrammar checks each token its cache leaves uncertain, as
    inside `[A-Za-z ]{1,16}`), a refused try and the next argmax about 5."""
    row = logits.numpy().copy()
    for _ in range(PROBED_TOKENS - 1):
        row[tried] = -np.inf
        tried = int(row.argmax())
        if matcher.try_accept(tried):
            return tried
    return None


@dataclass
class DecodedOutput:
    """A request's output text as last decoded, and where it may be cut so that only later tokens are decoded again.

    ends[i] is len(decode(ids[:i + 1])) where that text ends on a whole character (its bytes complete), else -1.
    For a byte-level decoder the text of ids is then decode(ids[:n]) + decode(ids[n:]) at any such cut n: each
    token is a byte string, and UTF-8 decoding resumes cleanly after a complete character."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)

    def cut(self, ids: list[int]) -> int:
        """The longest cut n of self.ids whose tokens ids[:n] repeats (0: decode all of ids)."""
        n = min(len(self.ids), len(ids))
        if self.ids[:n] != ids[:n]:
            n = common_prefix_len(self.ids, ids)
        while n > 0 and self.ends[n - 1] < 0:
            n -= 1
        return n

    def update(self, ids: list[int], text: str, cut: int) -> None:
        """Record text as the decoding of ids, whose first `cut` tokens are this record's."""
        del self.ends[cut:]
        self.ends.extend([-1] * (len(ids) - cut))
        if ids and not text.endswith("\ufffd"):  # a U+FFFD at the end may be half a character
            self.ends[-1] = len(text)
        self.ids, self.text = list(ids), text


def decodes_by_concatenation(tokenizer: Tokenizer) -> bool:
    """Whether decode(a + b) == decode(a) + decode(b) whenever decode(a) ends on a whole character: a Hugging Face
    fast tokenizer with a byte-level decoder (GPT-2, Llama 3, Qwen, the default model) and no space clean-up."""
    hf = getattr(tokenizer, "hf", None)
    backend = getattr(hf, "backend_tokenizer", None)
    return (isinstance(getattr(backend, "decoder", None), decoders.ByteLevel)
            and getattr(hf, "clean_up_tokenization_spaces", True) is False)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: frozenset[int], vocab_size: int, context_length: int,
                 grammars: GrammarCompiler, events: EventLog, jump_forward: bool, device: str, seed: int,
                 finish: Callable[[Request, dict], None], rewind: Callable[[Request, int], None]):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.grammars = grammars
        self.events = events
        self.jump_forward = jump_forward
        self.device = device
        self._finish = finish
        self._rewind = rewind
        self._generator = torch.Generator(device=device).manual_seed(seed)
        self._constraints: dict[str, Constraint] = {}  # rid -> grammar state of constrained requests
        self._incremental = decodes_by_concatenation(tokenizer)
        self._decoded: dict[str, DecodedOutput] = {}  # rid -> output text decoded so far (when _incremental)
        self.jump_forward_tokens = 0  # output tokens appended by jump-forward: decode steps saved

    # ------------------------------------------------------------------ requests
    def register(self, req: Request, matcher: GrammarMatcher | None) -> None:
        """Give a new request its random generator, its logit_bias as tensors and, when constrained, its
        grammar state (the matcher compiled on the caller's thread, or one compiled here)."""
        p = req.params
        spec = p.grammar
        if spec is not None:
            self._constraints[req.rid] = Constraint(matcher or self.grammars.matcher(spec))
        if p.seed is not None:
            req.generator = torch.Generator(device=self.device).manual_seed(p.seed)
        else:
            req.generator = self._generator
        if p.logit_bias:
            ids, biases = list(p.logit_bias), list(p.logit_bias.values())
            req.logit_bias = (torch.tensor(ids, dtype=torch.int64, device=self.device),  # [k]
                              torch.tensor(biases, dtype=torch.float32, device=self.device))  # [k]

    def release(self, req: Request) -> int | None:
        """Forget a finished request's grammar state; the tokens jump-forward gave it (None: unconstrained)."""
        self._decoded.pop(req.rid, None)
        constraint = self._constraints.pop(req.rid, None)
        return None if constraint is None else constraint.jump_forward_tokens

    def _constraint(self, req: Request) -> Constraint | None:
        """req's grammar state; no lookup at all while no constrained request is in flight."""
        return self._constraints.get(req.rid) if self._constraints else None

    # ------------------------------------------------------------------ sampling
    def _sampler_row(self, req: Request) -> SamplerRow:
        p = req.params
        block = ()
        if len(req.output_ids) < p.min_new_tokens:
            block = tuple(sorted((set() if p.ignore_eos else set(self.eos_token_ids)) | set(p.stop_token_ids)))
        constraint = self._constraint(req)
        row = SamplerRow(p, req.generator, req.output_counts, block, logit_bias=req.logit_bias)
        if constraint is not None and not self.probes_first(req):
            self._mask(row, constraint.matcher)
        return row

    @staticmethod
    def _mask(row: SamplerRow, matcher: GrammarMatcher) -> None:
        row.token_bitmask = matcher.token_bitmask()
        row.allowed = matcher.allowed_tokens() if row.token_bitmask is None else None  # narrowed by refusals

    def probes_first(self, req: Request) -> bool:
        """Whether req's grammar mask waits until its argmax and then its best tokens were tried against the
        matcher (`_advance_grammars`): a greedy row whose logits nothing adjusts and whose logprobs nobody
        reads, which picks the same token either way."""
        p = req.params
        constraint = self._constraint(req)
        return (constraint is not None and p.greedy and not p.return_logprob and not p.adjusts_logits
                and not constraint.matcher.narrowed)

    def sample_and_append(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Sample each request's next token from its logits row ([reqs, vocab]) and process it."""
        rows = [self._sampler_row(r) for r in reqs]
        next_ids: list[int | None] = sample(logits, rows).tolist()
        if self._constraints:
            self._advance_grammars(reqs, logits, rows, next_ids)
        want_logprobs = [i for i, r in enumerate(reqs) if r.params.return_logprob]
        logprobs = torch.log_softmax(logits[want_logprobs], dim=-1) if want_logprobs else None
        now = time.time()
        for j, (req, token) in enumerate(zip(reqs, next_ids)):
            if token is None:
                self._finish(req, {"type": "abort", "message": "the grammar allows no next token"})
                continue
            req.output_ids.append(token)
            if req.timings.first_token is None:
                req.timings.first_token = now
                self.events.emit("request.first_token", rid=req.rid, program_id=req.program_id)
            if req.params.uses_penalties:
                if req.output_counts is None:
                    req.output_counts = torch.zeros(self.vocab_size, dtype=torch.int32)
                req.output_counts[token] += 1
            if logprobs is not None and req.params.return_logprob:
                row = logprobs[want_logprobs.index(j)]  # [vocab]
                req.output_token_logprobs.append((float(row[token]), token))
                if req.params.top_logprobs_num:
                    top = row.topk(req.params.top_logprobs_num)
                    req.output_top_logprobs.append(list(zip(top.values.tolist(), top.indices.tolist())))
                if req.params.token_ids_logprob:
                    ids = list(req.params.token_ids_logprob)
                    req.output_token_ids_logprobs.append(list(zip(row[ids].tolist(), ids)))
            self.check_finished(req, token)
            if not req.finished and self._constraint(req) is not None:
                self.advance_forced(req)

    def _advance_grammars(self, reqs: list[Request], logits: torch.Tensor, rows: list[SamplerRow],
                          next_ids: list[int | None]) -> None:
        """Advance each constrained request's grammar by its sampled token (next_ids updated in place). A
        greedy row sampled without its mask (`probes_first`) keeps its argmax when the grammar accepts it,
        else takes the best next token the grammar accepts among a few (`fitting_best`; fp32 logits on the
        CPU), else has its mask filled and is sampled again."""
        on_cpu = logits.device.type == "cpu" and logits.dtype == torch.float32
        for j, req in enumerate(reqs):
            constraint = self._constraint(req)
            if constraint is None:
                continue
            matcher, row = constraint.matcher, rows[j]
            if row.token_bitmask is None and row.allowed is None:
                if matcher.try_accept(next_ids[j]):
                    continue
                token = fitting_best(matcher, logits[j], next_ids[j]) if on_cpu else None
                if token is not None:
                    next_ids[j] = token
                    continue
                self._mask(row, matcher)  # the mask decides
                next_ids[j] = (masked_argmax(logits[j], row.token_bitmask) if on_cpu and row.token_bitmask is not None
                               else int(sample(logits[j : j + 1], [row])[0]))
            next_ids[j] = self._accept(matcher, next_ids[j], logits[j : j + 1], row)

    @staticmethod
    def _accept(matcher: GrammarMatcher, token: int, logits: torch.Tensor, row: SamplerRow) -> int | None:
        """Advance a grammar by its request's sampled token; when the matcher refuses it (xgrammar's mask
        let it through), sample again ([1, vocab] logits) without it. None: nothing is allowed."""
        while not matcher.try_accept(token):
            row.allowed, row.token_bitmask = matcher.refuse(token), None
            if not bool(row.allowed.any()):
                return None
            token = int(sample(logits, [row])[0])
        return token

    def record_prompt_logprobs(self, req: Request, logits: torch.Tensor, rows: list[tuple[int, int]]) -> None:
        """Append the logprobs of the prompt tokens at `rows` ((logits row, prompt position) pairs)."""
        ids = list(req.params.token_ids_logprob)
        if not req.input_token_logprobs and req.params.logprob_start_len == 0:
            req.input_token_logprobs.append((None, req.input_ids[0]))  # the first token has no logprob
            if ids:
                req.input_token_ids_logprobs.append(None)
        if not rows:
            return
        idx = torch.tensor([r for r, _ in rows], device=logits.device)
        lp = torch.log_softmax(logits[idx], dim=-1)  # [rows, vocab]
        tokens = [req.input_ids[p] for _, p in rows]
        chosen = lp[torch.arange(len(rows)), torch.tensor(tokens, device=lp.device)].tolist()
        req.input_token_logprobs.extend(zip(chosen, tokens))
        if ids:
            values = lp[:, ids].tolist()  # [rows, k]
            req.input_token_ids_logprobs.extend(list(zip(row, ids)) for row in values)

    # ------------------------------------------------------------------ jump-forward
    def advance_forced(self, req: Request) -> None:
        """Jump forward over the text req's grammar forces next (when enabled), then check for the end."""
        constraint = self._constraint(req)
        if constraint is not None and self.jump_forward and self._jump_forward(req, constraint):
            self.check_finished(req, None)

    def _jump_forward(self, req: Request, constraint: Constraint) -> bool:
        """Append the grammar's forced text to req's output without decoding it; True when it did.

        The last output tokens are retokenized with the forced text (`plan_jump`). If that changes a
        token whose K/V is computed, the engine drops req's K/V from that token on (`rewind`). Either way
        req stays running and is prefilling again: the next extend step computes the new tokens' K/V.
        """
        forced = constraint.matcher.forced_string()
        if not forced:
            return False
        limit = min(req.params.max_new_tokens, self.context_length - 1 - len(req.input_ids))
        jump = plan_jump(self.tokenizer, req.output_ids, forced, limit)
        old_tail = req.output_ids[jump.keep :] if jump is not None else []
        if jump is None or not constraint.matcher.replace_tail(old_tail, list(jump.tokens)):
            return False
        tokens = list(jump.tokens)
        if not constraint.matcher.must_stop() and jump.keep + len(tokens) < limit:
            # More follows the forced text: leave its last token to the sampler, which (under the mask) may
            # spell it merged with what follows, e.g. `{"` where a jump over `{` alone would show the model
            # a token boundary it never saw in training and derail it.
            held = tokens[:-1]
            grows = len(self.tokenizer.decode(held, skip_special_tokens=False)) > len(
                self.tokenizer.decode(old_tail, skip_special_tokens=False))
            constraint.matcher.replace_tail(tokens, held if grows else old_tail)
            if not grows:
                return False
            tokens = held
        new_ids = req.output_ids[: jump.keep] + tokens
        computed = req.kv_len - len(req.input_ids)  # output tokens whose K/V is in the pool
        common = common_prefix_len(req.output_ids, new_ids)
        rewound = max(computed - common, 0) if req.row >= 0 else 0  # computed tokens the jump rewrites
        if rewound:
            self._rewind(req, len(req.input_ids) + common)
        saved = max(len(new_ids) - len(req.output_ids), 0)
        req.output_ids = new_ids
        constraint.jump_forward_tokens += saved
        self.jump_forward_tokens += saved
        self.events.emit("request.jump_forward", rid=req.rid, tokens=saved, rewound=rewound, program_id=req.program_id)
        return True

    # ------------------------------------------------------------------ stops and streaming
    def check_finished(self, req: Request, token: int | None) -> None:
        """Finish req if its last token (None: after a jump-forward) or text ends it, else stream. The
        matched stop string, regex match or stop token's text is cut from the text unless no_stop_trim."""
        p = req.params
        prev_len = len(req.text)
        streaming = req.handle is not None and req.handle.streaming
        # The text is decoded each token only where something reads it now (stop strings, a caller
        # iterating); else once, when the request ends (`settle_text`).
        req.text_stale = not (p.stop or p.stop_regex or streaming)
        if not req.text_stale:
            req.text = self._output_text(req)
        reason = None
        if len(req.output_ids) >= p.min_new_tokens:
            if token in p.stop_token_ids or (token in self.eos_token_ids and not p.ignore_eos):
                reason = {"type": "stop", "matched": token}
            elif p.stop or p.stop_regex:
                hit = _earliest(find_stop(req.text, p.stop, prev_len),
                                find_stop_regex(req.text, p.stop_regex, prev_len))
                if hit is not None:
                    req.text = req.text if p.no_stop_trim else hit.text
                    reason = {"type": "stop", "matched": hit.matched}
        if reason is None:
            reason = self._grammar_end(req, token)
        if reason is None and len(req.output_ids) >= p.max_new_tokens:
            reason = {"type": "length", "matched": None}
        if reason is None and req.kv_len + 1 >= self.context_length:
            reason = {"type": "length", "matched": None, "message": "reached the model's context length"}
        if reason is None:
            if streaming and (p.stream_interval is None or len(req.output_ids) % p.stream_interval == 0):
                self.stream(req, streamable_length(req.text, p.stop, p.stop_regex, req.emitted_len))
            return
        matched = reason.get("matched")
        if isinstance(matched, int) and not p.no_stop_trim and self._shows(matched, p):
            req.text = self._decode(req.output_ids[:-1], p)  # a stop token's text, as SGLang, is not output
            req.text_stale = False
        self._finish(req, reason)

    def settle_text(self, req: Request) -> None:
        """Decode req's text up to its last output token where `check_finished` left it behind."""
        if req.text_stale:
            req.text = self._output_text(req)
            req.text_stale = False

    def _output_text(self, req: Request) -> str:
        """The text of req's output tokens, equal to decoding them all; with a byte-level tokenizer only the tokens
        after the last cut that is still valid (a rewritten tail, a split character: see `DecodedOutput`)."""
        if not self._incremental:
            return self._decode(req.output_ids, req.params)
        decoded = self._decoded.get(req.rid)
        if decoded is None:
            decoded = self._decoded[req.rid] = DecodedOutput()
        ids = req.output_ids
        cut = decoded.cut(ids)
        head = decoded.text[: decoded.ends[cut - 1]] if cut else ""
        text = head + self._decode(ids[cut:], req.params) if cut < len(ids) else head
        decoded.update(ids, text, cut)
        return text

    def _decode(self, ids: list[int], p: SamplingParams) -> str:
        return self.tokenizer.decode(ids, p.skip_special_tokens, p.spaces_between_special_tokens)

    def _shows(self, token: int, p: SamplingParams) -> bool:
        """Whether token's text is in the decoded output (skip_special_tokens drops special ones)."""
        return not (p.skip_special_tokens and token in self.tokenizer.special_ids)

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

    @staticmethod
    def stream(req: Request, upto: int) -> None:
        """Push req's text up to `upto` characters to its handle (what was not pushed yet), with the output
        tokens so far and the logprob entries of the tokens since the previous piece."""
        if req.handle is not None and upto > req.emitted_len:
            new: dict[str, list] = {}
            if req.params.return_logprob:
                start = req.emitted_tokens
                new = {"output_token_logprobs": req.output_token_logprobs[start:],
                       "output_top_logprobs": req.output_top_logprobs[start:],
                       "output_token_ids_logprobs": req.output_token_ids_logprobs[start:]}
                req.emitted_tokens = len(req.output_token_logprobs)
            req.handle.push_delta(req.text[req.emitted_len : upto], len(req.output_ids), **new)
        req.emitted_len = max(req.emitted_len, upto)


def _earliest(*hits: StopMatch | None) -> StopMatch | None:
    """The stop match that cuts the text soonest."""
    found = [h for h in hits if h is not None]
    return min(found, key=lambda h: len(h.text)) if found else None
