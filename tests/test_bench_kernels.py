"""`python -m sglbench.bench kernels` on a machine without CUDA times the CPU path's kernels."""

from __future__ import annotations

import pytest
import torch

from sglbench.bench import kernels
from sglbench.kernel import cpu_native


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the Triton kernels are timed instead")
def test_cpu_kernel_bench_runs_small_shapes_and_checks_results(capsys):
    rows = kernels.main(["--subjects", "2", "--questions", "6", "--prefix", "40", "--suffix", "9",
                         "--linear-rows", "32", "--gemv-layers", "0"])
    native = {"C attention (cpu_native)"} if cpu_native.available() else set()
    extend = [r for r in rows if "new_tokens" in r]
    impls = {r["impl"] for r in extend}
    assert {"masked sdpa per request", "cpu_attention on torch, cut", "cpu_attention on torch, dense",
            "cpu_attention on torch, padded", "plan_extend alone", *native} < impls
    assert any(i.startswith("cpu_attention on torch, chosen: ") for i in impls)
    assert all(r["max_abs_err"] < 1e-5 for r in extend if r["max_abs_err"] != "-")
    decode = [r for r in rows if "longest" in r]
    assert [r["impl"] for r in decode if r["requests"] == 60][:4] == [*native,
        "cpu_attention on torch, chosen: shared prefix", "cpu_attention on torch, padded",
        "cpu_attention on torch, shared prefix"][:4]
    assert "cpu_attention on torch, chosen: padded" in {r["impl"] for r in decode if r["requests"] == 32}
    assert all(r["max_abs_err"] < 1e-5 for r in decode if r["max_abs_err"] != "-")
    assert all(r["ms"] > 0 for r in rows if "ms" in r)
    assert {r["layer"] for r in rows if "layer" in r} == {"qkv", "o", "gate_up", "down", "lm_head"}
    elementwise = [r for r in rows if "op" in r]
    assert len(elementwise) == (12 if cpu_native.available() else 0)  # 3 ops x 2 dtypes x 2 row counts
    assert "cpu extend attention" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the Triton kernels are timed instead")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cpu_gemv_bench_reads_every_weight_per_step(dtype):
    rows = kernels.bench_cpu_gemv(1, rows_list=(1,), lm_head=False, dtype=dtype)
    impls = [r["impl"] for r in rows]
    assert impls[0] == "F.linear" and ("C GEMV (cpu_native)" in impls) == cpu_native.available()
    size = dtype.itemsize
    assert all(r["weights_MB"] == pytest.approx(sum(n * k for n, k in kernels.QWEN_LINEARS.values()) * size / 1e6)
               for r in rows)
    assert all(r["GB/s"] > 0 for r in rows)


def test_few_shot_batch_shares_each_subjects_prefix_slots():
    q, _, _, qo, kvp, kvi = kernels.few_shot_batch(subjects=2, questions=4, prefix=10, suffix=5)
    starts = kvp.tolist()
    prefixes = [tuple(kvi[s : s + 10].tolist()) for s in starts[:-1]]
    assert prefixes[0] == prefixes[2] != prefixes[1] == prefixes[3]
    assert q.shape[0] == qo[-1] and len(set(kvi.tolist())) == 2 * 10 + q.shape[0]  # no slot reused otherwise
