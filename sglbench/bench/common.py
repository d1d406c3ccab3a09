"""Shared benchmark plumbing: choosing the model (path, default or timing preset) and formatting tables."""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="local Hugging Face folder (default: the embedded model)")
    parser.add_argument("--preset", default=None, help="timing-only random-weight shape: one of synthetic.PRESETS "
                        "(e.g. qwen2.5-0.5b, qwen2.5-1.5b, llama-3.2-1b, llama-8b)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto")


def resolve_model(args: argparse.Namespace) -> tuple[str, str]:
    """Return (model path, label). A preset is written to a temporary folder with random weights."""
    if args.model and args.preset:
        raise SystemExit("give --model or --preset, not both")
    if args.preset:
        from sglbench.runtime.models.synthetic import make_preset_checkpoint

        out = Path(tempfile.mkdtemp(prefix=f"sglbench-{args.preset}-"))
        make_preset_checkpoint(out, args.preset)
        return str(out), f"{args.preset} (random weights, timing only)"
    if args.model:
        return args.model, args.model
    from sglbench.default_model import default_model_path

    return default_model_path(), "default embedded model"


def run_isolated(fn: Callable[..., R], *args: Any) -> R:
    """fn(*args) in a freshly spawned process (fn importable by name, arguments and result picklable).

    For CPU measurements: torch's OpenMP runtime gives every thread that computes a pool of its own and,
    once a process holds more pool threads than cores, stops spinning between ops, so a model stepped on
    sglbench's engine thread and another run on the caller's thread slow each other's small ops 2-3x.
    Each system measured in its own process runs as it would alone."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def print_table(rows: list[dict], title: str) -> None:
    """A plain fixed-width table on stdout (no pandas needed for printing)."""
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)
