"""One OpenAI chat completion: the plan (prompt through the model's own chat template, sampling parameters, the
tool-call and reasoning formats in play), the message of a finished sample, and the deltas of a streamed one.

Tools: `tool_choice` "auto" lets the model call (its output is parsed in the model family's format), "none" hides
the tools, "required" or a named function constrains the output to calls by a grammar built from the tools'
schemas, so they always parse. Reasoning: with a reasoning format, `<think>...</think>` goes to
`reasoning_content` (a template that opens the block itself counts the output from its start as reasoning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sglbench.lang.reasoning import ReasoningFormat, ReasoningStream, prompt_opens_reasoning, split_reasoning
from sglbench.runtime.sampling_params import GRAMMAR_KINDS, SamplingParams, from_openai
from sglbench.runtime.tokenizer import Tokenizer
from sglbench.server.chat_messages import encode_chat_prompt
from sglbench.server.openai_shapes import chat_logprobs, finish_reason, response_format_constraint
from sglbench.server.protocol import ChatCompletionRequest
from sglbench.server.tool_calls import ToolCallFormat, check_tools

MAX_TOP_LOGPROBS = 20  # the OpenAI API's bound
SPECIAL_TOKEN_MARKERS = frozenset({"llama3", "mistral"})  # formats whose call marker (<|python_tag|>, [TOOL_CALLS])
                                                          # is a special token, dropped by skip_special_tokens


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request runs: its prompt ids and parameters, and how its output is read back."""

    prompt_ids: list[int]
    params: SamplingParams
    tools: list[dict] = field(default_factory=list)  # offered to the model (empty with tool_choice "none")
    tool_format: ToolCallFormat | None = None  # parses calls out of the output when tools are offered
    reasoning: ReasoningFormat | None = None  # splits reasoning_content off when set
    reasoning_opened: bool = False  # the prompt ended inside the reasoning block
    top_logprobs: int = 0
    logprobs: bool = False
    parallel_tool_calls: bool = True  # False: only the first call the model writes is answered
    constrained_calls: bool = False  # tool_choice "required" or named: the grammar guarantees well-formed calls


def _tool_choice(body: ChatCompletionRequest) -> str | dict:
    if body.tool_choice is None:
        return "auto" if body.tools else "none"
    if isinstance(body.tool_choice, str) and body.tool_choice not in ("auto", "none", "required"):
        raise ValueError(f"tool_choice must be 'auto', 'none', 'required' or "
                         f"{{'type': 'function', 'function': {{'name': ...}}}}, got {body.tool_choice!r}")
    return body.tool_choice


def _logprob_fields(body: ChatCompletionRequest) -> dict[str, Any]:
    if body.top_logprobs is not None and not body.logprobs:
        raise ValueError("top_logprobs needs logprobs=true")
    top = body.top_logprobs or 0
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top}")
    return {"return_logprob": True, "top_logprobs_num": top} if body.logprobs else {}


def plan_chat(body: ChatCompletionRequest, tokenizer: Tokenizer, context_length: int,
              tool_format: ToolCallFormat | None, reasoning: ReasoningFormat | None) -> ChatPlan:
    """Render and tokenize the prompt and build the sampling parameters; ValueError naming what is wrong.
    Runs off the event loop (templates and tokenizers take time on long conversations)."""
    choice = _tool_choice(body)
    tools = list(body.tools or []) if choice != "none" else []
    constraint = response_format_constraint(body.response_format)
    if tools:
        check_tools(tools, choice)
        if tool_format is None:
            raise ValueError("tools need a tool-call format, and none is known for this model: start "
                             "sglbench serve with --tool-call-parser (hermes, llama3 or mistral)")
        if choice != "auto":
            constraint = {**constraint, "ebnf": tool_format.grammar(tools, choice, body.parallel_tool_calls)}
    given = [kind for kind in GRAMMAR_KINDS if getattr(body, kind, None) is not None]
    if len(constraint) > 1 or (constraint and given):
        asked = [*given, *(["response_format"] if body.response_format else []), *(["tool_choice"] if tools and
                                                                                 choice != "auto" else [])]
        raise ValueError(f"{' and '.join(asked)} each constrain the output: give one")
    prompt_ids = encode_chat_prompt(tokenizer, body.messages, tools=tools or None,
                                    template_kwargs=body.chat_template_kwargs,
                                    continue_final_message=body.continue_final_message)
    prompt_tail = tokenizer.decode(prompt_ids[-16:], skip_special_tokens=False)  # where the reasoning may open
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if limit is None:  # as the OpenAI API: up to the context length
        limit = max(1, context_length - len(prompt_ids))
    params = from_openai(body.model_dump(), max_new_tokens=limit, **_logprob_fields(body), **constraint)
    if tools and tool_format.name in SPECIAL_TOKEN_MARKERS:
        params = params.replace(skip_special_tokens=False)  # the call marker is a special token: keep its text
    separate = reasoning if (reasoning is not None and body.separate_reasoning) else None
    return ChatPlan(prompt_ids, params, tools, tool_format if tools else None, separate,
                    separate is not None and prompt_opens_reasoning(prompt_tail, separate),
                    body.top_logprobs or 0, body.logprobs, body.parallel_tool_calls,
                    bool(tools) and choice != "auto")


