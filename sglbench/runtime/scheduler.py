"""Which requests run next: waiting-queue policies and prefill admission under a token budget.

No device code and no memory bookkeeping here: the engine's `admit` callback does the matching,
locking and slot allocation, and says how many tokens it could schedule.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sglbench.runtime.request import Request

POLICIES = ("lpm", "dfs-weight", "fcfs", "random")
PREFIX_AWARE_POLICIES = ("lpm", "dfs-weight")  # order by cached prefix and defer in-batch sharers
# SGLang's estimate of the tokens running requests will still decode, kept free when a new request is admitted:
# each running request's remaining max_new_tokens (clipped) times a ratio that starts at 0.7 x
# schedule_conservativeness, falls to 0.14 of that over 600 decode steps, and goes back up after a retraction.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
CLIP_MAX_NEW_TOKENS_ESTIMATION = 4096
# Beyond this many waiting requests, prefix-aware ordering costs more than it saves (as in SGLang).
PREFIX_POLICY_QUEUE_LIMIT = 128


@dataclass(frozen=True)
class SchedulerConfig:
    policy: str = "lpm"
    max_running_requests: int = 64
    max_prefill_tokens: int = 8192  # new tokens in one prefill batch
    chunked_prefill_size: int = 2048  # most new tokens of one request per step; <= 0 disables chunking
    max_consecutive_prefills: int = 4  # then one decode step, so decoding requests never starve
    # A waiting request sharing this many uncached tokens with one admitted in the same batch waits a
    # step, so the shared part is computed once and then read from the radix cache (lpm/dfs-weight).
    # Low, because a CPU step is cheap next to recomputing: forks of one state often share only the
    # role marker and first words of their next turn (skeleton-of-thought: 11 tokens per fork).
    in_batch_prefix_threshold: int = 8
    seed: int = 0
    # SGLang's: higher keeps more memory free for running requests' outputs (fewer retractions, fewer running)
    schedule_conservativeness: float = 1.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"schedule_policy must be one of {POLICIES}, got {self.policy!r}")
        if self.max_running_requests < 1:
            raise ValueError(f"max_running_requests must be >= 1, got {self.max_running_requests}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        if not self.schedule_conservativeness >= 0:
            raise ValueError(f"schedule_conservativeness must be >= 0, got {self.schedule_conservativeness}")

    @property
    def init_new_token_ratio(self) -> float:
        return min(INIT_NEW_TOKEN_RATIO * self.schedule_conservativeness, 1.0)

    @property
    def min_new_token_ratio(self) -> float:
        return min(self.init_new_token_ratio * MIN_NEW_TOKEN_RATIO_FACTOR, 1.0)

    @property
    def new_token_ratio_decay(self) -> float:
        return (self.init_new_token_ratio - self.min_new_token_ratio) / NEW_TOKEN_RATIO_DECAY_STEPS


@dataclass(frozen=True)
class PrefixMatch:
    """A waiting request's cached-prefix length and the radix node it ends at (for dfs-weight)."""

    length: int
    node: Any


