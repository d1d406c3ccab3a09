"""The device check's dry run on the CPU (the same sections a lent GPU runs, on a tiny model), and the
engine and benchmarks importing without the optional packages a GPU image lacks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from sglbench.bench import device_check

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_section_and_the_goals(tmp_path):
    data = device_check.main(["--out", str(tmp_path), "--dry-run"])
    saved = json.loads((tmp_path / "device-check.json").read_text())
    assert saved["dry_run"] is True and saved["goals"] == data["goals"]
    sections = saved["sections"]
    assert set(sections) == {"environment", "kernel_tests", "parity", "bandwidth", "checkpoint", "decode",
                             "attention", "fewshot"}
    assert not [name for name, s in sections.items() if "error" in s or "not_run" in s]
    tests = sections["kernel_tests"]
    assert tests["returncode"] == 0 and tests["passed"] >= 3 and tests["failures"] == tests["errors"] == 0
    parity = sections["parity"]
    assert parity["all_equal"] and len(parity["families"]) == 5
    assert all(f["captured_sizes"] == [1, 2, 4, 8] for f in parity["families"].values())  # the eager graph runner ran
    decode = sections["decode"]["rows"]
    assert [(r["graphs"], r["batch"]) for r in decode] == [(True, 1), (True, 4), (False, 1)]
    assert all(r["decode_tok_s"] > 0 and r["roofline_fraction"] > 0 and r["host_ms_per_step"] >= 0 for r in decode)
    assert sections["attention"]["extend"][1]["max_abs_err"] < 1e-4
    assert sections["fewshot"]["sglbench_programs_s"] > 0 and sections["fewshot"]["careful_programs_s"] > 0
    assert all(g["passed"] is not None for g in saved["goals"]) and len(saved["goals"]) == 7  # all measured
    log = (tmp_path / "device-check.log").read_text()
    assert "goals (dry run" in log and "PASS" in log


def test_sections_past_the_budget_are_skipped_and_say_so(tmp_path):
    data = device_check.main(["--out", str(tmp_path), "--dry-run", "--budget-s", "0", "--only", "parity"])
    assert data["sections"]["parity"]["not_run"].startswith("out of time")
    assert "decode" not in data["sections"]
    assert all(g["passed"] is None for g in data["goals"] if "greedy" in g["name"])


BLOCKED = ("xgrammar", "fastapi", "uvicorn", "starlette", "ipywidgets", "anywidget", "IPython", "ipykernel",
           "jupyter", "jupyterlab", "nbformat", "nbclient", "openai", "gguf", "llama_cpp", "outlines", "guidance",
           "lmql")  # none of them is on the GPU image


def test_engine_and_benchmarks_import_and_run_without_the_optional_packages():
    """A GPU image has torch, triton and transformers but none of these: the engine serves (a constrained
    request alone fails, naming what to install) and every benchmark module imports."""
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        for module in ("sglbench.bench.device_check", "sglbench.bench.decode", "sglbench.bench.kernels",
                       "sglbench.bench.fewshot", "sglbench.bench.cpu", "sglbench.bench.paper.suite",
                       "sglbench.runtime.offline_engine", "sglbench.lang"):
            importlib.import_module(module)
        from sglbench.runtime.runtime import Runtime
        with Runtime(device="cpu", max_total_tokens=256) as rt:
            try:
                rt.generate("x", max_new_tokens=2, regex="[0-9]+")
            except RuntimeError as exc:
                assert "needs xgrammar" in str(exc), exc
            else:
                raise AssertionError("a constrained request ran without xgrammar")
            print("tokens", len(rt.generate("Q: 1 + 1?", max_new_tokens=3, temperature=0)["output_ids"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tokens 3" in proc.stdout
