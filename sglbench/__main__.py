"""Command line: `python -m sglbench quickstart` (headless main job) and `python -m sglbench bench ...`."""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

QUICKSTART_PROMPTS = [
    "Q: What is 12 + 7?\nA:",
    "Q: What is 9 - 4?\nA:",
]


def quickstart(report: str | None, device: str) -> None:
    """Run a few generations on the embedded default model, print them, and optionally write an HTML summary."""
    from sglbench.runtime.runtime import Runtime

    print("sglbench quick-start: generating with the embedded default model (notebooks arrive with the workbench)")
    start = time.perf_counter()
    with Runtime(device=device) as rt:
        print(rt)
        results = rt.generate(QUICKSTART_PROMPTS, max_new_tokens=16, temperature=0, stop=["\n"])
        rows = []
        for prompt, result in zip(QUICKSTART_PROMPTS, results):
            meta = result["meta_info"]
            print(f"--- prompt: {prompt!r}\n    output: {result['text']!r}  "
                  f"({meta['completion_tokens']} tokens, {meta['e2e_latency'] * 1000:.0f} ms)")
            rows.append((prompt, result["text"], meta["completion_tokens"], meta["e2e_latency"]))
        metrics = rt.metrics()
    print(f"done in {time.perf_counter() - start:.1f} s; cache hit rate {metrics.hit_rate:.1%}")
    if report:
        _write_summary(Path(report), rows, repr(metrics))
        print(f"report written to {report}")


def _write_summary(path: Path, rows: list[tuple], metrics: str) -> None:
    """One self-contained HTML file: inline CSS, every string escaped, no external URL."""
    body = "".join(
        f"<tr><td><pre>{html.escape(p)}</pre></td><td><pre>{html.escape(t)}</pre></td><td>{n}</td><td>{lat * 1000:.0f}</td></tr>"
        for p, t, n, lat in rows
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>sglbench quick-start</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
        "table{border-collapse:collapse}pre{margin:0}</style></head><body><h1>sglbench quick-start</h1>"
        "<table><tr><th>prompt</th><th>output</th><th>tokens</th><th>latency (ms)</th></tr>"
        f"{body}</table><h2>engine metrics</h2><pre>{html.escape(metrics)}</pre></body></html>"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sglbench")
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser("quickstart", help="run the quick-start headless and write its HTML report")
    qs.add_argument("--report", default=None, help="path of the HTML report to write")
    qs.add_argument("--device", default="auto")
    sub.add_parser("bench", help="benchmarks: python -m sglbench bench WORKLOAD ...", add_help=False)
    sv = sub.add_parser("serve", help="serve a Runtime over HTTP (SGLang-native and OpenAI-compatible API)")
    sv.add_argument("--model", default=None, help="local Hugging Face folder (default: the embedded model)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=30000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--max-total-tokens", type=int, default=None)
    args, rest = parser.parse_known_args(argv)
    if args.command in ("quickstart", "serve") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "quickstart":
        quickstart(args.report, args.device)
    elif args.command == "serve":
        from sglbench.server.app import serve

        serve(args.model, host=args.host, port=args.port, api_key=args.api_key, device=args.device,
              max_total_tokens=args.max_total_tokens)
    else:
        from sglbench.bench.__main__ import main as bench_main

        bench_main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
