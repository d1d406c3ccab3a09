"""The HTTP client backends stay light (no torch), and the select/logprob helpers they share with the
in-process backend (`sglbench.lang.backend.scoring`) behave as each backend did on its own."""

import subprocess
import sys

from sglbench.lang.backend.scoring import decide, logprobs_with_text, mean_logprob
from sglbench.lang.choices import TokenLengthNormalized, UnconditionalLikelihoodNormalized


def test_http_clients_do_not_import_torch():
    code = ("import sys, sglbench.lang.backend.endpoint, sglbench.lang.backend.openai_backend, "
            "sglbench.lang.backend.prompt_tree; assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_mean_logprob_skips_missing_and_is_minus_inf_for_none():
    assert mean_logprob([(None, 1), (-1.0, 2), (-3.0, 3)]) == -2.0
    assert mean_logprob([(None, 1)]) == float("-inf")
    assert mean_logprob([]) == float("-inf")


def test_logprobs_with_text_tuples_json_lists_and_top_logprob_rows():
    decode = {1: "a", 2: "b", 3: "c"}.__getitem__
    assert logprobs_with_text([(None, 1), (-0.5, 2)], decode) == [(None, 1, "a"), (-0.5, 2, "b")]
    assert logprobs_with_text([[-0.5, 2]], decode) == [(-0.5, 2, "b")]  # as JSON sends them
    top = [[(-0.1, 3), (-2.0, 1)], [], [[-0.2, 2]]]  # one row per position; a row may be empty
    assert logprobs_with_text(top, decode) == [[(-0.1, 3, "c"), (-2.0, 1, "a")], [], [(-0.2, 2, "b")]]


def test_decide_meta_counts_scored_requests_and_drops_logprobs():
    input_lps = [[(-2.0, 1)], [(-0.5, 2), (-1.5, 3)]]
    scored = [{"prompt_tokens": 5, "cached_tokens": 4, "input_token_logprobs": input_lps[0]},
              {"prompt_tokens": 6, "cached_tokens": None, "input_token_logprobs": input_lps[1]}]
    commit = {"prompt_tokens": 4, "cached_tokens": 0}
    decision = decide(["x", "y"], TokenLengthNormalized(), input_lps, None, scored, [commit, *scored])
    assert decision.decision == "y"
    meta = decision.meta_info
    assert meta["normalized_prompt_logprobs"] == [-2.0, -1.0]
    assert (meta["prompt_tokens"], meta["cached_tokens"], meta["completion_tokens"]) == (11, 4, 0)
    assert meta["requests"] == [commit, {"prompt_tokens": 5, "cached_tokens": 4},
                                {"prompt_tokens": 6, "cached_tokens": None}]


def test_decide_passes_unconditional_logprobs():
    input_lps = [[(-1.0, 1)], [(-1.0, 2)]]
    unconditional = [[(-3.0, 1)], [(-0.5, 2)]]  # y is as likely without the prompt: x gains more from it
    decision = decide(["x", "y"], UnconditionalLikelihoodNormalized(), input_lps, unconditional, [], [])
    assert decision.decision == "x"
