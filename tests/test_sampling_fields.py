"""SGLang's further sampling fields: their rules and translations, the sampler's maths, and what each does in
the engine on the embedded default model (stop_regex, no_stop_trim, repetition_penalty, logit_bias,
sampling_seed, spaces_between_special_tokens, ebnf, token_ids_logprob, stream_interval), plus the checks
against the model made before submission, so a step never raises for a request."""

from __future__ import annotations

import re
import threading

import pytest
import torch

import sglbench as sgl
from sglbench.runtime.grammar import GrammarSpec
from sglbench.runtime.sampling import (
    SamplerRow,
    _filter_probs,
    apply_penalties,
    argmax_rows,
    draw,
    masked_argmax,
    sample,
)
from sglbench.runtime.sampling_params import SamplingParams, openai_request, sglang_request
from sglbench.runtime.tokenizer import Tokenizer, find_stop_regex, streamable_length
from tests.helpers import assert_pool_full

PROMPT = "Q: What is the capital of France?\nA:"  # greedy: ' 58\n\nQ: What is the age of Vasti?\nA: 25\n\nQ:'
EBNF = 'root ::= ("yes" | "no") ", " [0-9] [0-9]?'


# ---------------------------------------------------------------------------- the definition
def test_field_rules_and_normal_forms():
    p = SamplingParams.from_kwargs(logit_bias={"3": 1, 4: -2.5}, stop_regex=r"\d+", repetition_penalty=1.3,
                                   custom_params={"any": "data"}, beam_width=1, stream_interval=2)
    assert (p.logit_bias, p.stop_regex) == ({3: 1.0, 4: -2.5}, (r"\d+",))
    assert p.uses_penalties and p.adjusts_logits
    assert SamplingParams(stop_regex=["a", "b"]).stop_regex == ("a", "b")
    assert not SamplingParams().adjusts_logits and SamplingParams(logit_bias={1: 0.5}).adjusts_logits
    for kwargs, message in [
        ({"repetition_penalty": 0}, r"repetition_penalty must be in \(0, 2\], got 0"),
        ({"repetition_penalty": 2.5}, r"repetition_penalty must be in \(0, 2\]"),
        ({"logit_bias": {"x": 1}}, "logit_bias keys must be token ids"),
        ({"logit_bias": {-1: 1}}, "token ids >= 0"),
        ({"logit_bias": {1: float("nan")}}, r"logit_bias\[1\] must be a finite number"),
        ({"logit_bias": [1, 2]}, "logit_bias must be a dict"),
        ({"stop_regex": "(a"}, r"stop_regex '\(a' is not a valid regular expression"),
        ({"stop_regex": "a*"}, "matches the empty string"),
        ({"regex": "a", "ebnf": EBNF}, "not both regex and ebnf"),
        ({"json_schema": "{}", "ebnf": EBNF}, "not both json_schema and ebnf"),
        ({"ebnf": EBNF, "min_new_tokens": 1}, "min_new_tokens cannot be combined"),
        ({"stream_interval": 0}, "stream_interval must be a positive integer"),
        ({"custom_params": 3}, "custom_params must be a dict"),
        ({"sampling_seed": 1.5}, "sampling_seed must be an integer"),
        ({"seed": 2**64}, r"seed must be an integer in \[-2\*\*63, 2\*\*63\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            SamplingParams.from_kwargs(**kwargs)
    assert SamplingParams(ebnf=EBNF).grammar == GrammarSpec("ebnf", EBNF)


def test_sampling_seed_is_seed_under_sglangs_name():
    p = SamplingParams.from_kwargs(sampling_seed=7)
    assert (p.seed, p.sampling_seed) == (7, None)  # folded: the runtime reads seed, replace(seed=) works
    assert p.replace(seed=8).seed == 8 and SamplingParams(seed=7, sampling_seed=7).seed == 7
    with pytest.raises(ValueError, match="seed=1 and sampling_seed=2 differ"):
        SamplingParams(seed=1, sampling_seed=2)


def test_unimplemented_fields_are_not_implemented_errors_naming_them():
    for name, value in [("structural_tag", '{"type": "x"}'), ("beam_width", 4), ("watermark", True)]:
        with pytest.raises(NotImplementedError, match=f"{name} is not available in this runtime"):
            SamplingParams.from_kwargs(**{name: value})
        with pytest.raises(NotImplementedError, match=name):  # also when built directly and submitted
            SamplingParams(**{name: value}).check_implemented()
    SamplingParams.from_kwargs(beam_width=1, custom_params={"k": 1}).check_implemented()  # harmless ones pass


def test_translations_place_the_new_fields_where_each_api_reads_them():
    body = sglang_request({"sampling_seed": 3, "no_stop_trim": True, "logit_bias": {"5": 1.0}, "ebnf": EBNF,
                           "token_ids_logprob": (1, 2), "stop_regex": ("x",), "repetition_penalty": 1.1})
    assert body == {"sampling_params": {"sampling_seed": 3, "no_stop_trim": True, "logit_bias": {"5": 1.0},
                                        "ebnf": EBNF, "stop_regex": ["x"], "repetition_penalty": 1.1},
                    "token_ids_logprob": [1, 2]}
    kwargs = openai_request({"logit_bias": {"5": -100}, "repetition_penalty": 1.2, "sampling_seed": 4,
                             "spaces_between_special_tokens": False})
    assert kwargs == {"logit_bias": {"5": -100}, "extra_body": {"repetition_penalty": 1.2, "seed": 4,
                                                                "spaces_between_special_tokens": False}}
    for name, value in [("ebnf", EBNF), ("token_ids_logprob", (1,))]:
        with pytest.raises(ValueError, match=rf"gen\({name}=\.\.\.\)"):
            openai_request({name: value})


# ---------------------------------------------------------------------------- the sampler and stop matching
def test_repetition_penalty_and_logit_bias_maths():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])  # [1, vocab]
    counts = torch.tensor([1, 3, 0, 0], dtype=torch.int32)  # tokens 0 and 1 were output
    row = SamplerRow(SamplingParams(repetition_penalty=2.0), None, counts)
    assert apply_penalties(logits, [row]).tolist() == [[1.0, -4.0, 1.0, 0.5]]  # positive / 2, negative * 2
    bias = (torch.tensor([2, 3]), torch.tensor([-1.0, 1e38]))
    row = SamplerRow(SamplingParams(logit_bias={2: -1.0, 3: 1e38}), None, None, logit_bias=bias)
    out = apply_penalties(logits, [row])
    assert out[0, :3].tolist() == [2.0, -2.0, 0.0] and out[0, 3] == 1e30  # clamped: finite at any temperature
    plain = SamplerRow(SamplingParams(), None, None)
    assert apply_penalties(logits, [plain]) is logits  # the common path copies nothing


