"""Constrained decoding: regex and JSON-schema outputs, batch mixes, jump-forward, errors, limits.

Runs on the embedded default model when its checkpoint is there, else on a random tiny Llama, whose
random outputs stress the masks: whatever the model prefers, the output must match.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from sglbench.runtime.grammar import GrammarCompiler, GrammarSpec, plan_jump, unpack_bitmask
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling import SamplerRow, apply_grammar_masks
from sglbench.runtime.sampling_params import SamplingParams
from tests.helpers import assert_pool_full

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "sglbench" / "default_model" / "checkpoint"

OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
REGEXES = {
    "ipv4": rf"({OCTET}\.){{3}}{OCTET}",
    "date": r"\d{4}-\d{2}-\d{2}",
    "int": r"-?\d{1,6}",
    "float": r"-?\d{1,4}\.\d{1,4}",
    "bool": r"(True|False)",
    "string": r'"[A-Za-z ]{0,12}"',
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,10}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "member": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
    },
    "required": ["name", "age", "member", "tags", "score"],
    "additionalProperties": False,
}
FIXED = {  # every character forced: jump-forward and token-by-token decoding must agree
    "type": "object",
    "properties": {"kind": {"const": "point"}, "dims": {"enum": [3]}, "ok": {"const": True}},
    "required": ["kind", "dims", "ok"],
    "additionalProperties": False,
}
PROMPTS = ["Q: Give me an address.\nA:", "Describe the person as JSON:\n", "The quick brown fox", "A: 12"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    if (DEFAULT_CHECKPOINT / "config.json").exists():
        return str(DEFAULT_CHECKPOINT)
    return str(make_random_checkpoint(tmp_path_factory.mktemp("llama"), family="llama", seed=5))


@pytest.fixture(scope="module")
def rt(model_path):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=4096)
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def rt_no_jump(model_path):
    runtime = Runtime(model_path, device="cpu", max_total_tokens=4096, disable_jump_forward=True)
    yield runtime
    runtime.shutdown()


@pytest.fixture(autouse=True)
def no_leaks(request):
    yield
    for name in ("rt", "rt_no_jump"):
        if name in request.fixturenames:
            assert_pool_full(request.getfixturevalue(name))


def check_person(text: str) -> None:
    """Strict JSON that satisfies PERSON (checked by hand: no jsonschema dependency)."""
    obj = json.loads(text)
    assert list(obj) == PERSON["required"]
    assert re.fullmatch("[A-Za-z ]{1,10}", obj["name"])
    assert type(obj["age"]) is int and 0 <= obj["age"] <= 120
    assert type(obj["member"]) is bool
    assert len(obj["tags"]) <= 3 and set(obj["tags"]) <= {"red", "green", "blue"}
    assert type(obj["score"]) in (int, float) and 0 <= obj["score"] <= 10


def decode_tokens(runtime: Runtime) -> int:
    """Tokens decoded so far, read once the engine is idle (metrics are rebuilt after each step)."""
    runtime.wait_idle()
    return runtime.metrics().decode_tokens


def unconstrained(max_new_tokens: int = 16) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0, ignore_eos=True)


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.2])
def test_mixed_batch_outputs_match_their_grammar(rt, temperature):
    alone = [rt.submit(p, unconstrained()).result(timeout=60)["output_ids"] for p in PROMPTS[:2]]
    handles = {}
    for i, (name, pattern) in enumerate(REGEXES.items()):
        params = SamplingParams(max_new_tokens=48, temperature=temperature, seed=i, regex=pattern)
        handles[name] = rt.submit(PROMPTS[i % len(PROMPTS)], params)
    for i in range(2):
        params = SamplingParams(max_new_tokens=128, temperature=temperature, seed=10 + i, json_schema=PERSON)
        handles[f"json{i}"] = rt.submit(PROMPTS[i + 1], params)
    free = [rt.submit(p, unconstrained()) for p in PROMPTS[:2]]
    for name, handle in handles.items():
        out = handle.result(timeout=120)
        assert out["meta_info"]["finish_reason"]["type"] == "stop", (name, out)
        if name.startswith("json"):
            check_person(out["text"])
        else:
            assert re.fullmatch(REGEXES[name], out["text"]), (name, out["text"])
    assert [h.result(timeout=60)["output_ids"] for h in free] == alone


def test_jump_forward_equals_token_by_token_on_forced_output(rt, rt_no_jump):
    prompt = PROMPTS[1]
    before = decode_tokens(rt), decode_tokens(rt_no_jump)
    jumped = rt.generate(prompt, max_new_tokens=64, temperature=0, json_schema=FIXED)
    stepped = rt_no_jump.generate(prompt, max_new_tokens=64, temperature=0, json_schema=FIXED)
    assert jumped["text"] == stepped["text"] == json.dumps({"kind": "point", "dims": 3, "ok": True})
    # The jump retokenizes: the ids are what the tokenizer gives for the text, not one per decode step.
    assert jumped["output_ids"] == rt.tokenizer.encode_plain(jumped["text"])
    assert jumped["meta_info"]["jump_forward_tokens"] == len(jumped["output_ids"])
    assert stepped["meta_info"]["jump_forward_tokens"] == 0
    assert decode_tokens(rt) - before[0] == 0
    assert decode_tokens(rt_no_jump) - before[1] == len(stepped["output_ids"]) - 1  # the first comes from prefill


def test_jump_forward_leaves_the_last_forced_token_to_the_model(rt, rt_no_jump):
    """A generic object forces `{` first; jumping that token alone showed the model a boundary it never saw
    (it writes `{"` as one token) and derailed it into `{": ": 26, ...`. The last forced token is sampled."""
    ids = rt.tokenizer.encode_plain(rt.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Give me Alice's record as JSON."}]))
    params = {"max_new_tokens": 80, "temperature": 0, "json_schema": '{"type": "object"}'}
    jumped = rt.generate(input_ids=ids, sampling_params=params)
    stepped = rt_no_jump.generate(input_ids=ids, sampling_params=params)
    assert jumped["text"] == stepped["text"]
    if rt.config.model_path == str(DEFAULT_CHECKPOINT):
        assert json.loads(jumped["text"])["name"] == "Alice"


def test_jump_forward_saves_decode_steps_on_partly_forced_output(rt, rt_no_jump):
    prompts = [f"Person {i}:" for i in range(4)]
    decoded = {}
    for runtime in (rt, rt_no_jump):
        runtime.wait_idle()
        start = runtime.metrics()
        outs = runtime.generate(prompts, max_new_tokens=128, temperature=0.9, seed=1, json_schema=PERSON)
        for out in outs:
            check_person(out["text"])
        runtime.wait_idle()
        decoded[runtime] = runtime.metrics().decode_tokens - start.decode_tokens
        jumps = sum(out["meta_info"]["jump_forward_tokens"] for out in outs)
        assert jumps == runtime.metrics().jump_forward_tokens - start.jump_forward_tokens
        assert (jumps > 0) == (runtime is rt)
    assert decoded[rt] < decoded[rt_no_jump]


def test_jump_that_retokenizes_computed_tokens_rewinds_in_place(tmp_path):
    # "q" and "u" sampled as two tokens, then the forced "ick brown fox": retokenized, "quick" is one
    # token, so the computed "q" changes: the request drops that K/V and computes the new tokens in its
    # next extend step, staying scheduled (requeued, its prompt's K/V went to the cache unlocked and a
    # full pool evicted it). Random weights make such splits common at a high temperature.
    regex = "(q|Q)(u|U)ick brown fox"
    path = make_random_checkpoint(tmp_path, family="llama", seed=5)
    with Runtime(str(path), device="cpu", max_total_tokens=1024) as rnd:
        params = [SamplingParams(max_new_tokens=32, temperature=1.2, seed=i, regex=regex) for i in range(16)]
        outs = [h.result(timeout=60) for h in [rnd.submit(f"Animal {i}:", p) for i, p in enumerate(params)]]
        for out in outs:
            assert re.fullmatch(regex, out["text"]) and out["meta_info"]["finish_reason"]["type"] == "stop"
        rewound = {e.data["rid"] for e in rnd.events.since(0, kinds=("request.jump_forward",)) if e.data["rewound"]}
        assert rewound
        scheduled = Counter(e.data["rid"] for e in rnd.events.since(0, kinds=("request.scheduled",)))
        assert all(scheduled[rid] == 1 for rid in rewound)
        assert_pool_full(rnd)


def test_retraction_under_memory_pressure_keeps_outputs_valid(model_path):
    with Runtime(model_path, device="cpu", max_total_tokens=160) as small:
        outs = small.generate([f"Person {i}:" for i in range(6)], max_new_tokens=96, temperature=0.8, seed=4,
                              json_schema=PERSON)
        for out in outs:
            check_person(out["text"])
        assert_pool_full(small)


def test_grammar_that_cannot_finish_ends_with_length(rt, rt_no_jump):
    for runtime in (rt, rt_no_jump):
        out = runtime.generate(PROMPTS[0], max_new_tokens=8, temperature=0, regex=r"\d{50}")
        assert out["meta_info"]["finish_reason"]["type"] == "length"
        assert re.fullmatch(r"\d+", out["text"]) and len(out["output_ids"]) == 8
        forced = runtime.generate(PROMPTS[0], max_new_tokens=5, temperature=0, regex="(abc){40}")
        assert forced["meta_info"]["finish_reason"]["type"] == "length"
        assert len(forced["output_ids"]) == 5 and ("abc" * 40).startswith(forced["text"])


def test_grammar_ends_the_output_even_with_ignore_eos(rt):
    out = rt.generate(PROMPTS[2], max_new_tokens=32, temperature=1.0, seed=2, ignore_eos=True, regex="(True|False)")
    assert out["text"] in ("True", "False") and out["meta_info"]["finish_reason"]["type"] == "stop"


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"regex": "(abc"}, "(abc"),
    ({"regex": "[z-a]"}, "[z-a]"),
    ({"json_schema": '{"type": "foo"}'}, '{"type": "foo"}'),
    ({"json_schema": "{not json"}, "{not json"),
])
def test_invalid_grammar_raises_value_error_naming_it(rt, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(repr(named))):
        rt.generate(PROMPTS[0], max_new_tokens=4, **kwargs)
    assert rt.generate(PROMPTS[0], max_new_tokens=2, temperature=0, regex="ab")["text"] == "ab"


def test_sampling_params_grammar_fields():
    assert SamplingParams(json_schema={"type": "integer"}).grammar == GrammarSpec("json_schema", '{"type": "integer"}')
    assert SamplingParams(regex="a+").grammar == GrammarSpec("regex", "a+")
    assert SamplingParams().grammar is None
    with pytest.raises(ValueError, match="not both"):
        SamplingParams(regex="a", json_schema="{}")
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingParams(regex="a+", min_new_tokens=2)


def test_compiler_caches_and_masks_special_tokens(rt):
    tok, engine = rt.tokenizer, rt.engine
    compiler = GrammarCompiler(tok.hf, engine.model_config.vocab_size, engine.eos_token_ids, cache_size=2)
    specs = [GrammarSpec("regex", p) for p in ('"[^"]*"', r"\d+", "x")]
    assert compiler.compile(specs[0]) is compiler.compile(specs[0])
    compiler.compile(specs[1])
    compiler.compile(specs[2])
    assert compiler.cached_specs == specs[1:]
    matcher = compiler.matcher(specs[0])
    for t in tok.encode_plain('"'):
        matcher.accept(t)
    allowed = matcher.allowed_tokens()
    special = set(tok.hf.all_special_ids)
    assert not any(allowed[i] for i in special)  # not even eos: the string is still open
    assert allowed[tok.encode_plain("a")[0]]
    for t in tok.encode_plain('ab"'):
        matcher.accept(t)
    assert matcher.must_stop() and not matcher.is_terminated()


def test_plan_jump_retokenizes_the_boundary(rt):
    tok = rt.tokenizer
    sampled = [t for ch in "quick" for t in tok.encode_plain(ch)]  # one token per letter
    jump = plan_jump(tok, sampled, " brown fox", max_len=64)
    assert jump is not None
    assert tok.decode(sampled[: jump.keep] + list(jump.tokens)) == "quick brown fox"
    assert list(jump.tokens) == tok.encode_plain(tok.decode(sampled[jump.keep :]) + " brown fox")
    capped = plan_jump(tok, sampled, " brown fox", max_len=len(sampled) + 1)
    assert capped is not None and jump.keep + len(capped.tokens) <= len(sampled) + 1


def test_replace_tail_redoes_only_what_follows_the_shared_prefix(rt):
    """Swapping a tail for one that starts with the same tokens rolls back and accepts only the rest, and the
    matcher ends where accepting the new tokens from scratch leaves it; a refused tail leaves it unchanged."""
    tok, engine = rt.tokenizer, rt.engine
    compiler = GrammarCompiler(tok.hf, engine.model_config.vocab_size, engine.eos_token_ids)
    spec = GrammarSpec("regex", r"[a-z]{1,12}")
    old = [t for ch in "abcd" for t in tok.encode_plain(ch)]
    new = old[:2] + [t for ch in "xyz" for t in tok.encode_plain(ch)]
    digit = tok.encode_plain("7")

    def fresh(tokens):
        matcher = compiler.matcher(spec)
        for t in tokens:
            matcher.accept(t)
        return matcher

    def state(matcher):  # what the grammar allows next, and whether it may end here
        return matcher.allowed_tokens().clone(), matcher.is_terminated()

    matcher = fresh(old)
    calls = []
    accept = matcher.try_accept
    matcher.try_accept = lambda t: calls.append(t) or accept(t)
    assert matcher.replace_tail(old, new)
    assert calls == new[2:] and matcher.accepted == len(new)
    expected = state(fresh(new))
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(state(matcher), expected))
    assert matcher.replace_tail(new, new[:-1]) and matcher.accepted == len(new) - 1  # holding back the last token
    before = state(matcher)
    assert not matcher.replace_tail(new[:-1], new[:3] + digit)  # a digit breaks the grammar: nothing changes
    assert matcher.accepted == len(new) - 1 and torch.equal(state(matcher)[0], before[0])


def test_packed_and_narrowed_masks_mask_the_logits_as_their_bool_masks(rt):
    """The sampler unpacks the grammars' packed masks together; a mask a refusal narrowed is only in bool form
    (the packed one still allows the refused token), and unconstrained rows are untouched."""
    tok, engine = rt.tokenizer, rt.engine
    vocab = engine.model_config.vocab_size
    compiler = GrammarCompiler(tok.hf, vocab, engine.eos_token_ids)
    digits, quoted = compiler.matcher(GrammarSpec("regex", r"\d+")), compiler.matcher(GrammarSpec("regex", '"[a-z]*"'))
    for t in tok.encode_plain('"'):
        quoted.accept(t)
    a = tok.encode_plain("a")[0]
    narrowed = compiler.matcher(GrammarSpec("regex", '"[a-z]*"'))
    for t in tok.encode_plain('"'):
        narrowed.accept(t)
    assert narrowed.token_bitmask() is not None and narrowed.allowed_tokens()[a]
    narrowed.refuse(a)  # as when xgrammar's mask over-allows
    assert narrowed.token_bitmask() is None and not narrowed.allowed_tokens()[a]

    def row(matcher):
        packed = None if matcher is None else matcher.token_bitmask()
        allowed = None if matcher is None or packed is not None else matcher.allowed_tokens()
        return SamplerRow(SamplingParams(), None, None, allowed=allowed, token_bitmask=packed)

    logits = torch.randn(4, vocab)
    for matchers in ([digits, quoted], [digits, None, narrowed, quoted]):
        rows = [row(m) for m in matchers]
        masked = apply_grammar_masks(logits[: len(rows)], rows)
        for i, m in enumerate(matchers):
            expected = logits[i] if m is None else logits[i].masked_fill(~m.allowed_tokens(), float("-inf"))
            assert torch.equal(masked[i], expected)
    assert torch.isinf(masked[2, a]) and not torch.isinf(masked[3, a])
    quoted.accept(a)  # a new state: a fresh mask in both forms
    assert quoted.token_bitmask() is not None and torch.equal(
        quoted.allowed_tokens(), unpack_bitmask(quoted.token_bitmask(), vocab))


def test_greedy_rows_pick_the_masked_argmax_without_filling_the_mask(rt):
    """The argmax, then `fitting_best` (the best few tokens tried against the matcher before any mask is
    filled), pick what masking the logits and taking the argmax picks, ties included (lowest id), or leave the
    choice to the mask: over random logits, logits whose argmax is forbidden, and ties at the edge of the
    tokens tried."""
    from sglbench.runtime.output_processor import PROBED_TOKENS, fitting_best

    tok, engine = rt.tokenizer, rt.engine
    vocab = engine.model_config.vocab_size
    compiler = GrammarCompiler(tok.hf, vocab, engine.eos_token_ids)
    spec = GrammarSpec("regex", r'\{"name": "[A-Za-z ]{1,16}", "n": [0-9]{1,3}\}')
    gen = torch.Generator().manual_seed(0)
    picked = fallbacks = 0
    for prefix in ('{"name": "', '{"name": "Abcdefgh', '{"name": "Ab", "n": 4'):
        matcher = compiler.matcher(spec)
        for t in tok.encode_plain(prefix):
            matcher.accept(t)
        allowed = matcher.allowed_tokens()
        forbidden = (~allowed).nonzero().flatten()
        for trial in range(60):
            logits = torch.randn(vocab, generator=gen)
            if trial % 3 == 1:  # the argmax forbidden: the picks come from further down
                logits[forbidden[torch.randint(len(forbidden), (4,), generator=gen)]] += 50
            if trial % 3 == 2:  # ties at the top, and at the edge of the tokens tried
                top = logits.topk(PROBED_TOKENS + 4).indices  # past the tokens tried too
                logits[top[2:]] = float(logits[top[2]])
            expected = int(logits.masked_fill(~allowed, float("-inf")).argmax())
            first = int(logits.argmax())  # the unmasked greedy pick, tried first as the output processor does
            before = matcher.accepted
            token = first if matcher.try_accept(first) else fitting_best(matcher, logits, first)
            if token is None:
                fallbacks += 1
                assert matcher.accepted == before  # unchanged: the mask decides
                continue
            picked += 1
            assert token == expected and matcher.accepted == before + 1
            matcher.rollback(1)
    assert picked > 60 and fallbacks > 0  # both paths ran


def test_constrained_greedy_outputs_are_the_same_with_masks_filled_first(rt, monkeypatch):
    """Greedy constrained requests whose masks wait for their best tokens (`probes_first`) give the outputs of
    masking every step, in a batch with sampled and logprob-reading rows."""
    from sglbench.runtime import output_processor
    from sglbench.runtime.output_processor import OutputProcessor

    tried = []
    original = output_processor.fitting_best
    monkeypatch.setattr(output_processor, "fitting_best", lambda *a: tried.append(1) or original(*a))
    regex = r'\{"name": "[A-Za-z ]{1,16}", "n": [0-9]{1,3}\}'
    params = [dict(max_new_tokens=48, temperature=0, regex=regex),
              dict(max_new_tokens=48, temperature=0, json_schema=json.dumps(PERSON)),
              dict(max_new_tokens=48, temperature=0, regex=REGEXES["string"], return_logprob=True),
              dict(max_new_tokens=48, temperature=0.8, seed=3, regex=REGEXES["date"])]
    prompts = [p + " " for p in PROMPTS]
    probed = [r["text"] for r in rt.generate(prompts, sampling_params=params)]
    assert len(tried) > 10
    monkeypatch.setattr(OutputProcessor, "probes_first", lambda self, req: False)
    masked = [r["text"] for r in rt.generate(prompts, sampling_params=params)]
    assert probed == masked
    assert re.fullmatch(regex, probed[0])
    check_person(probed[1])
