"""Run paper workloads on every system and collect one table.

Systems that share an engine configuration share one Runtime (lpm with and without frontend hints); the
peers (Outlines, Guidance, LMQL: `peers`) each load the checkpoint through their own transformers backend.
On a GPU one model is loaded at a time (each would claim most of the memory): a system runs every
workload before the next loads. On the CPU all are loaded at once and a workload's timed runs go
round-robin over the systems (`repeats` rounds), so a slow spell of a shared machine hits all alike; with
`isolate` each model's systems live in a process of their own (isolated.py). Measurements never overlap.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from sglbench.bench.paper.base import SIZES, Workload, WorkloadRun
from sglbench.bench.paper.measure import COLUMNS, System, measure, measure_round_robin
from sglbench.bench.paper.peers import PEERS, open_peer, peer_version
from sglbench.bench.paper.systems import EndpointSystem, RuntimeSystem, TransformersSystem
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.loader import resolve_dtype
from sglbench.runtime.runtime import Runtime, resolve_device

SYSTEMS = {
    "lpm": "sglbench (lpm)",
    "fcfs": "sglbench (fcfs)",
    "no-hints": "sglbench (no frontend hints)",
    "no-cache": "sglbench (radix cache off)",
    "transformers": "transformers (stage-batched)",
    "outlines": "Outlines",
    "guidance": "Guidance",
    "lmql": "LMQL",
}
PEER_SYSTEMS = ("outlines", "guidance", "lmql")  # other structured-generation systems (the `peers` extra)
DEFAULT_SYSTEMS = tuple(k for k in SYSTEMS if k not in PEER_SYSTEMS)
# (schedule policy, radix cache disabled, systems sharing that engine)
_ENGINES = (("lpm", False, ("lpm", "no-hints")), ("fcfs", False, ("fcfs",)), ("lpm", True, ("no-cache",)))


@dataclass(frozen=True)
class SuiteConfig:
    """What to run: the model, the size, the systems (keys of SYSTEMS) and their settings."""

    model_path: str
    model_label: str
    size: str = "small"
    device: str = "auto"
    dtype: str = "auto"
    systems: tuple[str, ...] = DEFAULT_SYSTEMS
    timing_only: bool = False  # random-weight preset: fixed output lengths
    max_total_tokens: int | None = None  # KV pool size (None: the engine's default)
    context_length: int | None = None  # the engine's context (None: the model's; longer needs SGLang's env switch)
    hf_batch_size: int = 16
    endpoint: str | None = None
    endpoint_model: str = "default"
    repeats: int = 1  # timed runs per workload and system (each from a cold cache); the fastest is kept
    # Each local group in a process of its own, its torch work on one thread (see isolated.py): the CPU
    # command line's default, since systems sharing a process slow each other's small CPU ops down.
    isolate: bool = False

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown:
            raise ValueError(f"unknown systems {unknown}; known: {list(SYSTEMS)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


@dataclass(frozen=True)
class SuiteResult:
    """The table (one row per workload and system, COLUMNS) and how it was measured."""

    frame: pd.DataFrame
    meta: Mapping[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from sglbench.bench.paper.report import results_html

        return results_html(self)


@dataclass(frozen=True)
class GroupSpec:
    """Systems that share one loaded model, by kind: ("engine", (policy, radix cache disabled, system keys)),
    ("transformers", ()), ("peer", (key,)) or ("endpoint", ()). Plain data, so a child process can open it."""

    kind: str
    args: tuple = ()


def _hf_device_and_dtype(config: SuiteConfig) -> tuple[str, torch.dtype]:
    """Where and in which dtype a transformers-backed system (the baseline, a peer) loads the checkpoint."""
    device = resolve_device(config.device)
    return device, resolve_dtype(config.dtype, device, ModelConfig.from_path(config.model_path))


@contextlib.contextmanager
def open_group(config: SuiteConfig, spec: GroupSpec, log: Callable[[str], None] = print) -> Iterator[list[System]]:
    """Load a group's model and yield its systems; release them on exit."""
    if spec.kind == "engine":
        policy, disable_cache, names = spec.args
        rt = Runtime(config.model_path, device=config.device, dtype=config.dtype, schedule_policy=policy,
                     disable_radix_cache=disable_cache, max_total_tokens=config.max_total_tokens,
                     context_length=config.context_length)
        try:
            yield [RuntimeSystem(SYSTEMS[n], rt, hints=n != "no-hints") for n in names]
        finally:
            rt.shutdown()
        return
    if spec.kind == "endpoint":
        import sglbench

        if "OpenAI" not in dir(sglbench):
            log(f"--endpoint {config.endpoint}: skipped, this sglbench has no sgl.OpenAI backend")
            yield []
            return
        # As a completion model: the workloads send raw prompts (chat roles rendered by the chat template);
        # an API key comes from OPENAI_API_KEY.
        backend = sglbench.OpenAI(config.endpoint_model, base_url=config.endpoint, is_chat_model=False)
        try:
            yield [EndpointSystem(backend, config.endpoint)]
        finally:
            backend.close()
        return
    if spec.kind == "transformers":
        system: System = TransformersSystem(config.model_path, *_hf_device_and_dtype(config), config.hf_batch_size)
    elif spec.kind == "peer":
        (key,) = spec.args
        system = open_peer(key, SYSTEMS[key], config.model_path, *_hf_device_and_dtype(config), config.hf_batch_size)
    else:
        raise ValueError(f"unknown system group kind {spec.kind!r}")
    try:
        yield [system]
    finally:
        system.close()


