"""Guidance (0.3) as a peer: every workload as a Guidance program on `guidance.models.Transformers`.

Guidance runs one program at a time (it has no batching): a program is `lm + ...` with role blocks
(`with user(): ...`), `gen` (max_tokens, stop, regex) and `select`; a fork is another `lm + ...` from the
same state, and the engine reuses the KV of the previous call's common prefix. select is decoded under a
grammar. The roles come from the model's chat template as a `guidance.chat.ChatTemplate` subclass (the
documented way for a template Guidance does not know), so the text equals sglbench's. Guidance's gen has
no way to run past eos, so fixed-length generation is not expressible.

Compatibility: guidance 0.3.1 trims its KV cache with `Cache.crop(kept_length)`, which transformers >= 5
rejects (crop now takes the count of tokens to drop, negative); `_crop_the_transformers5_way` trims the
cache first, the new way, so Guidance's own crop finds nothing to do. Nothing else of Guidance changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers

from sglbench.bench.baselines import load_hf
from sglbench.bench.paper import chat, json_regex, llm_judge, mmlu, skeleton_of_thought, tree_of_thought
from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.peers import prompts
from sglbench.bench.paper.peers.base import PeerOutput, PeerSystem
from sglbench.lang.chat_template import ChatTemplate, chat_template_from_tokenizer


def role_template(template: ChatTemplate) -> type:
    """A Guidance chat template class with the model's role prefixes and suffixes."""
    from guidance.chat import ChatTemplate as GuidanceChatTemplate

    roles = dict(template.role_prefix_and_suffix)

    class ModelRoles(GuidanceChatTemplate):
        def get_role_start(self, role_name: str, **kwargs: Any) -> str:
            return roles[role_name][0]

        def get_role_end(self, role_name: str | None = None) -> str:
            return roles[role_name][1]

    return ModelRoles


def _crop_the_transformers5_way(engine) -> None:
    """Wrap the engine's get_logits: trim the KV cache to the tokens Guidance keeps, by a negative count."""
    original = engine.get_logits

    def get_logits(token_ids: list[int], include_all_uncached_tokens: bool = False):
        cache, cached_ids = engine._past_key_values, engine._cached_token_ids
        if isinstance(cache, transformers.Cache):
            keep = 0
            for a, b in zip(token_ids, cached_ids):
                if a != b:
                    break
                keep += 1
            if keep == len(token_ids) and keep != len(cached_ids):
                keep -= 1  # as Guidance does: at least one token goes through the model
            length = cache.get_seq_length()
            if keep < length and not (keep == len(token_ids) == len(cached_ids)):
                cache.crop(keep - length)
        return original(token_ids, include_all_uncached_tokens)

    engine.get_logits = get_logits


