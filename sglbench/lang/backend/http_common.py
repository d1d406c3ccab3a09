"""Helpers for the backends that talk to a remote server over HTTP (`RuntimeEndpoint`, `OpenAI`): a call's
timings on this machine's clock, and the served model's tokenizer and chat template loaded on this side.
"""

from __future__ import annotations

from typing import Any

from sglbench.lang.chat_template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, chat_template_from_tokenizer

_TIMINGS = ("arrived", "scheduled", "first_token", "finished")


def client_timings(meta: dict, sent: float, first: float | None, received: float) -> dict:
    """meta with its timings on this machine's clock: a server's own timings (sglbench serve reports
    them) are shifted so that it received the request when it was sent; without them, the client's
    send / first chunk / receive times stand in."""
    out = dict(meta)
    if out.get("arrived") is None:
        out.update(arrived=sent, first_token=first, finished=received)
    else:
        shift = sent - out["arrived"]
        for key in _TIMINGS:
            if out.get(key) is not None:
                out[key] += shift
    out.setdefault("e2e_latency", received - sent)
    return out


def load_tokenizer(path: str) -> Any:
    """A Hugging Face tokenizer from a local folder (or a hub id), for chat templates and logprob text."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def resolve_chat_template(chat_template: ChatTemplate | str | None, tokenizer: Any) -> ChatTemplate:
    """A given ChatTemplate; one derived from a tokenizer folder (a str; "default" is SGLang's plain
    template); else the tokenizer's own, else the plain default."""
    if isinstance(chat_template, ChatTemplate):
        return chat_template
    if chat_template == "default":
        return DEFAULT_CHAT_TEMPLATE
    if isinstance(chat_template, str):
        return chat_template_from_tokenizer(load_tokenizer(chat_template))
    if chat_template is not None:
        raise TypeError(f"chat_template must be a ChatTemplate or a tokenizer folder, "
                        f"got {type(chat_template).__name__}")
    return chat_template_from_tokenizer(tokenizer) if tokenizer is not None else DEFAULT_CHAT_TEMPLATE
