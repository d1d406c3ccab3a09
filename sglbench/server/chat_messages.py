"""OpenAI chat messages, as the openai SDK, LangChain and LiteLLM send them, turned into the dicts Hugging Face
chat templates read, and rendered with the model's own template (tools and template kwargs included).

Choices: `developer` becomes `system` (as OpenAI treats it for models without a developer role); the legacy
`function` role becomes a `tool` message and a legacy assistant `function_call` one tool call, so old clients keep
working. Text content parts are joined with " " as SGLang does for templates that read a string (vLLM joins with
"\\n"); other parts (images, audio, files) are refused: this server serves text-only models. Tool-call arguments
sent as a JSON string are decoded into an object, because templates write `arguments | tojson`.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TEXT_PARTS = ("text", "input_text")  # input_text: the Responses API's spelling
_MEDIA_PARTS = ("image_url", "input_image", "input_audio", "audio_url", "video_url", "file", "input_file")
PART_JOINER = " "
# Names a request's template kwargs may not take: render_chat_prompt's own arguments.
_OWN_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "tools", "continue_final_message"})


class ChatTemplateTokenizer(Protocol):
    """What render_chat_prompt needs of a tokenizer (sglbench.runtime.tokenizer.Tokenizer is one)."""

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, continue_final_message: bool = False,
                            **template_kwargs: Any) -> str: ...

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools: list[dict] | None = None,
                    continue_final_message: bool = False, **template_kwargs: Any) -> list[int]: ...


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _text_of_parts(parts: list, where: str, role: str) -> str:
    texts = []
    for j, part in enumerate(parts):
        at = f"{where}[{j}]"
        if not isinstance(part, dict):
            raise ValueError(f"{at}: a content part must be an object with a 'type', got {_type_name(part)}")
        kind = part.get("type")
        if kind in _TEXT_PARTS or (kind == "refusal" and role == "assistant"):
            field = "refusal" if kind == "refusal" else "text"
            text = part.get(field)
            if not isinstance(text, str):
                raise ValueError(f"{at}.{field}: must be a string, got {_type_name(text)}")
            texts.append(text)
        elif kind in _MEDIA_PARTS:
            raise ValueError(f"{at}: type {kind!r} is not supported: this server serves a text-only model")
        else:
            raise ValueError(f"{at}: unknown content part type {kind!r} (expected 'text')")
    return PART_JOINER.join(texts)


def _content(message: dict, where: str, role: str, may_be_null: bool) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _text_of_parts(content, f"{where}.content", role)
    if content is None and may_be_null:
        return ""
    expected = "a string, null" if may_be_null else "a string"
    raise ValueError(f"{where}.content: must be {expected} or a list of content parts, got {_type_name(content)}")


def _arguments(arguments: object, where: str) -> object:
    """A call's arguments as templates want them: a JSON object string decoded, anything else that is text kept."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise ValueError(f"{where}: must be a JSON string or an object, got {_type_name(arguments)}")
    try:
        decoded = json.loads(arguments)
    except ValueError:
        return arguments
    return decoded if isinstance(decoded, dict) else arguments


def _tool_call(call: object, where: str) -> dict:
    if not isinstance(call, dict):
        raise ValueError(f"{where}: a tool call must be an object, got {_type_name(call)}")
    kind = call.get("type") or "function"
    if kind != "function":
        raise ValueError(f"{where}.type: only 'function' tool calls are supported, got {kind!r}")
    return {**_optional_string(call, "id", where), "type": "function",
            "function": _function(call.get("function"), f"{where}.function")}


def _function(function: object, where: str) -> dict:
    """{"name", "arguments"} of a called function, name first (Mistral's template writes the dict as JSON)."""
    if not isinstance(function, dict):
        raise ValueError(f"{where}: must be an object with 'name' and 'arguments', got {_type_name(function)}")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: must be a non-empty string, got {name!r}")
    return {"name": name, "arguments": _arguments(function.get("arguments", "{}"), f"{where}.arguments")}


def _tool_calls(message: dict, where: str) -> list[dict]:
    calls = message.get("tool_calls")
    legacy = message.get("function_call")
    if legacy is not None:
        if calls:
            raise ValueError(f"{where}: give tool_calls or the legacy function_call, not both")
        return [{"type": "function", "function": _function(legacy, f"{where}.function_call")}]
    if calls is None:
        return []
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls: must be a list, got {_type_name(calls)}")
    return [_tool_call(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls)]