class GuidancePeer(PeerSystem):
    general_note = "Guidance: programs one at a time (no batching), KV of the previous call reused"
    fixed_length_reason = "gen cannot run past eos (no ignore_eos or min_tokens)"

    def __init__(self, name: str, model_path: str, device: str, dtype: torch.dtype, batch_size: int = 16):
        import guidance
        from guidance import models

        self._g = guidance
        hf_model, tokenizer = load_hf(model_path, device, dtype)
        template = role_template(chat_template_from_tokenizer(tokenizer))
        self.lm = models.Transformers(hf_model, tokenizer, chat_template=template, echo=False,
                                      enable_monitoring=False)
        self.engine = self.lm._interpreter.engine
        if int(transformers.__version__.split(".")[0]) >= 5:
            _crop_the_transformers5_way(self.engine)
        programs = {
            "mmlu-gen": self._mmlu_gen, "mmlu-select": self._mmlu_select, "mmlu-select-decoded": self._mmlu_select,
            "hellaswag": self._hellaswag, "hellaswag-decoded": self._hellaswag, "json-regex": self._json_regex,
            "llm-judge": self._llm_judge, "llm-judge-fixed": self._llm_judge,
            "tree-of-thought": self._tree_of_thought, "skeleton-of-thought": self._skeleton_of_thought,
            "chat-short": self._chat, "chat-long": self._chat, "react": self._react,
        }
        super().__init__(name, {k: self._one_at_a_time(v) for k, v in programs.items()}, {})

    def close(self) -> None:
        self.lm = self.engine = None

    def reset(self) -> None:
        """Drop the engine's cached KV, so each timed batch starts cold."""
        if self.engine is not None:
            self.engine._past_key_values = None
            self.engine._cached_token_ids = []
            self.engine._cached_logits = None

    @staticmethod
    def _one_at_a_time(program):
        """A whole batch: the programs one after another, each timed on its own."""

        def run(run_: WorkloadRun, arguments: Sequence[Mapping[str, Any]]) -> list[PeerOutput]:
            out = []
            for a in arguments:
                start = time.perf_counter()
                values = program(run_, a)
                out.append(PeerOutput(values, time.perf_counter() - start))
            return out

        return run

    # ------------------------------------------------------------------ workloads (one program each)
    def _mmlu_gen(self, run: WorkloadRun, a) -> dict:
        lm = self.lm + prompts.mmlu(a) + self._g.gen("answer", max_tokens=run.params["max_tokens"])
        return {"answer": lm["answer"]}

    def _mmlu_select(self, run: WorkloadRun, a) -> dict:
        lm = self.lm + prompts.mmlu(a) + self._g.select(list(mmlu.CHOICES), name="answer")
        return {"answer": lm["answer"]}

    def _hellaswag(self, run: WorkloadRun, a) -> dict:
        lm = self.lm + prompts.hellaswag(run.params["prefix"], a) + self._g.select(list(a["endings"]), name="ending")
        return {"ending": lm["ending"]}

    def _json_regex(self, run: WorkloadRun, a) -> dict:
        lm = self.lm + json_regex.prompt(a["page"]) + self._g.gen(
            "record", regex=run.params["regex"], max_tokens=run.params["max_tokens"])
        return {"record": lm["record"]}

    def _llm_judge(self, run: WorkloadRun, a) -> dict:
        g, shape = self._g, run.params["shape"]
        dims = llm_judge.DIMENSIONS[: shape.dimensions]
        lm = self.lm
        with g.system():
            lm += llm_judge.SYSTEM
        with g.user():
            lm += llm_judge.ask(a["question"], a["answer"])
        judgments = []
        for dimension in dims:  # a fork: each branch continues from the same state
            branch = lm
            with g.user():
                branch += llm_judge.judge(dimension)
            with g.assistant():
                branch += g.gen("judgment", max_tokens=run.params["judgment_tokens"])
            judgments.append(branch["judgment"])
        for dimension, judgment in zip(dims, judgments):  # join: the branches' text appended in order
            with g.user():
                lm += llm_judge.judge(dimension)
            with g.assistant():
                lm += judgment
        with g.user():
            lm += llm_judge.MERGE
        with g.assistant():
            lm += g.gen("grade", regex=llm_judge.GRADE_REGEX, max_tokens=shape.grade_tokens)
        return {"judgment": judgments, "grade": lm["grade"]}

    def _tree_of_thought(self, run: WorkloadRun, a) -> dict:
        g, shape = self._g, run.params["shape"]
        lm = self.lm
        with g.system():
            lm += tree_of_thought.SYSTEM
        with g.user():
            lm += f"Problem: {a['problem']}\n{tree_of_thought.PROPOSE}"
        plans, attempts, verdicts = [], [], []
        for i in range(shape.branches):
            plan = lm
            with g.assistant():
                plan += f"Plan {i + 1}:" + g.gen("plan", max_tokens=shape.plan_tokens)
            with g.user():
                plan += tree_of_thought.CARRY_OUT
            plans.append(plan["plan"])
            row_attempts, row_verdicts = [], []
            for j in range(shape.branches):
                attempt = plan
                with g.assistant():
                    attempt += f"Attempt {j + 1}:" + g.gen("attempt", max_tokens=shape.attempt_tokens)
                with g.user():
                    attempt += tree_of_thought.CHECK
                with g.assistant():
                    attempt += g.select(list(tree_of_thought.VERDICTS), name="verdict")
                row_attempts.append(attempt["attempt"])
                row_verdicts.append(attempt["verdict"])
            attempts.append(row_attempts)
            verdicts.append(row_verdicts)
        return {"plan": plans, "attempt": attempts, "verdict": verdicts}

    def _skeleton_of_thought(self, run: WorkloadRun, a) -> dict:
        g, shape = self._g, run.params["shape"]
        lm = self.lm
        with g.system():
            lm += skeleton_of_thought.SYSTEM
        with g.user():
            lm += skeleton_of_thought.ask(a["question"], shape)
        with g.assistant():
            lm += g.gen("skeleton", max_tokens=shape.skeleton_tokens)
        points = []
        for i in range(shape.points):
            point = lm
            with g.user():
                point += skeleton_of_thought.expand(i)
            with g.assistant():
                point += g.gen("point", max_tokens=shape.point_tokens)
            points.append(point["point"])
        return {"skeleton": lm["skeleton"], "point": points}

    def _chat(self, run: WorkloadRun, a) -> dict:
        g = self._g
        lm = self.lm
        with g.system():
            lm += chat.SYSTEM
        for i, message in enumerate(a["messages"]):
            with g.user():
                lm += message
            with g.assistant():
                lm += g.gen(f"answer_{i}", max_tokens=run.params["max_tokens"])
        return {f"answer_{i}": lm[f"answer_{i}"] for i in range(len(a["messages"]))}

    def _react(self, run: WorkloadRun, a) -> dict:
        g, shape, stop = self._g, run.params["shape"], run.params["stop"]
        lm = self.lm + prompts.react_start(run.params["prefix"], a)
        for i, observation in enumerate(a["observations"], start=1):
            lm += f"Thought {i}:" + g.gen(f"thought_{i}", max_tokens=shape.thought_tokens, stop=stop)
            lm += f"\nAction {i}:" + g.gen(f"action_{i}", max_tokens=shape.action_tokens, stop=stop)
            lm += f"\nObservation {i}: {observation}\n"
        return {f"{kind}_{i}": lm[f"{kind}_{i}"] for i in range(1, len(a["observations"]) + 1)
                for kind in ("thought", "action")}
