"""The device check: everything a lent GPU should confirm, in one run of at most 8 minutes.

    python -m sglbench.bench device-check --out DIR            # on one H100/H200
    python -m sglbench.bench device-check --out DIR --dry-run  # on the CPU: a tiny model, small shapes

Writes DIR/device-check.json (rewritten after each section, so a run cut short keeps what it measured)
and DIR/device-check.log. Sections, in order:

    kernel_tests  the Triton kernel, Triton backend and decode-graph tests under pytest, bf16/fp16 cases
                  included (skipped on the CPU)
    parity        greedy tokens of a random small model of each family on the device, decode graphs on
                  and off, against the CPU torch path (fp32); bf16 graphs on against off
    decode        `bench decode` at the llama-1b shape, batch 1/8/64: tok/s, host ms per step, fraction
                  of the HBM roofline (weight bytes per step over the measured copy bandwidth); batch 1
                  again with graphs off
    attention     Triton extend attention at 4k against SDPA, decode attention at 4k-32k contexts as a
                  fraction of the copy bandwidth
    fewshot       a 2,000-token prefix, 64 questions, 4 new tokens: sglbench against transformers
                  `generate` (naive) and the careful user who computes the prefix KV once
    goals         the issue's goals, PASS/FAIL (a dry run prints them too; its numbers mean nothing)

A section that raises is recorded with its error and the run goes on. Importing this module needs
neither xgrammar, fastapi nor Jupyter.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
KERNEL_TESTS = ("tests/test_kernels.py", "tests/test_triton_backend.py", "tests/test_graph_runner.py")


@dataclass(frozen=True)
class CheckSizes:
    """Shapes and counts of one run; FULL for a GPU, DRY for the CPU dry run."""

    preset: str | None  # decode and few-shot model shape; None: a tiny random model
    dtype: str
    decode_batches: tuple[int, ...]
    decode_prompt_len: int
    decode_new_tokens: int
    extend_seq: int
    extend_batch: int
    heads: int
    kv_heads: int
    head_dim: int
    decode_contexts: tuple[int, ...]
    decode_attention_batch: int
    fewshot_prefix: int
    fewshot_questions: int
    fewshot_question_tokens: int
    fewshot_new_tokens: int
    parity_new_tokens: int
    bandwidth_mb: int
    pytest_filter: str | None  # -k expression for the kernel tests
    kernel_tests_timeout_s: int
    budget_s: int  # sections that would start after this are skipped


FULL = CheckSizes(
    preset="llama-1b", dtype="bfloat16", decode_batches=(1, 8, 64), decode_prompt_len=128, decode_new_tokens=128,
    extend_seq=4096, extend_batch=4, heads=32, kv_heads=8, head_dim=128, decode_contexts=(4096, 8192, 16384, 32768),
    decode_attention_batch=32, fewshot_prefix=2000, fewshot_questions=64, fewshot_question_tokens=32,
    fewshot_new_tokens=4, parity_new_tokens=12, bandwidth_mb=2048, pytest_filter=None, kernel_tests_timeout_s=210,
    budget_s=420,
)
DRY = CheckSizes(
    preset=None, dtype="float32", decode_batches=(1, 4), decode_prompt_len=16, decode_new_tokens=8,
    extend_seq=64, extend_batch=1, heads=4, kv_heads=2, head_dim=32, decode_contexts=(64, 128),
    decode_attention_batch=2, fewshot_prefix=96, fewshot_questions=4, fewshot_question_tokens=12,
    fewshot_new_tokens=2, parity_new_tokens=4, bandwidth_mb=32, pytest_filter="kv_indices or store_kv",
    kernel_tests_timeout_s=120, budget_s=600,
)


class Report:
    """The run's JSON record and log, both written as the run goes."""

    def __init__(self, out: Path, dry_run: bool):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                     "sections": {}}
        self._log = open(out / "device-check.log", "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.start = time.perf_counter()

    def log(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.start:7.1f} s] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def section(self, name: str, fn: Callable[[], dict], budget_s: float) -> dict:
        """Run one section, record its result (or its error, or that no time was left) and save."""
        if self.elapsed() > budget_s:
            result: dict = {"not_run": f"out of time: {self.elapsed():.0f} s of the {budget_s:.0f} s budget spent"}
            self.log(f"{name}: not run ({result['not_run']})")
        else:
            self.log(f"{name}: start")
            began = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # a section's failure is a finding; the others still run
                result = {"error": repr(exc), "traceback": traceback.format_exc(limit=8)}
                self.log(f"{name}: ERROR {exc!r}")
            result["seconds"] = round(time.perf_counter() - began, 1)
            self.log(f"{name}: done in {result['seconds']} s: {_short(result)}")
        self.data["sections"][name] = result
        self.save()
        return result

    def save(self) -> None:
        self.data["seconds"] = round(self.elapsed(), 1)
        (self.out / "device-check.json").write_text(json.dumps(self.data, indent=2, default=str))

    def close(self) -> None:
        self.save()
        self._log.close()


