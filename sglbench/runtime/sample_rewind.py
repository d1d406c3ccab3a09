"""What a batched sampling call may change before a fault stops it, so the requests it did not reach can be put
back and rerun alone: the engine's "a fault fails its request and nothing else" for the sampler."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglbench.runtime.grammar import GrammarMatcher
from sglbench.runtime.request import Request


@dataclass(frozen=True)
class SampleMark:
    """What `OutputProcessor.sample_and_append` may change before a fault stops it, taken before the call, so
    the requests it did not reach can be put back and rerun as if nothing had happened.

    The call samples every row (drawing from the random generators), advances every constrained request's
    grammar by its token, then handles the requests in order: append the token (or finish), logprobs, stops,
    streaming, jump-forward. A request "progressed" when its output or state changed: those did their step.
    """

    outputs: tuple[tuple[list[int], int], ...]  # per request: its output_ids list (jump-forward replaces it), length
    masks: tuple[tuple[GrammarMatcher, int] | None, ...]  # per request: its grammar and tokens it had accepted
    generators: tuple[tuple[torch.Generator, torch.Tensor, tuple[int, ...]], ...]  # (generator, state, its users)

    @classmethod
    def take(cls, reqs: list[Request], matchers: dict[str, GrammarMatcher]) -> SampleMark:
        users: dict[int, list[int]] = {}
        by_id: dict[int, torch.Generator] = {}
        for i, r in enumerate(reqs):
            if r.generator is not None and not r.params.greedy:
                by_id[id(r.generator)] = r.generator
                users.setdefault(id(r.generator), []).append(i)
        masks = []
        for r in reqs:
            matcher = matchers.get(r.rid)
            masks.append(None if matcher is None else (matcher, matcher.accepted))
        return cls(
            outputs=tuple((r.output_ids, len(r.output_ids)) for r in reqs),
            masks=tuple(masks),
            generators=tuple((g, g.get_state(), tuple(users[key])) for key, g in by_id.items()),
        )

    def progressed(self, reqs: list[Request]) -> list[int]:
        """Indices of the requests whose step went ahead (token appended, output replaced or finished)."""
        return [i for i, (r, (ids, n)) in enumerate(zip(reqs, self.outputs))
                if r.finished or r.output_ids is not ids or len(ids) != n]

    def rewind_generators(self, reqs: list[Request], progressed: list[int]) -> list[int]:
        """Put back the random generators of the requests that did not progress (unless a request that did
        drew from the same one, as unseeded requests share one); returns those requests' indices."""
        done = set(progressed)
        for generator, state, users in self.generators:
            if done.isdisjoint(users):
                generator.set_state(state)
        return [i for i in range(len(reqs)) if i not in done]

    def rewind_grammar(self, i: int) -> None:
        """Move request i's grammar back to where it was before the call."""
        if self.masks[i] is not None:
            matcher, accepted = self.masks[i]
            matcher.rollback(matcher.accepted - accepted)
