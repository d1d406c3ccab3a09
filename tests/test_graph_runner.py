"""Decode through the CUDA-graph runner's static buffers gives the plain decode path's logits and tokens.

There are no CUDA graphs on the CPU: the runner's eager mode (capture=False) runs the very function a
graph captures, over the same padded static buffers, with the Triton kernels under TRITON_INTERPRET=1
(set in conftest). Capture itself is checked by the device check (`python -m sglbench.bench device-check`).
"""

from __future__ import annotations

import pytest
import torch

from sglbench.runtime.engine import Engine, EngineConfig
from sglbench.runtime.graph_runner import DecodeGraphRunner, capture_sizes
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.request import Request
from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling_params import SamplingParams
from tests.helpers import DEVICE

pytest.importorskip("triton")


def test_capture_sizes_follow_sglangs_ladder_and_always_reach_the_largest():
    assert capture_sizes(64) == (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64)
    assert capture_sizes(20) == (1, 2, 4, 8, 12, 16, 20)
    assert capture_sizes(1) == (1,)
    assert capture_sizes(16, [32, 4, 1, 4]) == (1, 4)  # given sizes: sorted, deduplicated, capped
    with pytest.raises(ValueError, match=r"no batch size in 1\.\.8"):
        capture_sizes(8, [16, 32])
    with pytest.raises(ValueError, match="cuda_graph_max_bs must be >= 1"):
        capture_sizes(0)