# admit(request, max_new_tokens_to_schedule) -> tokens scheduled (0: no room now)
AdmitFn = Callable[[Request, int], int]


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # admitted: prefilling or decoding
        self._rng = random.Random(config.seed)
        self._consecutive_prefills = 0
        self.new_token_ratio = config.init_new_token_ratio
        # The running requests' sums `tokens_to_keep` reads, kept while plan_prefill admits requests one by one
        # (each admission asked for them again: a tree-of-thought step admits dozens over 50 running requests).
        self._totals: _RunningTotals | None = None

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.running:
            if self._totals is not None:
                self._totals.add(req, -1)
            self.running.remove(req)

    def requeue(self, req: Request) -> None:
        """Move a running request to the front of the queue (retracted, or resuming after a jump-forward)."""
        self.running.remove(req)
        self.waiting.insert(0, req)

    def requests(self) -> list[Request]:
        """Every request in flight: waiting, then running."""
        return self.waiting + self.running

    def runs_alone(self, req: Request) -> bool:
        """Whether nothing but req is running (so nothing else holds memory it could wait for)."""
        return not self.running or self.running == [req]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def decode_ran(self) -> None:
        """The decoding requests got their next token (a decode step, or riding a prefill step): no decode step is
        owed, and the estimate of what running requests will still decode relaxes a step."""
        self._consecutive_prefills = 0
        c = self.config
        self.new_token_ratio = max(self.new_token_ratio - c.new_token_ratio_decay, c.min_new_token_ratio)

    def retracted(self) -> None:
        """A request gave its memory back: estimate running requests' outputs as at the start again."""
        self.new_token_ratio = max(self.new_token_ratio, self.config.init_new_token_ratio)

    def tokens_to_keep(self, new: Request) -> int:
        """Tokens that must be free (or evictable) to admit `new`: the rest of its prompt, the prompts of running
        requests still prefilling, and new_token_ratio of what each of them and `new` may still decode."""
        totals = self._totals if self._totals is not None else _RunningTotals.of(self.running)
        prompts, outputs = totals.prompts + _prompt_left(new), totals.outputs + _output_estimate(new)
        return prompts + math.ceil(max(outputs, 0) * self.new_token_ratio)

    @staticmethod
    def is_prefilling(req: Request) -> bool:
        return req.kv_len < req.prefill_len

    def decoding(self) -> list[Request]:
        return [r for r in self.running if not self.is_prefilling(r)]

    def decoding_count(self) -> int:
        """len(decoding()); while a prefill is planned, kept up to date rather than counted per admission."""
        return self._totals.decoding if self._totals is not None else len(self.decoding())

    def chunk_limit(self) -> int:
        return self.config.chunked_prefill_size if self.config.chunked_prefill_size > 0 else 1 << 62

    def order_waiting(self, match: Callable[[Request], PrefixMatch]) -> dict[int, PrefixMatch] | None:
        """Sort the waiting queue by the configured policy; return the prefix matches it computed."""
        policy = self.config.policy
        if len(self.waiting) == 1:  # nothing to order, and no request admitted before it to share a prefix with
            return None
        if policy == "fcfs" or (policy in PREFIX_AWARE_POLICIES and len(self.waiting) > PREFIX_POLICY_QUEUE_LIMIT):
            self.waiting.sort(key=lambda r: r.timings.arrived)
            return None
        if policy == "random":
            self._rng.shuffle(self.waiting)
            return None
        matches = {id(r): match(r) for r in self.waiting}
        if policy == "lpm":
            self.waiting.sort(key=lambda r: (-matches[id(r)].length, r.timings.arrived))
        else:
            self.waiting = dfs_weight_order(self.waiting, {k: m.node for k, m in matches.items()})
        return matches

    def _shares_uncached_prefix(self, fill: list[int], cached: int, admitted: list[list[int]]) -> bool:
        """Whether fill shares its first `cached + threshold` tokens with the fill of a request admitted
        this step. The short window past the cached part is compared first: it tells most pairs apart
        without touching the long cached prefix (a step of 64 select choices over one 900-token prompt
        compared 2,000 pairs of whole prompts)."""
        threshold = self.config.in_batch_prefix_threshold
        if threshold <= 0:
            return False
        end = cached + threshold
        window = fill[cached:end]
        if len(window) < threshold:
            return False
        return any(other[cached:end] == window and other[:cached] == fill[:cached] for other in admitted)

    def plan_prefill(self, admit: AdmitFn, match: Callable[[Request], PrefixMatch]) -> list[tuple[Request, int]]:
        """Continue chunked requests first, then admit waiting ones in policy order under the budget.

        Returns (request, tokens to prefill this step); empty when a decode step should run instead.
        """
        prefilling = [r for r in self.running if self.is_prefilling(r)]
        if not prefilling and not self.waiting:  # a plain decode step (most steps): nothing to plan
            self._consecutive_prefills = 0
            return []
        if len(prefilling) < len(self.running) and self._consecutive_prefills >= self.config.max_consecutive_prefills:
            self._consecutive_prefills = 0
            return []
        self._totals = _RunningTotals.of(self.running)
        try:
            plan = self._plan(admit, match, prefilling)
        finally:
            self._totals = None
        self._consecutive_prefills = self._consecutive_prefills + 1 if plan else 0
        return plan

    def _plan(self, admit: AdmitFn, match: Callable[[Request], PrefixMatch],
              prefilling: list[Request]) -> list[tuple[Request, int]]:
        """plan_prefill's planning proper, with the running totals kept (`_totals`)."""
        budget = self.config.max_prefill_tokens
        plan: list[tuple[Request, int]] = []
        for req in prefilling:
            n = admit(req, min(budget, self.chunk_limit()))
            if n:
                plan.append((req, n))
                budget -= n
            if budget <= 0:
                break
        if self.waiting and budget > 0:
            matches = self.order_waiting(match)
            admitted: list[list[int]] = []  # fill_ids of the requests admitted this step
            for req in list(self.waiting):
                if budget <= 0 or len(self.running) >= self.config.max_running_requests:
                    break
                fill = req.fill_ids
                if matches is not None and self._shares_uncached_prefix(fill, matches[id(req)].length, admitted):
                    continue
                n = admit(req, min(budget, self.chunk_limit()))
                if not n:
                    break  # no memory now: keep policy order, do not let later requests jump ahead
                self.waiting.remove(req)
                self.running.append(req)
                self._totals.add(req, 1)
                admitted.append(fill)
                plan.append((req, n))
                budget -= n
        return plan


