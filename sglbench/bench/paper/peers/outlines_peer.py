"""Outlines (1.x) as a peer: every workload as stages of `Generator.batch` calls on `outlines.from_transformers`.

Outlines batches plain transformers `generate`: a program step that every program reaches together is one
call per batch of `batch_size` prompts (all steps of one kind share an output type: free text, a `Regex`,
a `Literal` of the choices), and nothing is shared between calls, so every prompt is prefilled in full.
Generators are built once per output type and reused, as Outlines recommends. A fork is a row per branch
of the next stage; select is decoded under a grammar (Outlines has no choice scoring). Prompts are the
text sglbench sends (`prompts`): Outlines would otherwise wrap a text prompt in a user message, since the
tokenizer has a chat template. Greedy; a gen that must ignore eos gets `min_new_tokens`, a stop string
transformers' `stop_strings`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from sglbench.bench.baselines import load_hf
from sglbench.bench.paper import llm_judge, mmlu, tree_of_thought
from sglbench.bench.paper.base import WorkloadRun
from sglbench.bench.paper.peers import prompts
from sglbench.bench.paper.peers.base import PeerOutput, PeerSystem, StageClock, chunks, cut_at
from sglbench.lang.chat_template import chat_template_from_tokenizer

_CHOICE_MAX_TOKENS = 256  # a bound no choice reaches: the grammar ends the answer


class OutlinesPeer(PeerSystem):
    general_note = "Outlines: stage-batched Generator.batch, no prefix reuse"

    def __init__(self, name: str, model_path: str, device: str, dtype: torch.dtype, batch_size: int = 16):
        import outlines

        self._outlines = outlines
        self.hf_model, self.tokenizer = load_hf(model_path, device, dtype)
        self.model = outlines.from_transformers(self.hf_model, self.tokenizer)
        self.model.type_adapter.has_chat_template = False  # prompts are sent as the text sglbench renders
        self.roles = prompts.Roles(chat_template_from_tokenizer(self.tokenizer))
        self.batch_size = batch_size
        self._generators: dict[Any, Any] = {}
        programs: dict[str, Callable[[WorkloadRun, Sequence[Mapping[str, Any]]], list[PeerOutput]]] = {
            "mmlu-gen": self._mmlu_gen, "mmlu-select": self._mmlu_select, "mmlu-select-decoded": self._mmlu_select,
            "hellaswag": self._hellaswag, "hellaswag-decoded": self._hellaswag,
            "tree-of-thought": self._tree_of_thought, "skeleton-of-thought": self._skeleton_of_thought,
            "llm-judge": self._llm_judge, "llm-judge-fixed": self._llm_judge, "json-regex": self._json_regex,
            "chat-short": self._chat, "chat-long": self._chat, "react": self._react,
        }
        super().__init__(name, programs, {})
        self.notes = {"hellaswag": "a generator per question (its four endings)",
                      "hellaswag-decoded": "a generator per question (its four endings)"}

    def close(self) -> None:
        self._generators.clear()
        self.model = self.hf_model = None

    # ------------------------------------------------------------------ generators and batched calls
    def _generator(self, key: Any, output_type: Any):
        if key not in self._generators:
            self._generators[key] = self._outlines.Generator(self.model, output_type)
        return self._generators[key]

    def _text(self):
        return self._generator("text", None)

    def _regex(self, pattern: str):
        return self._generator(("regex", pattern), self._outlines.types.Regex(pattern))

    def _choice(self, choices: Sequence[str]):
        return self._generator(("choice", tuple(choices)), Literal[tuple(choices)])

    def _stage(self, generator, prompts_: Sequence[str], owners: Sequence[int], clock: StageClock,
               **kwargs: Any) -> list[str]:
        """One program step for every prompt, `batch_size` prompts per call; owners[i] is prompt i's program."""
        out: list[str] = []
        for rows in chunks(len(prompts_), self.batch_size):
            out += generator.batch([prompts_[i] for i in rows], do_sample=False, **kwargs)
            clock.served([owners[i] for i in rows])
        return out

    def _free(self, prompts_, owners, clock, max_tokens: int, ignore_eos: bool = False,
              stop: str | None = None) -> list[str]:
        """Unconstrained gens: run to max_tokens when ignoring eos, cut at the stop string if any."""
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens}
        if ignore_eos:
            kwargs["min_new_tokens"] = max_tokens
        if stop:
            kwargs.update(stop_strings=[stop], tokenizer=self.tokenizer)
        return [cut_at(t, stop) for t in self._stage(self._text(), prompts_, owners, clock, **kwargs)]

    # ------------------------------------------------------------------ workloads
    def _mmlu_gen(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        clock = StageClock(len(arguments))
        answers = self._free([prompts.mmlu(a) for a in arguments], range(len(arguments)), clock,
                             run.params["max_tokens"], ignore_eos=run.fixed_lengths)
        return clock.outputs([{"answer": t} for t in answers])

    def _mmlu_select(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        clock = StageClock(len(arguments))
        answers = self._stage(self._choice(mmlu.CHOICES), [prompts.mmlu(a) for a in arguments],
                              range(len(arguments)), clock, max_new_tokens=_CHOICE_MAX_TOKENS)
        return clock.outputs([{"answer": t} for t in answers])

    def _hellaswag(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        clock = StageClock(len(arguments))
        endings = []
        for i, a in enumerate(arguments):  # each question has its own choices: its own generator, a call each
            endings += self._stage(self._choice(a["endings"]), [prompts.hellaswag(run.params["prefix"], a)], [i],
                                   clock, max_new_tokens=_CHOICE_MAX_TOKENS)
        return clock.outputs([{"ending": t} for t in endings])

    def _json_regex(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        clock = StageClock(len(arguments))
        records = self._stage(self._regex(run.params["regex"]), [prompts.json_page(a) for a in arguments],
                              range(len(arguments)), clock, max_new_tokens=run.params["max_tokens"])
        return clock.outputs([{"record": t} for t in records])

    def _llm_judge(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        shape, n = run.params["shape"], run.params["shape"].dimensions
        dims = llm_judge.DIMENSIONS[:n]
        clock = StageClock(len(arguments))
        heads = [prompts.judge_head(self.roles, a) for a in arguments]
        branch_prompts = [prompts.judge_branch(self.roles, h, d) for h in heads for d in dims]
        judgments = self._free(branch_prompts, [i for i in range(len(arguments)) for _ in dims], clock,
                               run.params["judgment_tokens"], ignore_eos=run.params["ignore_eos"])
        per_program = [judgments[i * n:(i + 1) * n] for i in range(len(arguments))]
        merged = [prompts.judge_merge(self.roles, h, dims, j) for h, j in zip(heads, per_program)]
        grades = self._stage(self._regex(llm_judge.GRADE_REGEX), merged, range(len(arguments)), clock,
                             max_new_tokens=shape.grade_tokens)
        return clock.outputs([{"judgment": j, "grade": g} for j, g in zip(per_program, grades)])

    def _tree_of_thought(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        shape, b = run.params["shape"], run.params["shape"].branches
        clock, fixed = StageClock(len(arguments)), run.fixed_lengths
        heads = [prompts.tot_head(self.roles, a) for a in arguments]
        plan_prompts = [prompts.tot_plan(self.roles, h, i) for h in heads for i in range(b)]
        plans = self._free(plan_prompts, [p // b for p in range(len(plan_prompts))], clock, shape.plan_tokens, fixed)
        attempt_prompts = [prompts.tot_attempt(self.roles, plan_prompts[p], plans[p], j)
                           for p in range(len(plans)) for j in range(b)]
        owners = [q // (b * b) for q in range(len(attempt_prompts))]
        attempts = self._free(attempt_prompts, owners, clock, shape.attempt_tokens, fixed)
        checks = [prompts.tot_check(self.roles, ap, at) for ap, at in zip(attempt_prompts, attempts)]
        verdicts = self._stage(self._choice(tree_of_thought.VERDICTS), checks, owners, clock,
                               max_new_tokens=_CHOICE_MAX_TOKENS)

        def grid(values: list[str], k: int) -> list[list[str]]:
            return [values[(k * b + i) * b:(k * b + i + 1) * b] for i in range(b)]

        return clock.outputs([{"plan": plans[k * b:(k + 1) * b], "attempt": grid(attempts, k),
                               "verdict": grid(verdicts, k)} for k in range(len(arguments))])

    def _skeleton_of_thought(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        shape, n = run.params["shape"], run.params["shape"].points
        clock, fixed = StageClock(len(arguments)), run.fixed_lengths
        heads = [prompts.sot_skeleton(self.roles, shape, a) for a in arguments]
        skeletons = self._free(heads, range(len(arguments)), clock, shape.skeleton_tokens, fixed)
        point_prompts = [prompts.sot_point(self.roles, h, s, i) for h, s in zip(heads, skeletons) for i in range(n)]
        points = self._free(point_prompts, [p // n for p in range(len(point_prompts))], clock, shape.point_tokens,
                            fixed)
        return clock.outputs([{"skeleton": s, "point": points[k * n:(k + 1) * n]}
                              for k, s in enumerate(skeletons)])

    def _chat(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        clock = StageClock(len(arguments))
        histories = [""] * len(arguments)
        values: list[dict[str, str]] = [{} for _ in arguments]
        for turn in range(max(len(a["messages"]) for a in arguments)):
            live = [k for k, a in enumerate(arguments) if turn < len(a["messages"])]
            turn_prompts = [prompts.chat_turn(self.roles, histories[k], arguments[k]["messages"][turn]) for k in live]
            answers = self._free(turn_prompts, live, clock, run.params["max_tokens"], run.fixed_lengths)
            for k, p, answer in zip(live, turn_prompts, answers):
                values[k][f"answer_{turn}"] = answer
                histories[k] = p + answer + self.roles.close("assistant")
        return clock.outputs(values)

    def _react(self, run: WorkloadRun, arguments) -> list[PeerOutput]:
        shape, stop, fixed = run.params["shape"], run.params["stop"], run.fixed_lengths
        clock = StageClock(len(arguments))
        texts = [prompts.react_start(run.params["prefix"], a) for a in arguments]
        values: list[dict[str, str]] = [{} for _ in arguments]
        for step in range(1, max(len(a["observations"]) for a in arguments) + 1):
            live = [k for k, a in enumerate(arguments) if step <= len(a["observations"])]
            thought_prompts = [texts[k] + f"Thought {step}:" for k in live]
            thoughts = self._free(thought_prompts, live, clock, shape.thought_tokens, fixed, stop)
            action_prompts = [p + t + f"\nAction {step}:" for p, t in zip(thought_prompts, thoughts)]
            actions = self._free(action_prompts, live, clock, shape.action_tokens, fixed, stop)
            for k, p, t, act in zip(live, action_prompts, thoughts, actions):
                values[k][f"thought_{step}"], values[k][f"action_{step}"] = t, act
                texts[k] = p + act + f"\nObservation {step}: {arguments[k]['observations'][step - 1]}\n"
        return clock.outputs(values)