def test_penalties_on_a_batch_equal_each_row_alone():
    """Rows with different penalties, biases and eos blocks, penalized together, give each row's numbers as
    when it is alone, to the bit; frequency and presence subtract count-weighted and seen-weighted amounts."""
    gen = torch.Generator().manual_seed(0)
    kinds = [{}, {"frequency_penalty": 0.7}, {"presence_penalty": -0.3, "repetition_penalty": 1.3},
             {"repetition_penalty": 0.8}, {"logit_bias": {3: 2.0, 7: -1.5}},
             {"frequency_penalty": 0.2, "logit_bias": {1: 5.0}}]
    for trial in range(60):
        rows = []
        for i in range(6):
            p = SamplingParams(**kinds[(trial + 5 * i) % len(kinds)])
            counts = torch.randint(0, 3, (40,), dtype=torch.int32, generator=gen) if p.uses_penalties else None
            bias = ((torch.tensor(list(p.logit_bias)), torch.tensor(list(p.logit_bias.values())))
                    if p.logit_bias else None)
            rows.append(SamplerRow(p, None, counts, (1, 2) if i % 3 == 0 else (), logit_bias=bias))
        logits = torch.randn(6, 40, generator=gen) * 3
        together = apply_penalties(logits, rows)
        assert torch.equal(together, torch.cat([apply_penalties(logits[i : i + 1], [r]) for i, r in enumerate(rows)]))
    counts = torch.tensor([2, 0, 1], dtype=torch.int32)
    row = SamplerRow(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), None, counts)
    assert apply_penalties(torch.zeros(1, 3), [row]).tolist() == [[-1.25, 0.0, -0.75]]


