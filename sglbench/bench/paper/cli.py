"""Command line of the paper workloads, shared by every workload module and `all`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from sglbench.bench.common import add_model_args, print_table, resolve_model
from sglbench.bench.paper.base import SIZES, Workload
from sglbench.bench.paper.goals import goals
from sglbench.bench.paper.report import save
from sglbench.bench.paper.runner import DEFAULT_SYSTEMS, SYSTEMS, SuiteConfig, SuiteResult, run_suite, summary
from sglbench.runtime.runtime import resolve_device


def main(workloads: Sequence[Workload], argv: list[str] | None, prog: str) -> SuiteResult:
    """Parse options, run the workloads on every system, print the tables and save the results."""
    parser = argparse.ArgumentParser(
        prog=f"python -m sglbench.bench {prog}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SGLang paper workloads on sglbench and its baselines: one table of programs/s, latency, "
                    "cache hit rate and its optimum.\n\n" + "\n".join(f"  {w.name}: {w.summary}" for w in workloads))
    add_model_args(parser)
    parser.add_argument("--size", choices=SIZES, default="small", help="tiny (tests), small (CPU), full (GPU)")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS),
                        help=f"comma-separated subset of {list(SYSTEMS)}; outlines, guidance and lmql are the peer "
                             "systems (pip install -e '.[peers]'), e.g. --systems lpm,outlines,guidance,lmql,transformers")
    parser.add_argument("--out", default="bench_results", help="folder for the CSV, JSON, SVG and HTML files")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool size of the engine")
    parser.add_argument("--context-length", type=int, default=None,
                        help="sglbench's context (default: the model's); past the model's it needs "
                             "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1, as in SGLang, e.g. --size full on the "
                             "embedded model (2,048), whose longest full-size prompts are ~3,000 tokens")
    parser.add_argument("--hf-batch-size", type=int, default=16, help="rows per transformers call")
    parser.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL, run through sgl.OpenAI")
    parser.add_argument("--endpoint-model", default="default", help="model name sent to --endpoint")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per workload and system, each from a cold cache; the fastest is kept")
    parser.add_argument("--no-isolate", action="store_true",
                        help="on the CPU, run every system in this process (by default each model's systems run "
                             "in a process of their own, so they do not slow each other's torch threads down)")
    parser.add_argument("--workloads", default=None,
                        help=f"comma-separated subset of {[w.name for w in workloads]} (default: all of them)")
    args = parser.parse_args(argv)
    if args.workloads:
        names = [n.strip() for n in args.workloads.split(",") if n.strip()]
        unknown = sorted(set(names) - {w.name for w in workloads})
        if unknown:
            parser.error(f"unknown workloads {unknown}")
        workloads = [w for w in workloads if w.name in names]
    path, label = resolve_model(args)
    config = SuiteConfig(
        model_path=path, model_label=label, size=args.size, device=args.device, dtype=args.dtype,
        systems=tuple(s.strip() for s in args.systems.split(",") if s.strip()), timing_only=args.preset is not None,
        max_total_tokens=args.max_total_tokens, context_length=args.context_length,
        hf_batch_size=args.hf_batch_size, endpoint=args.endpoint,
        endpoint_model=args.endpoint_model, repeats=args.repeats,
        isolate=not args.no_isolate and resolve_device(args.device) == "cpu",
    )
    print(f"{prog} ({args.size}): {label}, device={args.device}")
    result = run_suite(workloads, config)
    meta = result.meta
    print_table(result.frame.to_dict(orient="records"),
                f"SGLang paper workloads, {label}, size {args.size}, device {meta['device']}, "
                f"{meta['torch_threads']} torch threads")
    print_table(summary(result.frame).to_dict(orient="records"), "sglbench (lpm): speedup over each system (x)")
    print("\nGoals (every system side by side in this run):")
    for goal in goals(result.frame):
        print("  " + goal.line())
    paths = save(result, args.out, f"paper-{prog}-{args.size}")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return result
