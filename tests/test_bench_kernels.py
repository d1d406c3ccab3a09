"""`python -m sglbench.bench kernels` on a machine without CUDA times the CPU path's kernels."""

from __future__ import annotations

import pytest
import torch

from sglbench.bench import kernels


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the Triton kernels are timed instead")
def test_cpu_kernel_bench_runs_small_shapes_and_checks_results(capsys):
    rows = kernels.main(["--subjects", "2", "--questions", "6", "--prefix", "40", "--suffix", "9",
                         "--linear-rows", "32"])
    extend = [r for r in rows if "new_tokens" in r]
    impls = {r["impl"] for r in extend}
    assert {"masked sdpa per request", "cpu_attention, cut", "cpu_attention, dense", "cpu_attention, padded",
            "plan_extend alone"} < impls
    assert any(i.startswith("cpu_attention, chosen: ") for i in impls)
    assert all(r["max_abs_err"] < 1e-5 for r in extend if r["max_abs_err"] != "-")
    decode = [r for r in rows if "longest" in r]
    assert [r["impl"] for r in decode if r["requests"] == 60][:3] == [
        "cpu_attention, chosen: shared prefix", "cpu_attention, padded", "cpu_attention, shared prefix"]
    assert next(r["impl"] for r in decode if r["requests"] == 32) == "cpu_attention, chosen: padded"  # none shared
    assert all(r["max_abs_err"] < 1e-5 for r in decode if r["max_abs_err"] != "-")
    assert all(r["ms"] > 0 for r in rows)
    assert {r["layer"] for r in rows if "layer" in r} == {"qkv", "o", "gate_up", "down", "lm_head"}
    assert "cpu extend attention" in capsys.readouterr().out


def test_few_shot_batch_shares_each_subjects_prefix_slots():
    q, _, _, qo, kvp, kvi = kernels.few_shot_batch(subjects=2, questions=4, prefix=10, suffix=5)
    starts = kvp.tolist()
    prefixes = [tuple(kvi[s : s + 10].tolist()) for s in starts[:-1]]
    assert prefixes[0] == prefixes[2] != prefixes[1] == prefixes[3]
    assert q.shape[0] == qo[-1] and len(set(kvi.tolist())) == 2 * 10 + q.shape[0]  # no slot reused otherwise
