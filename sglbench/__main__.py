"""Command line: `python -m sglbench quickstart` (the headless main job), `serve` and `bench`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

QUICKSTART_NOTEBOOK = "01_quickstart.ipynb"


def find_notebook(name: str) -> Path | None:
    """notebooks/NAME in the current folder or beside the package (a source checkout)."""
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = root / "notebooks" / name
        if candidate.is_file():
            return candidate
    return None


def quickstart(report: str | None, timeout: int = 600) -> Path:
    """Execute the quick-start notebook headless (nbclient) and let it write its HTML report."""
    import nbformat
    from nbclient import NotebookClient

    notebook = find_notebook(QUICKSTART_NOTEBOOK)
    if notebook is None:
        raise SystemExit(f"notebooks/{QUICKSTART_NOTEBOOK} not found: run from the sglbench checkout")
    report_path = Path(report or "reports/quickstart.html").resolve()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    os.environ["SGLBENCH_REPORT"] = str(report_path)
    os.environ.setdefault("SGLBENCH_STATIC", "1")
    print(f"sglbench quick-start: executing {notebook} headless")
    start = time.perf_counter()
    book = nbformat.read(notebook, as_version=4)
    NotebookClient(book, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(notebook.parent)}}).execute()
    executed = report_path.with_suffix(".ipynb")
    nbformat.write(book, executed)
    for cell in book.cells:
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/plain")
            if text:
                print(text.rstrip())
    print(f"done in {time.perf_counter() - start:.1f} s; report: {report_path}; executed notebook: {executed}")
    return report_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sglbench")
    sub = parser.add_subparsers(dest="command", required=True)
    qs = sub.add_parser("quickstart", help="run the quick-start headless and write its HTML report")
    qs.add_argument("--report", default=None, help="path of the HTML report to write")
    sub.add_parser("bench", help="benchmarks: python -m sglbench bench WORKLOAD ...", add_help=False)
    sv = sub.add_parser("serve", help="serve a Runtime over HTTP (SGLang-native and OpenAI-compatible API)")
    sv.add_argument("--model", default=None, help="local Hugging Face folder (default: the embedded model)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=30000)
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    sv.add_argument("--device", default="auto")
    sv.add_argument("--max-total-tokens", type=int, default=None)
    sv.add_argument("--incremental-streaming-output", action="store_true",
                    help="stream chunks carry only their new logprobs (SGLang's flag of the same name)")
    sv.add_argument("--tool-call-parser", default=None,
                    help="tool-call format of chat completions: hermes (Qwen2.5/Qwen3), llama3, mistral, or none "
                         "(default: from the model folder)")
    sv.add_argument("--reasoning-parser", default=None,
                    help="split <think> reasoning into reasoning_content: qwen3, deepseek-r1, ..., or none "
                         "(default: qwen3 when the chat template writes <think>)")
    args, rest = parser.parse_known_args(argv)
    if args.command in ("quickstart", "serve") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "quickstart":
        quickstart(args.report)
    elif args.command == "serve":
        from sglbench.server.app import serve

        serve(args.model, host=args.host, port=args.port, api_key=args.api_key, device=args.device,
              max_total_tokens=args.max_total_tokens, incremental_streaming_output=args.incremental_streaming_output,
              tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser)
    else:
        from sglbench.bench.__main__ import main as bench_main

        bench_main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
