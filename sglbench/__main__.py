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
    sv.add_argument("--disable-cuda-graph", action="store_true", help="decode steps run eagerly on CUDA too")
    sv.add_argument("--cuda-graph-max-bs", type=int, default=None,
                    help="largest decode batch replayed from a CUDA graph (default: the running-request limit)")
    sv.add_argument("--incremental-streaming-output", action="store_true",
                    help="stream chunks carry only their new logprobs (SGLang's flag of the same name)")
    sv.add_argument("--tool-call-parser", default=None,
                    help="tool-call format of chat completions: hermes (Qwen2.5/Qwen3), llama3, mistral, or none "
                         "(default: from the model folder)")
    sv.add_argument("--reasoning-parser", default=None,
                    help="split <think> reasoning into reasoning_content: qwen3, deepseek-r1, ..., or none "
                         "(default: qwen3 when the chat template writes <think>)")
    limits = sv.add_argument_group("limits", "what one request or client may ask; refusals name the flag to raise")
    limits.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body, in MiB (413)")
    limits.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="most tokens in one prompt (400; default: the model's context length)")
    limits.add_argument("--max-samples-per-request", type=int, default=256,
                        help="most samples (prompts x n) one request may ask for (400)")
    limits.add_argument("--max-concurrent-requests", type=int, default=256,
                        help="most requests in flight per API key, or per client address without a key (429)")
    limits.add_argument("--max-stop-strings", type=int, default=64, help="most stop strings (and stop regexes) (400)")
    limits.add_argument("--max-stop-string-length", type=int, default=1024,
                        help="most characters in one stop string or stop regex (400)")
    limits.add_argument("--max-top-logprobs-num", type=int, default=64, help="most top logprobs per token (400)")
    limits.add_argument("--max-token-ids-logprob", type=int, default=1024,
                        help="most entries of token_ids_logprob (400)")
    sv.add_argument("--show-model-path", action="store_true",
                    help="report the model folder's path in /model_info and /server_info, as SGLang does (its "
                         "clients on this machine load the tokenizer from it); default: only the model's name")
    sv.add_argument("--shutdown-timeout", type=float, default=10.0,
                    help="seconds in-flight requests may finish after SIGTERM/SIGINT before they are aborted")
    args, rest = parser.parse_known_args(argv)
    if args.command in ("quickstart", "serve") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "quickstart":
        quickstart(args.report)
    elif args.command == "serve":
        from sglbench.runtime.sampling_params import RequestLimits
        from sglbench.server.app import serve
        from sglbench.server.limits import MIB, ServerLimits

        try:
            limits = ServerLimits(max_body_bytes=round(args.max_body_mb * MIB), max_prompt_tokens=args.max_prompt_tokens,
                                  max_samples_per_request=args.max_samples_per_request,
                                  max_concurrent_requests=args.max_concurrent_requests)
            request_limits = RequestLimits(max_stop_strings=args.max_stop_strings,
                                           max_stop_string_length=args.max_stop_string_length,
                                           max_top_logprobs_num=args.max_top_logprobs_num,
                                           max_token_ids_logprob=args.max_token_ids_logprob)
        except ValueError as exc:
            parser.error(str(exc))
        try:
            serve(args.model, host=args.host, port=args.port, api_key=args.api_key, device=args.device,
                  max_total_tokens=args.max_total_tokens, incremental_streaming_output=args.incremental_streaming_output,
                  tool_call_parser=args.tool_call_parser, reasoning_parser=args.reasoning_parser, limits=limits,
                  shutdown_timeout=args.shutdown_timeout, show_model_path=args.show_model_path,
                  request_limits=request_limits, disable_cuda_graph=args.disable_cuda_graph,
                  cuda_graph_max_bs=args.cuda_graph_max_bs)
        except KeyboardInterrupt:  # SIGINT: the server has drained and stopped; no traceback
            sys.exit(130)
    else:
        from sglbench.bench.__main__ import main as bench_main

        bench_main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])