def chat_message(plan: ChatPlan, result: dict) -> tuple[dict, bool]:
    """The assistant message of one finished sample, and whether it is tool calls."""
    text, message = result["text"], {"role": "assistant"}
    if plan.reasoning is not None:
        reasoning, text = split_reasoning(text, plan.reasoning, opened=plan.reasoning_opened)
        message["reasoning_content"] = reasoning or None
    calls = []
    if plan.tool_format is not None:
        text, calls = plan.tool_format.parse(text, plan.tools)
        calls = calls if plan.parallel_tool_calls else calls[:1]
    message["content"] = text if (text or not calls) else None
    if calls:
        message["tool_calls"] = [call.to_openai() for call in calls]
    return message, bool(calls)


def chat_choice(plan: ChatPlan, index: int, result: dict, token_text) -> dict:
    """One choice of a non-streamed response."""
    message, called = chat_message(plan, result)
    meta = result["meta_info"]
    logprobs = (chat_logprobs(meta.get("output_token_logprobs", []), meta.get("output_top_logprobs", []),
                              plan.top_logprobs, token_text) if plan.logprobs else None)
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason(meta, called),
            "matched_stop": (meta.get("finish_reason") or {}).get("matched")}


class ChatChoiceStream:
    """The deltas of one streamed sample: text pieces in, OpenAI `delta` dicts out (reasoning_content, content,
    tool_calls), with text that may still turn into a marker held back until it is decided."""

    def __init__(self, plan: ChatPlan, stream_reasoning: bool = True):
        self.plan = plan
        self.reasoning = (ReasoningStream(plan.reasoning, opened=plan.reasoning_opened)
                          if plan.reasoning is not None else None)
        # Calls under a grammar are well-formed: stream their arguments as they come; with "auto" a call is
        # sent whole once it parses (a malformed one stays text).
        self.tools = (plan.tool_format.stream(plan.tools, incremental=plan.constrained_calls)
                      if plan.tool_format is not None else None)
        self.stream_reasoning = stream_reasoning
        self.held_reasoning = ""
        self.called = False

    def _deltas(self, reasoning: str, content: str, final: bool) -> list[dict]:
        out: list[dict] = []
        if reasoning:
            if self.stream_reasoning:
                out.append({"reasoning_content": reasoning})
            else:
                self.held_reasoning += reasoning
        if final and self.held_reasoning:
            out.append({"reasoning_content": self.held_reasoning})
            self.held_reasoning = ""
        calls: list = []
        if self.tools is not None:
            text, calls = self.tools.feed(content) if content else ("", [])
            if final:
                rest, more = self.tools.finish()
                text, calls = text + rest, [*calls, *more]
            content = text
        if content:
            out.append({"content": content})
        calls = calls if self.plan.parallel_tool_calls else [d for d in calls if d.index == 0]
        if calls:
            self.called = True
            out.append({"tool_calls": [delta.to_openai() for delta in calls]})
        return out

    def feed(self, piece: str) -> list[dict]:
        if self.reasoning is None:
            return self._deltas("", piece, final=False)
        return self._deltas(*self.reasoning.feed(piece), final=False)

    def finish(self) -> list[dict]:
        if self.reasoning is None:
            return self._deltas("", "", final=True)
        return self._deltas(*self.reasoning.finish(), final=True)
