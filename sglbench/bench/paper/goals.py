"""The goals of the comparison with the peer systems, checked on one suite table (all systems measured
side by side in one run): sglbench (lpm) at least 3x every peer on every workload the peer runs, at least
2x Outlines on JSON decoding and on decode-heavy fork-join, and every system's outputs conforming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from sglbench.bench.paper.runner import PEER_SYSTEMS, SYSTEMS

OVER_EVERY_PEER = 3.0
OVER_OUTLINES = 2.0
OUTLINES_WORKLOADS = ("json-regex", "llm-judge-fixed")  # JSON decoding, decode-heavy fork-join


@dataclass(frozen=True)
class Goal:
    """One goal: what it asks, whether the table meets it (None: the table cannot tell) and the evidence."""

    text: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"{verdict}  {self.text}: {self.detail}"


def _speedups(frame: pd.DataFrame, system: str, workloads: tuple[str, ...] | None = None) -> dict[str, float]:
    """sglbench (lpm) programs/s over `system`'s, per workload where both ran."""
    ours = frame[frame["system"] == SYSTEMS["lpm"]].set_index("workload")["programs_s"]
    theirs = frame[frame["system"] == system].set_index("workload")["programs_s"]
    out = {}
    for workload, value in theirs.items():
        if workloads is not None and workload not in workloads:
            continue
        if workload in ours.index and math.isfinite(value) and math.isfinite(ours[workload]) and value > 0:
            out[workload] = float(ours[workload] / value)
    return out


def _ours_failed(frame: pd.DataFrame, system: str, workloads: tuple[str, ...] | None = None) -> list[str]:
    """Workloads `system` ran where sglbench (lpm) failed: each one a miss of a goal over that system."""
    rows = frame.set_index(["workload", "system"])
    out = []
    for workload in frame.loc[frame["system"] == system, "workload"]:
        if workloads is not None and workload not in workloads:
            continue
        ours = rows.loc[(workload, SYSTEMS["lpm"])] if (workload, SYSTEMS["lpm"]) in rows.index else None
        theirs = rows.loc[(workload, system)]["programs_s"]
        if ours is not None and str(ours["note"]).startswith("failed") and math.isfinite(theirs):
            out.append(workload)
    return out


def _at_least(text: str, ratios: dict[str, float], bound: float, expected: tuple[str, ...] | None = None,
              failed: list[str] | None = None) -> Goal:
    failed = failed or []
    missing = [w for w in expected or () if w not in ratios and w not in failed]
    if not ratios and not failed:
        return Goal(text, None, "no workload where both ran")
    parts = []
    if ratios:
        worst = min(ratios, key=ratios.get)
        parts.append(f"lowest {ratios[worst]:.2f}x on {worst}; " + ", ".join(f"{w} {r:.2f}x" for w, r in ratios.items()))
    if failed:
        parts.append(f"sglbench failed on {', '.join(failed)}")
    if missing:
        parts.append(f"not measured: {', '.join(missing)}")
    passed = all(r >= bound for r in ratios.values()) and not failed and not missing
    return Goal(text, passed, "; ".join(parts))


def goals(frame: pd.DataFrame) -> list[Goal]:
    """Every goal the table can speak to: one per peer in the table, Outlines' two workloads, conformance."""
    out = []
    for key in PEER_SYSTEMS:
        name = SYSTEMS[key]
        if name not in set(frame["system"]):
            continue
        out.append(_at_least(f"sglbench >= {OVER_EVERY_PEER:g}x {name} on every workload it runs",
                             _speedups(frame, name), OVER_EVERY_PEER, failed=_ours_failed(frame, name)))
        if key == "outlines":
            out.append(_at_least(f"sglbench >= {OVER_OUTLINES:g}x Outlines on JSON and decode-heavy fork-join",
                                 _speedups(frame, name, OUTLINES_WORKLOADS), OVER_OUTLINES, OUTLINES_WORKLOADS,
                                 failed=_ours_failed(frame, name, OUTLINES_WORKLOADS)))
    ran = frame[frame["conformance"].map(lambda c: isinstance(c, float) and math.isfinite(c))]
    short = ran[ran["conformance"] < 1.0]
    detail = ("every output conformed" if short.empty else
              "; ".join(f"{r.system} on {r.workload}: {r.conformance:.0%}" for r in short.itertuples()))
    notes = frame["note"].astype(str)
    failed = frame[notes.str.startswith("failed")]  # ran and broke: no output at all
    if not failed.empty:
        detail += "; failed: " + "; ".join(f"{r.system} on {r.workload}" for r in failed.itertuples())
    absent = sorted(set(frame[notes.str.startswith(("unavailable", "missing"))]["system"]))
    if absent:
        detail += f"; not run (see notes): {', '.join(absent)}"
    out.append(Goal("conformance 100 % for every system", None if ran.empty else short.empty and failed.empty,
                    detail))
    return out
