"""The Triton attention backend inside the engine gives the torch backend's greedy tokens.

On the CPU the kernels run under TRITON_INTERPRET=1 (set in conftest), so shapes stay tiny.
"""

from __future__ import annotations

import pytest

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from tests.helpers import DEVICE, assert_pool_full

pytest.importorskip("triton")


def test_triton_backend_matches_torch_backend(tmp_path):
    path = make_random_checkpoint(tmp_path, family="qwen2", seed=2, num_hidden_layers=1)
    prompts = [[1, *range(10, 30)], [1, 50, 51], [1, *range(100, 112)]]
    outputs = {}
    for backend in ("torch", "triton"):
        with Runtime(str(path), device=DEVICE, attention_backend=backend, max_total_tokens=256) as rt:
            first = rt.generate(prompts, max_new_tokens=4, temperature=0, ignore_eos=True)
            # The second round reads the prompts' prefixes from the radix cache (extend over a prefix).
            second = rt.generate([[*p, 7, 8, 9] for p in prompts], max_new_tokens=4, temperature=0, ignore_eos=True)
            assert all(r["meta_info"]["cached_tokens"] > 0 for r in second)
            outputs[backend] = [r["output_ids"] for r in first + second]
            assert rt.engine.attention.name == backend
            assert_pool_full(rt)
    assert outputs["triton"] == outputs["torch"]


def test_triton_backend_runs_a_mixed_batch_whole(tmp_path):
    """A prefill step with decoding requests riding along is one plain extend batch to the Triton kernels:
    the same tokens as the torch backend, which splits it."""
    from sglbench.runtime.engine import Engine, EngineConfig
    from sglbench.runtime.request import Request
    from sglbench.runtime.sampling_params import SamplingParams

    path = make_random_checkpoint(tmp_path, family="llama", seed=4, num_hidden_layers=1)
    prompts = [[1, *range(10, 30)], [1, 50, 51], [1, *range(100, 112)]]
    outputs = {}
    for backend in ("torch", "triton"):
        engine = Engine(EngineConfig(str(path), device=DEVICE, attention_backend=backend, max_total_tokens=256))
        params = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)
        reqs = [Request(f"r{i}", p, params) for i, p in enumerate(prompts)]
        for r in reqs[:2]:
            engine.add_request(r)
        engine.step()  # their prefill; the third arrives while they decode
        engine.add_request(reqs[2])
        while engine.has_work():
            engine.step()
        modes = [e.data["mode"] for e in engine.events.since(0, kinds=("batch.step",))]
        assert modes[1] == "mixed"
        engine.check_integrity()
        outputs[backend] = [r.output_ids for r in reqs]
    assert outputs["triton"] == outputs["torch"]