def _short(result: dict) -> str:
    text = json.dumps({k: v for k, v in result.items() if k not in ("traceback", "rows")}, default=str)
    return text if len(text) < 600 else text[:600] + "..."


# ---------------------------------------------------------------------------- sections
def environment(device: str) -> dict:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                            "threads": torch.get_num_threads()}
    from importlib import metadata

    for name in ("triton", "transformers", "xgrammar", "fastapi"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # missing optional packages are facts of the image
            info[name] = "missing"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    sms=props.multi_processor_count)
    return info


def kernel_tests(sizes: CheckSizes, out: Path, timeout_s: float) -> dict:
    """pytest over KERNEL_TESTS in a child process; counts from its JUnit XML."""
    junit = out / "kernel-tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_TESTS, f"--junitxml={junit}",
           "-o", "addopts="]
    if sizes.pytest_filter:
        cmd += ["-k", sizes.pytest_filter]
    try:
        import xdist  # noqa: F401  (several processes compile Triton kernels in parallel)

        cmd += ["-n", "4"]
    except ImportError:
        pass
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout_s:.0f} s", "tail": (exc.stdout or "")[-2000:]}
    (out / "kernel-tests.txt").write_text(proc.stdout + proc.stderr)
    result: dict[str, Any] = {"returncode": proc.returncode, "command": " ".join(cmd[1:]), "tail": proc.stdout[-1500:]}
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]
        result.update(counts, failed=failed[:30])
    return result


def parity(device: str, sizes: CheckSizes) -> dict:
    """Greedy tokens per family: CPU torch path vs the device with graphs on and off (fp32), and on the device
    bf16 graphs on vs off. On the CPU (dry run) the 'device' is the Triton backend under the interpreter."""
    import torch

    from sglbench.runtime.models.synthetic import FAMILIES, make_random_checkpoint
    from sglbench.runtime.runtime import Runtime

    prompts = [[1, *range(10, 15)], [1, *range(30, 49)], [1, *range(60, 93)], [1, *range(30, 45), 7, 8]]
    on_gpu = device.startswith("cuda")
    families: dict[str, dict] = {}

    def greedy(path, dev, backend, dtype, graphs: bool) -> tuple[list[list[int]], tuple[int, ...]]:
        with Runtime(str(path), device=dev, dtype=dtype, attention_backend=backend, max_total_tokens=1024,
                     max_running_requests=8, disable_cuda_graph=not graphs) as rt:
            if graphs and not on_gpu:  # the dry run: the graph runner's static buffers, run eagerly
                rt.call(lambda e: e.runner.use_graphs(e.req_to_token, (1, 2, 4, 8), capture=False))
            out = rt.generate(prompts, max_new_tokens=sizes.parity_new_tokens, temperature=0, ignore_eos=True)
            used = rt.engine.runner.graphs.sizes if rt.engine.runner.graphs else ()
            return [r["output_ids"] for r in out], used

    with tempfile.TemporaryDirectory() as tmp:
        for i, family in enumerate(FAMILIES):
            path = make_random_checkpoint(Path(tmp) / family, family=family, seed=10 + i, num_hidden_layers=2)
            cpu, _ = greedy(path, "cpu", "torch", "float32", graphs=False)
            graphs_on, sizes_on = greedy(path, device, "triton", "float32", graphs=True)
            graphs_off, _ = greedy(path, device, "triton", "float32", graphs=False)
            row: dict[str, Any] = {"device_equals_cpu": graphs_on == cpu, "graphs_on_equals_off": graphs_on == graphs_off,
                                   "captured_sizes": list(sizes_on), "graphs_ran": bool(sizes_on)}
            if graphs_on != cpu:
                row["first_mismatch"] = next(
                    {"prompt": j, "cpu": a, "device": b} for j, (a, b) in enumerate(zip(cpu, graphs_on)) if a != b)
            if on_gpu:
                on16, _ = greedy(path, device, "triton", "bfloat16", graphs=True)
                off16, _ = greedy(path, device, "triton", "bfloat16", graphs=False)
                row["bf16_graphs_on_equals_off"] = on16 == off16
            families[family] = row
            if on_gpu:
                torch.cuda.empty_cache()
    return {"families": families,
            "all_equal": all(r["device_equals_cpu"] and r["graphs_on_equals_off"] and r["graphs_ran"]
                             and r.get("bf16_graphs_on_equals_off", True) for r in families.values())}


