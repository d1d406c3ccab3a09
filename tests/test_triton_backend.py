"""The Triton attention backend inside the engine gives the torch backend's greedy tokens.

On the CPU the kernels run under TRITON_INTERPRET=1 (set in conftest), so shapes stay tiny.
"""

from __future__ import annotations

import pytest

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from tests.helpers import assert_pool_full

pytest.importorskip("triton")


def test_triton_backend_matches_torch_backend(tmp_path):
    path = make_random_checkpoint(tmp_path, family="qwen2", seed=2, num_hidden_layers=1)
    prompts = [[1, *range(10, 30)], [1, 50, 51], [1, *range(100, 112)]]
    outputs = {}
    for backend in ("torch", "triton"):
        with Runtime(str(path), device="cpu", attention_backend=backend, max_total_tokens=256) as rt:
            first = rt.generate(prompts, max_new_tokens=4, temperature=0, ignore_eos=True)
            # The second round reads the prompts' prefixes from the radix cache (extend over a prefix).
            second = rt.generate([[*p, 7, 8, 9] for p in prompts], max_new_tokens=4, temperature=0, ignore_eos=True)
            assert all(r["meta_info"]["cached_tokens"] > 0 for r in second)
            outputs[backend] = [r["output_ids"] for r in first + second]
            assert rt.engine.attention.name == backend
            assert_pool_full(rt)
    assert outputs["triton"] == outputs["torch"]