def _optional_string(message: dict, key: str, where: str) -> dict[str, str]:
    value = message.get(key)
    if value is None:
        return {}
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string, got {_type_name(value)}")
    return {key: value}


def _normalize_message(message: object, index: int) -> dict:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ValueError(f"{where}: a message must be an object with a 'role', got {_type_name(message)}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role: must be one of {', '.join(ROLES)}; got {role!r}")
    if role == "assistant":
        calls = _tool_calls(message, where)
        out = {"role": role, "content": _content(message, where, role, may_be_null=bool(calls))}
        key = "reasoning_content" if message.get("reasoning_content") is not None else "reasoning"  # vLLM's name
        reasoning = message.get(key)
        if reasoning is not None:
            if not isinstance(reasoning, str):
                raise ValueError(f"{where}.{key}: must be a string, got {_type_name(reasoning)}")
            out["reasoning_content"] = reasoning  # Qwen3's template reads it
        if calls:
            out["tool_calls"] = calls  # only when present: Llama 3's template tests `'tool_calls' in message`
        return {**out, **_optional_string(message, "name", where)}
    if role in ("tool", "function"):
        return {"role": "tool", "content": _content(message, where, role, may_be_null=True),
                **_optional_string(message, "tool_call_id", where), **_optional_string(message, "name", where)}
    return {"role": "system" if role == "developer" else role, "content": _content(message, where, role, False),
            **_optional_string(message, "name", where)}


def normalize_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages -> fresh dicts with the keys chat templates read (role, content as one string, name,
    tool_calls with decoded arguments, tool_call_id, reasoning_content); fields a client echoes back that no
    template reads are dropped. ValueError naming the message index and the field at fault."""
    if not isinstance(messages, list):
        raise ValueError(f"messages: must be a list of messages, got {_type_name(messages)}")
    if not messages:
        raise ValueError("messages: must hold at least one message")
    return [_normalize_message(message, i) for i, message in enumerate(messages)]


def _template_inputs(messages: list[dict], tools: list[dict] | None, template_kwargs: dict[str, Any] | None,
                     continue_final_message: bool) -> tuple[list[dict], dict[str, Any]]:
    """Checked, normalized messages and the template kwargs of a chat request (ValueError naming the field)."""
    normalized = normalize_messages(messages)
    if continue_final_message and normalized[-1]["role"] != "assistant":
        raise ValueError(f"continue_final_message needs an assistant message last; messages[{len(normalized) - 1}] "
                         f"is a {normalized[-1]['role']!r} message")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(tool, dict) for tool in tools)):
        raise ValueError("tools: must be a list of tool objects")
    if template_kwargs is not None and not isinstance(template_kwargs, dict):
        raise ValueError(f"chat_template_kwargs: must be an object, got {_type_name(template_kwargs)}")
    template_kwargs = dict(template_kwargs or {})
    clash = sorted(set(template_kwargs) & _OWN_ARGUMENTS)
    if clash:
        raise ValueError(f"chat_template_kwargs may not set {clash}: the request sets them in its own fields")
    return normalized, template_kwargs


def render_chat_prompt(tokenizer: ChatTemplateTokenizer, messages: list[dict], tools: list[dict] | None = None,
                       template_kwargs: dict[str, Any] | None = None, continue_final_message: bool = False) -> str:
    """The prompt text of an OpenAI chat request through the model's own chat template. tools are OpenAI tool dicts
    (`{"type": "function", "function": {...}}`, what HF templates read); template_kwargs are the request's
    chat_template_kwargs (e.g. `{"enable_thinking": False}`); continue_final_message leaves the final assistant
    message open for the model to continue instead of adding a generation prompt."""
    normalized, kwargs = _template_inputs(messages, tools, template_kwargs, continue_final_message)
    return tokenizer.apply_chat_template(normalized, add_generation_prompt=not continue_final_message,
                                         tools=tools or None, continue_final_message=continue_final_message, **kwargs)


def encode_chat_prompt(tokenizer: ChatTemplateTokenizer, messages: list[dict], tools: list[dict] | None = None,
                       template_kwargs: dict[str, Any] | None = None, continue_final_message: bool = False
                       ) -> list[int]:
    """The prompt ids of the same rendering as `render_chat_prompt`, with control tokens inside the messages and
    tools encoded as text (see `Tokenizer.encode_chat`): what the server sends to the engine."""
    normalized, kwargs = _template_inputs(messages, tools, template_kwargs, continue_final_message)
    return tokenizer.encode_chat(normalized, add_generation_prompt=not continue_final_message,
                                 tools=tools or None, continue_final_message=continue_final_message, **kwargs)