def model_checkpoint(sizes: CheckSizes, tmp: Path) -> tuple[Path, str]:
    from sglbench.runtime.models.synthetic import make_preset_checkpoint, make_random_checkpoint

    if sizes.preset is None:
        return make_random_checkpoint(tmp / "tiny", family="llama3", seed=3, num_hidden_layers=2,
                                      max_position_embeddings=4096), "tiny llama3 (random weights)"
    return make_preset_checkpoint(tmp / sizes.preset, sizes.preset), f"{sizes.preset} (random weights, timing only)"


def decode(device: str, sizes: CheckSizes, path: Path, copy_bytes_s: float) -> dict:
    from sglbench.bench.cpu import roofline_tok_s, shape_cost
    from sglbench.bench.decode import StepTimer, measure
    from sglbench.runtime.model_config import ModelConfig
    from sglbench.runtime.runtime import Runtime

    mc = ModelConfig.from_path(str(path))
    element = 2 if sizes.dtype in ("bfloat16", "float16") else 4
    step_bytes = shape_cost(mc).decode_bytes(element)
    biggest = max(sizes.decode_batches)
    pool = biggest * (sizes.decode_prompt_len + sizes.decode_new_tokens + 16) + 1024
    rows = []
    graph_info: dict[str, str] = {}
    for graphs in (True, False):
        batches = sizes.decode_batches if graphs else (1,)
        with Runtime(str(path), device=device, dtype=sizes.dtype, max_running_requests=biggest,
                     max_total_tokens=pool, disable_cuda_graph=not graphs) as rt:
            timer = StepTimer(rt.engine)
            measure(rt, 1, sizes.decode_prompt_len, 4)  # warm-up
            for b in batches:
                row = measure(rt, b, sizes.decode_prompt_len, sizes.decode_new_tokens, timer)
                roof = roofline_tok_s(b, step_bytes, copy_bytes_s)
                rows.append({"graphs": graphs, **row, "roofline_tok_s": roof, "roofline_fraction": row["decode_tok_s"] / roof})
            graph_info[str(graphs)] = rt.model_info().cuda_graph
    return {"weight_bytes_per_step": step_bytes, "copy_bytes_s": copy_bytes_s, "rows": rows, "cuda_graph": graph_info}