def test_argmax_rows_is_torchs_argmax():
    """The greedy pick goes through numpy on the CPU: the first maximum of each row, a NaN counting as one, for
    views as well; other dtypes stay on torch."""
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    logits[1, 3] = logits[1, 30] = 1e9  # a tie: the first
    logits[2, 7] = float("nan")
    logits[3] = float("-inf")
    for x in (logits, logits[:, ::3], logits[1:4], logits.to(torch.bfloat16)):
        picked = argmax_rows(x)
        assert picked.dtype == torch.int64 and torch.equal(picked, x.argmax(dim=-1))
    assert argmax_rows(logits)[1] == 3 and argmax_rows(logits)[2] == 7


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    """Inverse-transform draws: frequencies within 1.5 points of the probabilities over 20,000 draws, a token of
    probability 0 never drawn (also trailing ones, where a draw near 1 would land), rows scaled by their own
    total (filtered rows are not renormalized), and NaN refused rather than drawn."""
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([draw(probs, [gen, gen, gen]) for _ in range(20_000)])  # [draws, 3]
    freq = torch.stack([torch.bincount(picks[:, r], minlength=5) for r in range(3)]).float() / len(picks)
    assert (freq[probs == 0] == 0).all()
    assert torch.allclose(freq, probs / probs.sum(dim=-1, keepdim=True), atol=0.015)
    with pytest.raises(RuntimeError, match="inf or nan"):
        draw(torch.tensor([[0.5, float("nan")]]), [gen])


def test_draws_are_reproducible_per_generator_in_row_order():
    params = SamplingParams(temperature=0.9, top_p=0.9)
    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(1)) * 3

    def run(seeds):
        return sample(logits, [SamplerRow(params, torch.Generator().manual_seed(s), None) for s in seeds]).tolist()

    assert run(range(5)) == run(range(5)) and run(range(5)) != run([9] * 5)
    shared = torch.Generator().manual_seed(3)
    first = sample(logits, [SamplerRow(params, shared, None) for _ in range(5)]).tolist()
    again = torch.Generator().manual_seed(3)
    assert first == [int(sample(logits[i : i + 1], [SamplerRow(params, again, None)])[0]) for i in range(5)]


def _sort_and_scatter_filter(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The filter's definition, spelled out: sort each row (ties in token order), drop by rank, scatter back."""
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    vocab = probs.shape[-1]
    rank = torch.arange(vocab)[None, :]
    drop = rank >= torch.tensor([[min(p.top_k, vocab) if p.top_k > 0 else vocab] for p in params])
    drop |= (sorted_p.cumsum(dim=-1) - sorted_p) > torch.tensor([[p.top_p] for p in params])
    drop |= sorted_p < torch.tensor([[p.min_p] for p in params]) * sorted_p[:, :1]
    drop[:, 0] = False
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))


def test_top_k_top_p_min_p_keep_what_sorting_would_keep():
    """The filter sorts only values and cuts at a threshold; it keeps the same tokens as sorting with indices,
    ties at the cut included (in token order), and leaves kept probabilities as they were."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(400):
        vocab = int(torch.randint(2, 80, (1,), generator=gen))
        logits = (torch.randint(-3, 3, (4, vocab), generator=gen).float() if trial % 2  # many ties
                  else torch.randn(4, vocab, generator=gen) * 2)
        probs = torch.softmax(logits, dim=-1)
        choice = [int(i) for i in torch.randint(0, 5, (12,), generator=gen)]
        params = [SamplingParams(top_k=(-1, 1, 2, 5, 1000)[choice[3 * r]],
                                 top_p=(1.0, 0.5, 0.9, 1e-6, 0.999)[choice[3 * r + 1]],
                                 min_p=(0.0, 0.1, 1.0, 0.5, 0.0)[choice[3 * r + 2]]) for r in range(4)]
        filtered = _filter_probs(probs, params)
        assert torch.equal(filtered > 0, _sort_and_scatter_filter(probs, params) > 0), (probs, params)
        assert torch.equal(filtered[filtered > 0], probs[filtered > 0])


def test_masked_argmax_is_the_greedy_sample_under_the_mask():
    """The one-row greedy pick under a packed grammar mask equals `sample` with the mask's bias added: random
    masks, sparse ones, ties at the top (the first allowed one wins) and a vocabulary not a multiple of 32."""
    gen = torch.Generator().manual_seed(0)
    greedy = SamplingParams(temperature=0)
    for trial in range(300):
        vocab = (4096, 1000, 33)[trial % 3]
        words = torch.randint(-2**31, 2**31 - 1, ((vocab + 31) // 32,), dtype=torch.int32, generator=gen)
        if trial % 2:
            words &= torch.randint(-2**31, 2**31 - 1, words.shape, dtype=torch.int32, generator=gen)
        logits = torch.randn(1, vocab, generator=gen)
        if trial % 5 == 0:
            logits[0, ::7] = logits.max()
        row = SamplerRow(greedy, None, None, token_bitmask=words)
        assert masked_argmax(logits[0], words) == int(sample(logits, [row])[0])


def test_stop_regex_search_is_incremental_and_streaming_holds_back_a_possible_match():
    hit = find_stop_regex("Hello there, and more", ("or", "and"), 12)
    assert (hit.text, hit.matched) == ("Hello there, ", "and")  # the earliest match, named by its pattern
    sentence_end = (r"[.!?]\s*$",)
    assert find_stop_regex("ab. cd", sentence_end, 4) is None and find_stop_regex("ab. ", sentence_end, 3)
    assert streamable_length("Hello there, an", (), ("and|or",)) == len("Hello there, ")
    assert streamable_length("Total: 12", (), (r"\d+ apples",)) == len("Total: ")
    assert streamable_length("no digits", (), (r"\d+ apples",)) == len("no digits")


def test_decode_passes_spaces_between_special_tokens_on():
    calls = []

    class FakeHF:
        def decode(self, ids, **kwargs):
            calls.append(kwargs)
            return ""

    tok = object.__new__(Tokenizer)
    tok.hf, tok._lock, tok._decoder = FakeHF(), threading.Lock(), None
    tok.decode([1], skip_special_tokens=False, spaces_between_special_tokens=False)
    tok.decode([1])
    assert calls == [{"skip_special_tokens": False, "spaces_between_special_tokens": False},
                     {"skip_special_tokens": True}]


# ---------------------------------------------------------------------------- in the engine
@pytest.fixture(scope="module")
def shared_rt():
    with sgl.Runtime(device="cpu", max_total_tokens=4096) as runtime:
        yield runtime


@pytest.fixture
def rt(shared_rt):
    """The module's runtime; after each test, no request holds KV."""
    yield shared_rt
    assert_pool_full(shared_rt)


