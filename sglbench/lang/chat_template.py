"""Chat templates as role prefix/suffix pairs, derived from a tokenizer's own template, and the transcript
that applies them as a program adds role blocks.

A Hugging Face template is a Jinja program over a message list; a program instead writes text as it goes.
Rendering sentinel messages recovers, per role, the text before and after a message's content. The
leading bos text is dropped: the runtime adds bos when it tokenizes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_SENTINEL = "\u2063SGLBENCH-CONTENT\u2063"

Render = Callable[[list[dict], bool], str]  # (messages, add_generation_prompt) -> text


@dataclass(frozen=True)
class ChatTemplate:
    """Per-role (prefix, suffix) around a message's content, e.g. ("<|user|>\\n", "<|end|>\\n")."""

    name: str
    role_prefix_and_suffix: Mapping[str, tuple[str, str]]
    default_system_prompt: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role_prefix_and_suffix", MappingProxyType(dict(self.role_prefix_and_suffix)))

    def get_prefix_and_suffix(self, role: str) -> tuple[str, str]:
        try:
            return self.role_prefix_and_suffix[role]
        except KeyError:
            raise ValueError(
                f"chat template {self.name!r} has no role {role!r}; it has {sorted(self.role_prefix_and_suffix)}"
            ) from None


# SGLang's plain template, for models that ship none.
DEFAULT_CHAT_TEMPLATE = ChatTemplate(
    "default", {"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"), "assistant": ("ASSISTANT:", "\n")},
)


def _split(block: str, what: str) -> tuple[str, str]:
    at = block.find(_SENTINEL)
    if at < 0 or block.find(_SENTINEL, at + 1) >= 0:
        raise ValueError(f"the chat template does not render a {what} message's content exactly once")
    return block[:at], block[at + len(_SENTINEL):]


def derive_chat_template(render: Render, bos_text: str | None, name: str = "tokenizer") -> ChatTemplate:
    """Role prefixes/suffixes of a template, each rendered in context (system first, then user, then
    assistant); a template that rejects system messages gets no system role. ValueError if the
    template is not incremental (earlier messages' text changes when one is added)."""

    def text(messages: list[dict]) -> str:
        out = render(messages, False) if messages else ""
        return out[len(bos_text):] if bos_text and out.startswith(bos_text) else out

    def block(history: list[dict], role: str) -> tuple[str, str]:
        before, after = text(history), text([*history, {"role": role, "content": _SENTINEL}])
        if not after.startswith(before):
            raise ValueError(f"the chat template rewrites earlier messages when a {role} message follows")
        return _split(after[len(before):], role)

    roles: dict[str, tuple[str, str]] = {}
    history: list[dict] = []
    try:
        roles["system"] = block([], "system")
        history = [{"role": "system", "content": "S"}]
    except Exception as exc:  # e.g. Jinja's raise_exception in templates without a system role
        logger.info("chat template %s has no usable system role (%s)", name, exc)
    roles["user"] = block(history, "user")
    roles["assistant"] = block([*history, {"role": "user", "content": "U"}], "assistant")
    return ChatTemplate(name, roles, default_system_prompt=_default_system(text, roles))


def _default_system(text: Callable[[list[dict]], str], roles: dict[str, tuple[str, str]]) -> str | None:
    """The system message a template inserts when a conversation starts without one (e.g. Qwen2's)."""
    if "system" not in roles:
        return None
    rendered = text([{"role": "user", "content": _SENTINEL}])
    user_prefix = roles["user"][0]
    before = rendered[: rendered.find(_SENTINEL)]
    if not before.endswith(user_prefix):
        return None
    head = before[: len(before) - len(user_prefix)]
    sys_prefix, sys_suffix = roles["system"]
    if head and head.startswith(sys_prefix) and head.endswith(sys_suffix) and len(head) > len(sys_prefix + sys_suffix):
        return head[len(sys_prefix): len(head) - len(sys_suffix)]
    return None


def chat_template_from_tokenizer(hf_tokenizer) -> ChatTemplate:
    """The tokenizer's own template as prefix/suffix pairs; SGLang's plain default when it has none
    or when its template cannot be split per role."""
    if not getattr(hf_tokenizer, "chat_template", None):
        return DEFAULT_CHAT_TEMPLATE

    def render(messages: list[dict], add_generation_prompt: bool) -> str:
        return hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    name = getattr(hf_tokenizer, "name_or_path", "") or "tokenizer"
    try:
        return derive_chat_template(render, getattr(hf_tokenizer, "bos_token", None), name=name)
    except ValueError as exc:
        logger.warning("cannot derive role prefixes from %s's chat template (%s); using the default", name, exc)
        return DEFAULT_CHAT_TEMPLATE


@dataclass
class Transcript:
    """A program's text plus the chat messages its role blocks form. Not thread-safe: one owner."""

    template: ChatTemplate
    text: str = ""
    messages: list[dict] = field(default_factory=list)
    role: str | None = None
    role_begin: int = 0  # where the open role's content starts in text

    def fill(self, value: str) -> None:
        self.text += value

    def begin_role(self, role: str) -> None:
        if self.role is not None:
            raise ValueError(f"cannot begin role {role!r} inside the open role {self.role!r} (roles do not nest)")
        prefix, _ = self.template.get_prefix_and_suffix(role)
        if not self.messages and role != "system" and self.template.default_system_prompt:
            self.begin_role("system")
            self.fill(self.template.default_system_prompt)
            self.end_role("system")
        self.fill(prefix)
        self.role, self.role_begin = role, len(self.text)

    def end_role(self, role: str) -> None:
        if self.role != role:
            raise ValueError(f"cannot end role {role!r}: the open role is {self.role!r}")
        _, suffix = self.template.get_prefix_and_suffix(role)
        self.messages.append({"role": role, "content": self.text[self.role_begin:]})
        self.fill(suffix)
        self.role = None

    def copy(self) -> Transcript:
        return Transcript(self.template, self.text, [dict(m) for m in self.messages], self.role, self.role_begin)