def attention(device: str, sizes: CheckSizes, copy_bytes_s: float) -> dict:
    import torch

    from sglbench.bench.kernels import bench_decode, bench_extend

    dtype = getattr(torch, sizes.dtype)
    ext = bench_extend(sizes.extend_seq, sizes.extend_batch, sizes.heads, sizes.head_dim, dtype, device)
    sdpa_ms = next(r["ms"] for r in ext if r["impl"] == "sdpa")
    triton_ms = next(r["ms"] for r in ext if r["impl"] != "sdpa")
    dec = []
    for ctx in sizes.decode_contexts:
        for row in bench_decode(ctx, sizes.decode_attention_batch, sizes.heads, sizes.kv_heads, sizes.head_dim, dtype,
                                shuffled=False, device=device):
            dec.append({**row, "copy_bandwidth_fraction": row["TB/s"] * 1e12 / copy_bytes_s})
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"extend": ext, "extend_triton_over_sdpa": triton_ms / sdpa_ms, "decode": dec}


def fewshot(device: str, sizes: CheckSizes, path: Path) -> dict:
    import torch

    from sglbench.bench.baselines import hf_generate_naive, hf_generate_prefix_reuse, load_hf
    from sglbench.bench.cpu import fewshot_prompts
    from sglbench.bench.fewshot import run_system
    from sglbench.runtime.runtime import Runtime
    from sglbench.runtime.tokenizer import Tokenizer

    prompts = fewshot_prompts(Tokenizer(str(path)).hf, sizes.fewshot_prefix, sizes.fewshot_questions,
                              sizes.fewshot_question_tokens)
    longest = sizes.fewshot_prefix + 2 * sizes.fewshot_question_tokens + sizes.fewshot_new_tokens + 64
    with Runtime(str(path), device=device, dtype=sizes.dtype, max_running_requests=len(prompts),
                 context_length=longest, max_total_tokens=len(prompts) * longest + 1024) as rt:
        ours = run_system(rt, prompts, sizes.fewshot_new_tokens)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    model, tokenizer = load_hf(str(path), device, sizes.dtype)
    hf_generate_naive(model, tokenizer, prompts[:2], 1)  # warm-up
    naive = hf_generate_naive(model, tokenizer, prompts, sizes.fewshot_new_tokens)
    hf_generate_prefix_reuse(model, tokenizer, prompts[:2], 1)
    careful = hf_generate_prefix_reuse(model, tokenizer, prompts, sizes.fewshot_new_tokens)
    del model
    gc.collect()
    n = len(prompts)
    return {"sglbench_programs_s": ours["programs_s"], "hit_rate": ours["hit_rate"],
            "naive_programs_s": n / naive.wall, "careful_programs_s": n / careful.wall,
            "over_naive": ours["programs_s"] / (n / naive.wall), "over_careful": ours["programs_s"] / (n / careful.wall)}


@dataclass(frozen=True)
class Goal:
    name: str
    value: str
    passed: bool | None  # None: not measured