def group_specs(config: SuiteConfig) -> list[GroupSpec]:
    """The groups of systems the config asks for, each sharing one loaded model."""
    specs = [GroupSpec("engine", (policy, disable, tuple(n for n in names if n in config.systems)))
             for policy, disable, names in _ENGINES if any(n in config.systems for n in names)]
    if "transformers" in config.systems:
        specs.append(GroupSpec("transformers"))
    specs += [GroupSpec("peer", (key,)) for key in PEER_SYSTEMS if key in config.systems]
    if config.endpoint:
        specs.append(GroupSpec("endpoint"))
    return specs


def system_groups(config: SuiteConfig, log: Callable[[str], None] = print,
                  workloads: Sequence[Workload] = ()) -> list[Callable]:
    """Context-manager factories, each opening the systems that share one loaded model: in this process, or
    with `config.isolate` each group that computes in this process in a process of its own (see isolated.py)
    that knows `workloads`; an endpoint, and a peer that already serves its model from a process of its own
    (PeerSpec.own_process), stay here."""
    from sglbench.bench.paper.isolated import open_isolated_group

    def factory(spec: GroupSpec) -> Callable:
        computes_here = spec.kind != "endpoint" and not (spec.kind == "peer" and PEERS[spec.args[0]].own_process)
        if config.isolate and computes_here:
            return lambda: open_isolated_group(config, spec, workloads)
        return lambda: open_group(config, spec, log)

    return [factory(spec) for spec in group_specs(config)]


def _rounds(groups: list[Callable], runs: list[WorkloadRun], together: bool) -> Iterator[tuple[WorkloadRun, list[System]]]:
    """(workload, the systems measured round-robin on it), in measuring order: all systems open together
    (on the CPU), or one group at a time (a GPU holds one model at a time)."""
    if together:
        with contextlib.ExitStack() as stack:
            systems = [system for group in groups for system in stack.enter_context(group())]
            yield from ((run, systems) for run in runs)
        return
    for group in groups:
        with group() as systems:
            yield from ((run, systems) for run in runs)


def run_suite(workloads: Sequence[Workload], config: SuiteConfig, log: Callable[[str], None] = print) -> SuiteResult:
    """Every workload on every configured system; rows ordered by workload, then system."""
    runs = [w.run_for(config.size, config.timing_only) for w in workloads]
    together = resolve_device(config.device) == "cpu"
    rows = []
    with contextlib.closing(_rounds(system_groups(config, log, workloads), runs, together)) as rounds:
        for run, systems in rounds:
            local = [s for s in systems if not isinstance(s, EndpointSystem)]
            # one system failing a workload (a prompt past the model's context, say) is that row, not the end
            # of a long run: the table and the goals show it
            measured = measure_round_robin(run, local, repeats=config.repeats, tolerate_failures=True)
            for endpoint in (s for s in systems if isinstance(s, EndpointSystem)):
                try:  # a remote endpoint may fail: its row is dropped, the local systems' are kept
                    measured.append(measure(run, endpoint, repeats=config.repeats))
                except Exception as exc:
                    log(f"  {run.workload}: the endpoint failed ({exc!r}); no row")
            for measurement in measured:
                row = measurement.row()
                rows.append(row)
                log(f"  {row['workload']:<20} {row['system']:<30} {row['programs_s']:9.2f} programs/s  "
                    f"hit {row['hit_rate']:.1%} (optimal {row['optimal_hit_rate']:.1%})  "
                    f"conformance {row['conformance']:.0%}  {row['note']}")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {**{w.name: i for i, w in enumerate(workloads)}, **{s: i for i, s in enumerate(SYSTEMS.values())}}
    frame = frame.sort_values(["workload", "system"], key=lambda col: col.map(order).fillna(len(order)),
                              kind="stable").reset_index(drop=True)
    return SuiteResult(frame, {**_meta(config), "systems_loaded_together": together})


def _meta(config: SuiteConfig) -> dict[str, Any]:
    return {
        "model": config.model_label, "model_path": config.model_path, "size": config.size,
        "device": resolve_device(config.device), "dtype": config.dtype, "timing_only": config.timing_only,
        "systems": [SYSTEMS[s] for s in config.systems], "max_total_tokens": config.max_total_tokens,
        "context_length": config.context_length,
        "hf_batch_size": config.hf_batch_size, "torch_threads": torch.get_num_threads(), "repeats": config.repeats,
        "peer_versions": {key: peer_version(key) for key in PEER_SYSTEMS if key in config.systems},
        "isolated": config.isolate,
    }


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per workload: sglbench (lpm) programs/s, its speedup over every other system in the table (NaN where
    that system did not run the workload), its conformance, hit rate and optimum."""
    out = []
    present = set(frame["system"])
    for workload, rows in frame.groupby("workload", sort=False):
        by_system = rows.set_index("system")
        if SYSTEMS["lpm"] not in by_system.index:
            continue
        ours = by_system.loc[SYSTEMS["lpm"]]
        row = {"workload": workload, "programs_s": ours["programs_s"]}
        for key in ("transformers", "no-cache", "fcfs", "no-hints", *PEER_SYSTEMS):
            if SYSTEMS[key] not in present:
                continue  # a system that was not asked for gets no column
            row[f"x_vs_{key}"] = ours["programs_s"] / by_system["programs_s"].get(SYSTEMS[key], math.nan)
        row["conformance"] = ours.get("conformance", math.nan)
        row["hit_rate"] = ours["hit_rate"]
        row["optimal_hit_rate"] = ours["optimal_hit_rate"]
        out.append(row)
    return pd.DataFrame(out)