def _prompt_left(req: Request) -> int:
    return max(req.prefill_len - req.kv_len, 0)


def _output_estimate(req: Request) -> int:
    return min(req.params.max_new_tokens - len(req.output_ids), CLIP_MAX_NEW_TOKENS_ESTIMATION)


@dataclass
class _RunningTotals:
    """Sums over the running requests that admission reads: prompt tokens still to prefill, the clipped outputs
    still to decode, and how many are decoding. Mutable, and only for the plan_prefill that made it."""

    prompts: int = 0
    outputs: int = 0
    decoding: int = 0

    @classmethod
    def of(cls, running: list[Request]) -> _RunningTotals:
        totals = cls()
        for r in running:
            totals.add(r, 1)
        return totals

    def add(self, req: Request, sign: int) -> None:
        """Count req in (sign 1) or out (sign -1), as it is now."""
        self.prompts += sign * _prompt_left(req)
        self.outputs += sign * _output_estimate(req)
        self.decoding += sign * (not Scheduler.is_prefilling(req))


def dfs_weight_order(reqs: list[Request], nodes: dict[int, Any]) -> list[Request]:
    """Depth-first over the radix tree, heavier subtrees (more waiting requests) first, so requests
    sharing a prefix run back to back and the shared part stays cached."""
    weight: dict[int, int] = defaultdict(int)
    at_node: dict[int, list[Request]] = defaultdict(list)
    root = None
    for r in reqs:
        node = nodes[id(r)]
        at_node[id(node)].append(r)
        while node is not None:
            weight[id(node)] += 1
            root = node
            node = node.parent
    # Post-order: a node's subtree (heaviest child first) runs before the requests ending at the node.
    order: list[Request] = []
    stack: list[tuple[Any, bool]] = [(root, False)] if root is not None else []
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.extend(at_node.get(id(node), ()))
            continue
        stack.append((node, True))
        children = [c for c in node.children.values() if weight.get(id(c))]
        children.sort(key=lambda c: weight[id(c)])  # heaviest popped first
        stack.extend((c, False) for c in children)
    return order