def goals(sections: dict[str, dict]) -> list[Goal]:
    """The issue's goals from what the sections measured."""
    out = []
    tests = sections.get("kernel_tests", {})
    out.append(Goal("kernel tests pass on the device (bf16/fp16 included)",
                    f"{tests.get('passed', '?')} passed, {tests.get('failures', '?')} failed, "
                    f"{tests.get('errors', '?')} errors, {tests.get('skipped', '?')} skipped",
                    None if "tests" not in tests else tests["failures"] + tests["errors"] == 0 and tests["passed"] > 0))
    par = sections.get("parity", {})
    out.append(Goal("greedy outputs equal: device vs CPU, CUDA graphs on (and captured) vs off",
                    json.dumps({f: {k: v for k, v in r.items() if "equals" in k or k == "graphs_ran"}
                                for f, r in par.get("families", {}).items()}), par.get("all_equal")))
    rows = sections.get("decode", {}).get("rows", [])
    b1 = next((r for r in rows if r["graphs"] and r["batch"] == 1), None)
    out.append(Goal("batch-1 decode >= 70 % of the HBM roofline",
                    "-" if b1 is None else f"{b1['decode_tok_s']:.0f} tok/s = {100 * b1['roofline_fraction']:.0f} %",
                    None if b1 is None else b1["roofline_fraction"] >= 0.70))
    att = sections.get("attention", {})
    ratio = att.get("extend_triton_over_sdpa")
    out.append(Goal("extend attention within 1.5x of SDPA at 4k", "-" if ratio is None else f"{ratio:.2f}x SDPA's time",
                    None if ratio is None else ratio <= 1.5))
    triton_rows = [r for r in att.get("decode", []) if r["impl"].startswith("triton")]
    longest = max((r["ctx"] for r in triton_rows), default=0)
    worst = min((r["copy_bandwidth_fraction"] for r in triton_rows if 2 * r["ctx"] >= longest), default=None)
    out.append(Goal(f"decode attention >= 70 % of the copy bandwidth at the long contexts ({longest // 2}+)",
                    "-" if worst is None else f"lowest {100 * worst:.0f} %", None if worst is None else worst >= 0.70))
    few = sections.get("fewshot", {})
    for key, target in (("over_naive", 10), ("over_careful", 3)):
        value = few.get(key)
        out.append(Goal(f"few-shot >= {target}x transformers {key.removeprefix('over_')}",
                        "-" if value is None else f"{value:.2f}x", None if value is None else value >= target))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m sglbench.bench device-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for device-check.json and device-check.log")
    parser.add_argument("--dry-run", action="store_true", help="the CPU path on a tiny model and small shapes")
    parser.add_argument("--only", default=None, help="comma-separated sections to run (default: all but the "
                        "environment and bandwidth, which always run): kernel_tests,parity,decode,attention,fewshot")
    parser.add_argument("--budget-s", type=int, default=None, help="skip sections that would start after this "
                        "many seconds (default: 420 on a GPU, so the run ends within 8 minutes)")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined
    import torch

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu" and not args.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    sizes = DRY if args.dry_run else FULL
    if args.budget_s is not None:
        sizes = dataclasses.replace(sizes, budget_s=args.budget_s)
    only = set(args.only.split(",")) if args.only else None
    report = Report(Path(args.out), args.dry_run)
    report.data["sizes"] = dataclasses.asdict(sizes)

    def wanted(name: str) -> bool:
        return only is None or name in only

    from sglbench.bench.cpu import bandwidth

    report.section("environment", lambda: environment(device), sizes.budget_s)
    if wanted("kernel_tests"):
        report.section("kernel_tests", lambda: kernel_tests(sizes, report.out, sizes.kernel_tests_timeout_s),
                       sizes.budget_s)
    if wanted("parity"):
        report.section("parity", lambda: parity(device, sizes), sizes.budget_s)
    limits = report.section("bandwidth", lambda: dict(zip(("read_bytes_s", "copy_bytes_s"),
                                                          bandwidth(sizes.bandwidth_mb, 5, device))), sizes.budget_s)
    copy_bytes_s = limits.get("copy_bytes_s", float("nan"))
    path = None
    with tempfile.TemporaryDirectory() as tmp:
        if wanted("decode") or wanted("fewshot"):
            made = report.section("checkpoint", lambda: {"path": str(model_checkpoint(sizes, Path(tmp))[0])},
                                  sizes.budget_s)
            path = Path(made["path"]) if "path" in made else None
        if wanted("decode") and path is not None:
            report.section("decode", lambda: decode(device, sizes, path, copy_bytes_s), sizes.budget_s)
        if wanted("attention"):
            report.section("attention", lambda: attention(device, sizes, copy_bytes_s), sizes.budget_s)
        if wanted("fewshot") and path is not None:
            report.section("fewshot", lambda: fewshot(device, sizes, path), sizes.budget_s)
    results = goals(report.data["sections"])
    report.data["goals"] = [dataclasses.asdict(g) for g in results]
    report.log("goals" + (" (dry run: the numbers mean nothing on the CPU)" if args.dry_run else ""))
    for g in results:
        verdict = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[g.passed]
        report.log(f"  {verdict:12s} {g.name}: {g.value}")
    report.close()
    return report.data


if __name__ == "__main__":
    main()