def greedy(rt, prompt=PROMPT, n=24, **kw):
    return rt.generate(prompt, max_new_tokens=n, temperature=0, ignore_eos=True, **kw)


def test_stop_regex_cuts_the_match_and_is_never_streamed(rt):
    full = greedy(rt)["text"]
    pattern = r"[A-Za-z]+\?"  # the end of the question the model writes ("... favourite colour?")
    match = re.search(pattern, full)
    assert match is not None, full
    out = greedy(rt, stop_regex=[r"\d{3}", pattern])
    assert out["text"] == full[: match.start()]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": pattern}
    streamed = "".join(rt.generate_stream(PROMPT, max_new_tokens=24, temperature=0, ignore_eos=True,
                                          stop_regex=pattern))
    assert streamed == out["text"]
    kept = greedy(rt, stop_regex=pattern, no_stop_trim=True)
    assert kept["text"].startswith(full[: match.end()])
    assert kept["meta_info"]["finish_reason"]["matched"] == pattern


def test_stop_strings_and_stop_tokens_are_trimmed_unless_no_stop_trim(rt):
    full = greedy(rt)
    newline = rt.tokenizer.encode_plain("\n")[0]
    assert newline in full["output_ids"] and newline not in rt.tokenizer.special_ids
    cut = greedy(rt, stop_token_ids=[newline])
    assert cut["text"] == full["text"][: full["text"].index("\n")] and cut["output_ids"][-1] == newline
    kept = greedy(rt, stop_token_ids=[newline], no_stop_trim=True)
    assert kept["text"] == full["text"][: full["text"].index("\n") + 1]
    upto_stop = full["text"][: full["text"].index("What") + len("What")]
    assert greedy(rt, stop="What", no_stop_trim=True)["text"].startswith(upto_stop)


def test_repetition_penalty_and_logit_bias_change_what_is_sampled(rt):
    loop = "one one one one one one one"
    plain, penalized = greedy(rt, loop, n=16), greedy(rt, loop, n=16, repetition_penalty=1.5)
    assert greedy(rt, loop, n=16, repetition_penalty=1.0)["output_ids"] == plain["output_ids"]
    assert len(set(penalized["output_ids"])) > len(set(plain["output_ids"]))  # ' 55 67 67 67 ...' loops
    first = greedy(rt, n=4)["output_ids"]
    banned = greedy(rt, n=4, logit_bias={str(first[0]): -100})["output_ids"]
    assert first[0] not in banned
    forced = rt.generate(PROMPT, max_new_tokens=3, temperature=1.0, seed=1, logit_bias={"65": 100})
    assert forced["output_ids"] == [65, 65, 65]


