"""How the backends turn scored choices into a select's decision, and token ids in logprobs into text: pure
functions shared by the in-process runtime and the HTTP backends, so that they decide and report alike.
"""

from __future__ import annotations

from collections.abc import Callable

from sglbench.lang.choices import ChoicesDecision, ChoicesSamplingMethod, TokenLogprobs


def mean_logprob(token_logprobs: TokenLogprobs) -> float:
    """The mean of the tokens' logprobs (those that have one); -inf for none."""
    values = [t[0] for t in token_logprobs if t[0] is not None]
    return sum(values) / len(values) if values else float("-inf")


def logprobs_with_text(logprobs: list, decode: Callable[[int], str]) -> list:
    """(logprob, id) -> (logprob, id, decode(id)), also inside a position's top-logprob list."""
    out: list = []
    for item in logprobs:
        if not item or isinstance(item[0], (list, tuple)):  # a position's top-logprob list
            out.append(logprobs_with_text(item, decode))
        else:
            out.append((item[0], item[1], decode(item[1])))
    return out


def decide(choices: list[str], choices_method: ChoicesSamplingMethod, input_lps: list[TokenLogprobs],
           unconditional: list[TokenLogprobs] | None, scored_metas: list[dict],
           requests: list[dict]) -> ChoicesDecision:
    """The select's decision by choices_method from each choice's token logprobs in context (input_lps) and,
    when the method asks, without the prompt (unconditional). Its meta_info adds the token counts of the
    requests that scored the choices in context (scored_metas) and every request made (requests), less
    their logprobs."""
    decision = choices_method(
        choices=list(choices), normalized_prompt_logprobs=[mean_logprob(lps) for lps in input_lps],
        input_token_logprobs=input_lps, output_token_logprobs=[[] for _ in choices],
        unconditional_token_logprobs=unconditional,
    )
    meta = {
        **decision.meta_info,
        "prompt_tokens": sum(m["prompt_tokens"] for m in scored_metas),
        "cached_tokens": sum(m.get("cached_tokens") or 0 for m in scored_metas),
        "completion_tokens": 0,
        "requests": [{k: v for k, v in r.items() if "logprobs" not in k} for r in requests],
    }
    return ChoicesDecision(decision.decision, meta)