def test_graphs_are_on_only_on_cuda_with_a_capturable_backend():
    on_cpu = EngineConfig("m", device="cpu")
    assert on_cpu.graph_sizes("triton") == ((), "off: CUDA graphs need a CUDA device, this engine runs on cpu")
    cuda = EngineConfig("m", device="cuda", max_running_requests=32)
    sizes, reason = cuda.graph_sizes("triton")
    assert sizes == (1, 2, 4, 8, 12, 16, 24, 32) and reason.startswith("on: decode batches of 1..32")
    assert EngineConfig("m", device="cuda", cuda_graph_max_bs=100).graph_sizes("triton")[0][-1] == 64  # running cap
    assert EngineConfig("m", device="cuda", cuda_graph_bs=(1, 3)).graph_sizes("triton")[0] == (1, 3)
    assert cuda.graph_sizes("torch")[0] == ()
    assert EngineConfig("m", device="cuda", disable_cuda_graph=True).graph_sizes("triton") == (
        (), "off: disable_cuda_graph=True")
    with pytest.raises(ValueError, match="cuda_graph_max_bs"):
        EngineConfig("m", cuda_graph_max_bs=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(make_random_checkpoint(tmp_path_factory.mktemp("graphs"), family="llama", seed=5, num_hidden_layers=1))


def _decoding_engine(path: str, prompts: list[list[int]]) -> tuple[Engine, list[Request]]:
    """An engine whose requests have all been prefilled and sampled their first token."""
    engine = Engine(EngineConfig(path, device=DEVICE, attention_backend="triton", max_total_tokens=512,
                                 mixed_chunk=False, disable_cuda_graph=True))
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    reqs = [Request(f"r{i}", p, params) for i, p in enumerate(prompts)]
    for r in reqs:
        engine.add_request(r)
    while any(not r.output_ids for r in reqs):
        engine.step()
    return engine, reqs


def test_padded_replay_gives_the_plain_decode_logits(checkpoint):
    prompts = [[1, *range(10, 10 + n)] for n in (3, 17, 40)]  # 3 requests run padded to 4
    engine, reqs = _decoding_engine(checkpoint, prompts)
    for r in reqs:
        engine.kv.alloc_slots(r, 1)
    runner = engine.runner
    graphs = DecodeGraphRunner(runner.model, runner.attention, engine.req_to_token, (1, 4), capture=False)
    assert graphs.padded_size(3) == 4 and not graphs.fits(5)
    plain = runner.run(runner.prepare_decode(reqs, engine.req_to_token))
    replayed = graphs.run(reqs)
    assert replayed.shape == plain.shape == (3, engine.model_config.vocab_size)
    torch.testing.assert_close(replayed, plain)
    # the padded place wrote its K/V into the padding slot 0 only, read back as the same context
    lens = graphs.kv_indptr[1:5].diff().tolist()
    assert lens == [r.kv_len + 1 for r in reqs[1:]] + [1]
    assert graphs.kv_indices[int(graphs.kv_indptr[3])] == 0
    with pytest.raises(ValueError, match="need an attention backend"):
        DecodeGraphRunner(runner.model, type("B", (), {"name": "torch"})(), engine.req_to_token, (1,), False)


def test_engine_decoding_through_graphs_gives_the_same_tokens(checkpoint):
    """Batches of 3 and 5 replay padded places, 9 is past the largest size and runs eagerly; requests finish
    at different steps so the batch shrinks through the sizes; the pool stays whole."""
    prompts = [[1, *range(20 + i, 26 + 3 * i)] for i in range(9)]
    outputs = {}
    for graphs in (False, True):
        results = {}
        for group in (prompts[:3], prompts[:5], prompts):
            engine = Engine(EngineConfig(checkpoint, device=DEVICE, attention_backend="triton", max_total_tokens=512,
                                         disable_cuda_graph=True))
            replayed = []
            if graphs:
                engine.runner.use_graphs(engine.req_to_token, (1, 2, 4, 8), capture=False)
                run = engine.runner.graphs.run
                engine.runner.graphs.run = lambda reqs, run=run, seen=replayed: seen.append(len(reqs)) or run(reqs)
            reqs = [Request(f"r{i}", p, SamplingParams(max_new_tokens=3 + i % 4, temperature=0, ignore_eos=True))
                    for i, p in enumerate(group)]
            for r in reqs:
                engine.add_request(r)
            while engine.has_work():
                engine.step()
            engine.check_integrity()
            assert engine.pool.free_count + engine.cache.evictable_size() == engine.pool.num_slots
            results[len(group)] = [r.output_ids for r in reqs]
            if graphs:  # every decode step of at most 8 requests replayed; the 9-request ones ran eagerly
                assert replayed and max(replayed) == (len(group) if len(group) <= 8 else 6)
        outputs[graphs] = results
    assert outputs[True] == outputs[False]


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs are captured only on CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_graphs_replay_the_eager_decode(checkpoint, dtype):
    """Captured replays give the eager path's logits (fp32 exactly up to kernel order; bf16 within its
    precision), for batches padded inside a captured size, and a Runtime on CUDA captures by default."""
    prompts = [[1, *range(10, 10 + n)] for n in (3, 17, 40, 9, 26)]
    engine, reqs = _decoding_engine(checkpoint, prompts)
    for r in reqs:
        engine.kv.alloc_slots(r, 1)
    runner = engine.runner
    eager = DecodeGraphRunner(runner.model, runner.attention, engine.req_to_token, (1, 2, 8), capture=False)
    captured = DecodeGraphRunner(runner.model, runner.attention, engine.req_to_token, (1, 2, 8), capture=True)
    for batch in (reqs[:1], reqs[:2], reqs):
        torch.testing.assert_close(captured.run(batch), eager.run(batch))
        torch.testing.assert_close(captured.run(batch), runner.run(runner.prepare_decode(batch, engine.req_to_token)))
    with Runtime(checkpoint, device="cuda", dtype=str(dtype).removeprefix("torch."), max_total_tokens=512,
                 max_running_requests=8) as rt:
        assert rt.model_info().cuda_graph_bs == (1, 2, 4, 8)
        on = rt.generate(prompts, max_new_tokens=6, temperature=0, ignore_eos=True)
    with Runtime(checkpoint, device="cuda", dtype=str(dtype).removeprefix("torch."), max_total_tokens=512,
                 max_running_requests=8, disable_cuda_graph=True) as rt:
        assert rt.model_info().cuda_graph_bs == ()
        off = rt.generate(prompts, max_new_tokens=6, temperature=0, ignore_eos=True)
    assert [r["output_ids"] for r in on] == [r["output_ids"] for r in off]


def test_a_failed_capture_leaves_the_engine_decoding_eagerly(checkpoint, monkeypatch, caplog):
    engine = Engine(EngineConfig(checkpoint, device=DEVICE, attention_backend="triton", max_total_tokens=256,
                                 disable_cuda_graph=True))

    def refuse(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr("sglbench.runtime.model_runner.DecodeGraphRunner", refuse)
    reason = engine._capture_graphs((1, 2), "on: decode batches of 1..2 replay 2 captured graphs")
    assert engine.runner.graphs is None
    assert reason.startswith("off: capture failed (RuntimeError('operation not permitted")
    assert "decode steps run eagerly" in caplog.text
    req = Request("r", [1, 5, 6, 7], SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True))
    engine.add_request(req)
    while engine.has_work():
        engine.step()
    assert len(req.output_ids) == 3


def test_model_info_says_why_graphs_are_off():
    with Runtime(device="cpu", max_total_tokens=256) as rt:
        info = rt.model_info()
    assert info.cuda_graph_bs == () and "need a CUDA device" in info.cuda_graph
