r"""LMQL (0.7) as a peer: every workload as LMQL queries on an in-process `local:` transformers model.

Each program is a coroutine of LMQL queries (prompt text with `[HOLES]` and `where` constraints:
`len(TOKENS(X)) < n` for max_tokens, `STOPS_BEFORE` for a stop string, `X in choices` for select, `REGEX`
for the grade); a fork is `asyncio.gather` over the branches' queries, and the whole batch is gathered at
once, so LMQL's model server batches what is pending. Chat and ReAct are one query each, their turns and
steps a loop inside it. Prompts are the text sglbench sends (`prompts`). select is decoded under
constraints. LMQL has no way to run past eos, and its `REGEX` constraint did not decode the city-record
regex (one record of `json-regex` came out as '{\n}' after 78 s; smaller regexes decode at 5-16 s a record),
so those are not expressible.

Compatibility: LMQL passes the model config's `eos_token_id` to `generate` as pad_token_id too, which
fails when a checkpoint lists several eos ids (the default model's [1, 6]: "'<' not supported between
instances of 'list' and 'int'"); the model is then loaded with `eos_token_id` set to the tokenizer's
(a `from_pretrained` config override, the documented way to pass loader arguments through lmql.model),
and the other eos tokens end a hole by their text (`STOPS_BEFORE`). LMQL keeps token masks on disk keyed
by the model's path, which go stale when a checkpoint is retrained in place with a new vocabulary (holes
then decode text outside their choices): its cache folder is keyed by the tokenizer's content instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmql
import torch

from sglbench.bench.paper import chat, llm_judge, mmlu, tree_of_thought
from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.peers import prompts
from sglbench.bench.paper.peers.base import PeerOutput, PeerSystem
from sglbench.lang.chat_template import chat_template_from_tokenizer


@lmql.query
async def _free(prompt, limit, end):
    '''lmql
    "{prompt}[TEXT]" where len(TOKENS(TEXT)) < limit and STOPS_BEFORE(TEXT, end)
    return TEXT
    '''


@lmql.query
async def _choose(prompt, choices):
    '''lmql
    "{prompt}[ANSWER]" where ANSWER in choices
    return ANSWER
    '''


@lmql.query
async def _regex(prompt, pattern):
    '''lmql
    "{prompt}[TEXT]" where REGEX(TEXT, pattern)
    return TEXT
    '''


@lmql.query
async def _chat(history, turns, limit, close, end):
    '''lmql
    answers = []
    "{history}"
    for turn in turns:
        "{turn}[ANSWER]" where len(TOKENS(ANSWER)) < limit and STOPS_BEFORE(ANSWER, end)
        "{close}"
        answers.append(ANSWER)
    return answers
    '''


@lmql.query
async def _react(start, observations, thought_limit, action_limit, stop, end):
    '''lmql
    steps = []
    "{start}"
    for i, observation in enumerate(observations):
        "Thought {i + 1}:[THOUGHT]" where STOPS_BEFORE(THOUGHT, stop) and STOPS_BEFORE(THOUGHT, end) and len(TOKENS(THOUGHT)) < thought_limit
        "\\nAction {i + 1}:[ACTION]" where STOPS_BEFORE(ACTION, stop) and STOPS_BEFORE(ACTION, end) and len(TOKENS(ACTION)) < action_limit
        "\\nObservation {i + 1}: {observation}\\n"
        steps.append((THOUGHT, ACTION))
    return steps
    '''


def _config_eos(model_path: str) -> list[int]:
    eos = json.loads((Path(model_path) / "config.json").read_text()).get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])


def _cache_per_tokenizer(model_path: str) -> None:
    """Point LMQL's disk cache (token masks, keyed by the model's path) at a folder keyed by the tokenizer's
    content, so a checkpoint retrained in place (a new vocabulary) never meets masks of the old one."""
    import lmql.runtime.caching as caching

    digest = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model"):
        if (Path(model_path) / name).exists():
            digest.update((Path(model_path) / name).read_bytes())
    caching.CACHE_DIR = Path.home() / ".cache" / "lmql" / f"sglbench-{digest.hexdigest()[:16]}"


class LmqlPeer(PeerSystem):
    general_note = "LMQL: programs as gathered queries, batched by LMQL's in-process model server"
    fixed_length_reason = "a hole cannot run past eos (no ignore_eos or minimum length)"

    def __init__(self, name: str, model_path: str, device: str, dtype: torch.dtype, batch_size: int = 16):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.roles = prompts.Roles(chat_template_from_tokenizer(tokenizer))
        _cache_per_tokenizer(model_path)
        kwargs: dict[str, Any] = {"batch_size": batch_size, "silent": True}
        eos = _config_eos(model_path)
        if len(eos) > 1:  # see the module docstring
            kwargs["eos_token_id"] = tokenizer.eos_token_id
        # LMQL ends a hole at its tokenizer's eos only; the model's other eos tokens (a chat turn's end) end it
        # by their text, as the engine stops at any of them
        others = [tokenizer.decode([i]) for i in eos if i != tokenizer.eos_token_id]
        self.end = others[0] if others else tokenizer.eos_token
        if device != "cpu":
            kwargs.update(cuda=True, dtype=str(dtype).removeprefix("torch."))
        self.model = lmql.model(f"local:{model_path}", **kwargs)
        self.eos_override = "eos_token_id" in kwargs
        # LMQL's in-process model client lives on the event loop of its first query: keep that loop
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._q(_free, "Hello", 2, self.end))  # loads the model in LMQL's server thread
        programs = {
            "mmlu-gen": self._mmlu_gen, "mmlu-select": self._mmlu_select, "mmlu-select-decoded": self._mmlu_select,
            "hellaswag": self._hellaswag, "hellaswag-decoded": self._hellaswag, "llm-judge": self._llm_judge,
            "tree-of-thought": self._tree_of_thought, "skeleton-of-thought": self._skeleton_of_thought,
            "chat-short": self._chat, "chat-long": self._chat, "react": self._react,
        }
        not_expressible = {
            "json-regex": "its REGEX constraint did not decode the city-record regex (one record came out as "
                          "'{\\n}', no match, after 78 s; smaller regexes decode, at 5-16 s a record)",
            "llm-judge-fixed": self.fixed_length_reason,
        }
        super().__init__(name, {k: self._gathered(v) for k, v in programs.items()}, not_expressible)
        if self.eos_override:
            self.general_note += f"; loaded with eos_token_id={tokenizer.eos_token_id} (config lists several)"

    def _q(self, query, *args: Any) -> Awaitable:
        return query(*args, model=self.model, decoder="argmax")

    def _gathered(self, program: Callable[[WorkloadRun, Mapping[str, Any]], Awaitable[dict]]):
        """A whole batch: every program's coroutine gathered at once, each timed from the batch's start."""

        def run(run_: WorkloadRun, arguments: Sequence[Mapping[str, Any]]) -> list[PeerOutput]:
            async def timed(a: Mapping[str, Any], start: float) -> PeerOutput:
                values = await program(run_, a)
                return PeerOutput(values, time.perf_counter() - start)

            async def batch() -> list[PeerOutput]:
                start = time.perf_counter()
                return list(await asyncio.gather(*(timed(a, start) for a in arguments)))

            return self._loop.run_until_complete(batch())

        return run

    async def _gen(self, prompt: str, max_tokens: int) -> str:
        return await self._q(_free, prompt, max_tokens + 1, self.end)

    # ------------------------------------------------------------------ workloads (one coroutine per program)
    async def _mmlu_gen(self, run: WorkloadRun, a) -> dict:
        return {"answer": await self._gen(prompts.mmlu(a), run.params["max_tokens"])}

    async def _mmlu_select(self, run: WorkloadRun, a) -> dict:
        return {"answer": await self._q(_choose, prompts.mmlu(a), list(mmlu.CHOICES))}

    async def _hellaswag(self, run: WorkloadRun, a) -> dict:
        return {"ending": await self._q(_choose, prompts.hellaswag(run.params["prefix"], a), list(a["endings"]))}

    async def _llm_judge(self, run: WorkloadRun, a) -> dict:
        shape = run.params["shape"]
        dims = llm_judge.DIMENSIONS[: shape.dimensions]
        head = prompts.judge_head(self.roles, a)
        judgments = await asyncio.gather(*(self._gen(prompts.judge_branch(self.roles, head, d),
                                                     run.params["judgment_tokens"]) for d in dims))
        grade = await self._q(_regex, prompts.judge_merge(self.roles, head, dims, judgments), llm_judge.GRADE_REGEX)
        return {"judgment": list(judgments), "grade": grade}

    async def _tree_of_thought(self, run: WorkloadRun, a) -> dict:
        shape, b = run.params["shape"], run.params["shape"].branches
        head = prompts.tot_head(self.roles, a)

        async def plan(i: int) -> tuple[str, list[str], list[str]]:
            plan_prompt = prompts.tot_plan(self.roles, head, i)
            text = await self._gen(plan_prompt, shape.plan_tokens)
            attempt_prompts = [prompts.tot_attempt(self.roles, plan_prompt, text, j) for j in range(b)]
            attempts = await asyncio.gather(*(self._gen(p, shape.attempt_tokens) for p in attempt_prompts))
            verdicts = await asyncio.gather(*(self._q(_choose, prompts.tot_check(self.roles, p, t),
                                                      list(tree_of_thought.VERDICTS))
                                              for p, t in zip(attempt_prompts, attempts)))
            return text, list(attempts), list(verdicts)

        plans = await asyncio.gather(*(plan(i) for i in range(b)))
        return {"plan": [p[0] for p in plans], "attempt": [p[1] for p in plans], "verdict": [p[2] for p in plans]}

    async def _skeleton_of_thought(self, run: WorkloadRun, a) -> dict:
        shape = run.params["shape"]
        head = prompts.sot_skeleton(self.roles, shape, a)
        skeleton = await self._gen(head, shape.skeleton_tokens)
        points = await asyncio.gather(*(self._gen(prompts.sot_point(self.roles, head, skeleton, i), shape.point_tokens)
                                        for i in range(shape.points)))
        return {"skeleton": skeleton, "point": list(points)}

    async def _chat(self, run: WorkloadRun, a) -> dict:
        turns = [self.roles.block("user", m) + self.roles.open("assistant") for m in a["messages"]]
        answers = await self._q(_chat, self.roles.block("system", chat.SYSTEM), turns, run.params["max_tokens"] + 1,
                                self.roles.close("assistant"), self.end)
        return {f"answer_{i}": answer for i, answer in enumerate(answers)}

    async def _react(self, run: WorkloadRun, a) -> dict:
        shape = run.params["shape"]
        steps = await self._q(_react, prompts.react_start(run.params["prefix"], a), list(a["observations"]),
                              shape.thought_tokens + 1, shape.action_tokens + 1, run.params["stop"], self.end)
        return {f"{kind}_{i}": text for i, step in enumerate(steps, start=1)
                for kind, text in zip(("thought", "action"), step)}