def test_sampling_seed_reproduces_seed(rt):
    kw = {"max_new_tokens": 12, "temperature": 1.0, "ignore_eos": True}
    by_sglang_name = rt.generate(PROMPT, sampling_seed=11, **kw)["output_ids"]
    assert by_sglang_name == rt.generate(PROMPT, seed=11, **kw)["output_ids"]


def test_ebnf_constrains_the_output(rt):
    for seed in range(3):
        out = rt.generate(PROMPT, max_new_tokens=12, temperature=1.0, seed=seed, ebnf=EBNF)
        assert re.fullmatch(r"(yes|no), \d\d?", out["text"]), out["text"]
    with pytest.raises(ValueError, match=re.escape("invalid ebnf 'root ::= (\"a\"'")):
        rt.generate(PROMPT, max_new_tokens=2, ebnf='root ::= ("a"')


def test_token_ids_logprob_at_every_position_in_sglangs_shapes(rt):
    ids = rt.tokenizer.encode(PROMPT)
    probe = [*sorted(set(ids))[:6], 65]
    out = rt.generate(PROMPT, max_new_tokens=5, temperature=0, ignore_eos=True, return_logprob=True,
                      logprob_start_len=0, top_logprobs_num=2, token_ids_logprob=probe)
    meta = out["meta_info"]
    assert len(meta["output_token_ids_logprobs"]) == meta["completion_tokens"] == 5
    assert all([t for _, t in pos] == probe for pos in meta["output_token_ids_logprobs"])
    assert len(meta["input_token_ids_logprobs"]) == len(meta["input_token_logprobs"]) == len(ids)
    assert meta["input_token_ids_logprobs"][0] is None  # as input_token_logprobs: the first token has none
    for (logprob, token), pos in zip(meta["input_token_logprobs"][1:], meta["input_token_ids_logprobs"][1:]):
        if token in probe:
            assert dict((t, v) for v, t in pos)[token] == pytest.approx(logprob, abs=1e-5)
    plain = rt.generate(PROMPT, max_new_tokens=2, temperature=0, return_logprob=True)["meta_info"]
    assert "output_token_ids_logprobs" not in plain  # only when asked for, as SGLang


def test_ids_outside_the_vocabulary_are_refused_before_submission(rt):
    vocab = rt.model_info().vocab_size
    for kwargs, name in [({"logit_bias": {vocab: 1.0}}, "logit_bias"),
                         ({"stop_token_ids": [vocab + 5]}, "stop_token_ids"),
                         ({"token_ids_logprob": [-1], "return_logprob": True}, "token_ids_logprob"),
                         ({"top_logprobs_num": vocab + 1, "return_logprob": True}, "top_logprobs_num")]:
        with pytest.raises(ValueError, match=name):
            rt.generate(PROMPT, max_new_tokens=2, **kwargs)
    with pytest.raises(NotImplementedError, match="beam_width"):
        rt.submit(PROMPT, SamplingParams(beam_width=2))
    assert greedy(rt, n=3)["meta_info"]["finish_reason"]["type"] == "length"  # still serving


def test_stream_interval_batches_the_streamed_text(rt):
    kw = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    pieces = list(rt.generate_stream(PROMPT, stream_interval=4, **kw))
    every = list(rt.generate_stream(PROMPT, **kw))
    assert "".join(pieces) == "".join(every) and len(pieces) <= 4 < len(every)


@pytest.mark.parametrize("pattern", [r"[.!?]\s*$", r"\d+", r"(?i)the\b", r"\bis\b", r"(?<=Q):", r"\s{2}", r"[A-Z]\w*\?"])
def test_stop_regex_streams_exactly_the_text_it_returns(rt, pattern):
    for seed in range(3):
        kw = {"max_new_tokens": 32, "temperature": 1.0, "seed": seed, "stop_regex": pattern}
        out = rt.generate(PROMPT, **kw)
        assert "".join(rt.generate_stream(PROMPT, **kw)) == out["text"]
        if out["meta_info"]["finish_reason"] == {"type": "stop", "matched": pattern}:
            kept = rt.generate(PROMPT, no_stop_trim=True, **kw)["text"]  # the same sample, untrimmed
            assert re.compile(pattern).search(kept, len(out["text"])).start() == len(out["text"])
