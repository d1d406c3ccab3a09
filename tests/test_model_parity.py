"""Our Llama-family runner against transformers on random tiny checkpoints of every family (fp32, and bf16
within bf16 tolerance)."""

from __future__ import annotations

import pytest
import torch
import transformers

from sglbench.kernel import cpu_attention, cpu_features, cpu_linear, cpu_native
from sglbench.runtime.attention import TorchAttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.kv_pool import KVPool, KVPoolConfig
from sglbench.runtime.model_config import ModelConfig, UnsupportedModelError
from sglbench.runtime.models.loader import load_model
from sglbench.runtime.models.synthetic import FAMILIES, make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from tests.helpers import assert_pool_full, hf_greedy

PROMPT_LENS = (5, 17, 33)


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp(request.param), family=request.param, seed=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return path, hf


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in PROMPT_LENS]


def _extend_batch(chunks, pool, starts) -> ForwardBatch:
    """A ragged extend batch: chunk i continues request i from position starts[i] (slots = positions + 1 + 64 i)."""
    ids, pos, out, kv_idx, qo, kv, rows = [], [], [], [], [0], [0], []
    for i, (chunk, start) in enumerate(zip(chunks, starts)):
        base = 1 + 64 * i
        ids += chunk
        pos += list(range(start, start + len(chunk)))
        out.append(torch.arange(base + start, base + start + len(chunk)))
        kv_idx.append(torch.arange(base, base + start + len(chunk)))
        rows += list(range(qo[-1], qo[-1] + len(chunk)))
        qo.append(qo[-1] + len(chunk))
        kv.append(kv[-1] + start + len(chunk))
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return ForwardBatch(ForwardMode.EXTEND, t(ids), t(pos), torch.cat(out), t(qo), t(kv), torch.cat(kv_idx), t(rows))


def test_logits_match_transformers_batched_and_chunked(checkpoint):
    path, hf = checkpoint
    config = ModelConfig.from_path(path)
    model = load_model(path, "cpu", torch.float32, config)
    pool = KVPool(KVPoolConfig(256, config.num_layers, config.num_kv_heads, config.head_dim, torch.float32, "cpu"))
    backend = TorchAttentionBackend(pool, config.head_dim**-0.5)
    prompts = _prompts(config.vocab_size)
    # First half of each prompt as one batch, then the rest over the cached prefix.
    halves = [len(p) // 2 for p in prompts]
    first = model(_extend_batch([p[:h] for p, h in zip(prompts, halves)], pool, [0] * 3), backend)
    second = model(_extend_batch([p[h:] for p, h in zip(prompts, halves)], pool, halves), backend)
    offsets_first = [0, *list(torch.tensor(halves).cumsum(0).tolist())]
    offsets_second = [0, *list(torch.tensor([len(p) - h for p, h in zip(prompts, halves)]).cumsum(0).tolist())]
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf(torch.tensor([p])).logits[0]  # [len, vocab]
        ours = torch.cat([first[offsets_first[i] : offsets_first[i + 1]], second[offsets_second[i] : offsets_second[i + 1]]])
        assert (ours - ref).abs().max().item() < 1e-4


def test_greedy_tokens_match_transformers(checkpoint):
    path, hf = checkpoint
    prompts = _prompts(ModelConfig.from_path(path).vocab_size)
    with Runtime(str(path), device="cpu", max_total_tokens=512) as rt:
        results = rt.generate(prompts, max_new_tokens=32, temperature=0, ignore_eos=True)
        for p, r in zip(prompts, results):
            assert r["output_ids"] == hf_greedy(hf, p, 32)
        assert_pool_full(rt)


def test_model_config_reads_each_family(checkpoint):
    path, _ = checkpoint
    config = ModelConfig.from_path(path)
    assert config.num_kv_heads < config.num_heads  # GQA in every tiny family
    assert config.num_params() > 0


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}')
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        Runtime(str(tmp_path), device="cpu")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_path"):
        Runtime(str(tmp_path / "nowhere"), device="cpu")


# ---------------------------------------------------------------- bf16: packed linears, fused decode attention
@pytest.fixture(scope="module", params=FAMILIES)
def bf16_checkpoint(request, tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp(f"{request.param}_bf16"), family=request.param, seed=1,
                                  dtype=torch.bfloat16)
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    return path, hf32, hf16


def _decode_batch(token: int, pos: int, base: int) -> ForwardBatch:
    """One decode step of one request whose context sits in slots base .. base + pos."""
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return ForwardBatch(ForwardMode.DECODE, t([token]), t([pos]), t([base + pos]), t([0, 1]), t([0, pos + 1]),
                        torch.arange(base, base + pos + 1), t([0]))


@pytest.mark.parametrize("native", [True, False], ids=["c-kernels", "torch-only"])
def test_bf16_logits_within_bf16_tolerance_of_transformers(bf16_checkpoint, native, monkeypatch):
    """Prefill then token-by-token decode in bf16 (linears packed where this CPU allows), with the C kernels
    (kernel/cpu_native.py: GEMV, decode attention, RMSNorm, rotary) and without: every position's logits are
    as close to transformers' fp32 ones as transformers' own bf16 run is (bf16 rounding, not a different
    function)."""
    if native and not cpu_native.available():
        pytest.skip(f"the C kernels are off here: {cpu_native.unavailable_reason()}")
    if not native:
        monkeypatch.setattr(cpu_native, "_load", lambda: (None, "off in this test"))
    path, hf32, hf16 = bf16_checkpoint
    config = ModelConfig.from_path(path)
    model = load_model(path, "cpu", torch.bfloat16, config)
    packed = [m.packed for m in model.modules() if isinstance(m, cpu_linear.Linear)]
    assert all(packed) if cpu_linear.packing_available(torch.bfloat16) else not any(packed)
    if config.tie_word_embeddings:  # the lookup keeps the dense embedding; a packed head is its own copy
        assert not model.model.embed_tokens.weight.is_mkldnn
        assert torch.equal(model.state_dict()["lm_head.weight"], model.model.embed_tokens.weight.detach())
    pool = KVPool(KVPoolConfig(256, config.num_layers, config.num_kv_heads, config.head_dim, torch.bfloat16, "cpu"))
    backend = TorchAttentionBackend(pool, config.head_dim**-0.5)
    prompt = _prompts(config.vocab_size)[2]
    n = len(prompt) - 10
    ours = [model(_extend_batch([prompt[:n]], pool, [0]), backend)]
    ours += [model(_decode_batch(prompt[p], p, 1), backend) for p in range(n, len(prompt))]
    ours = torch.cat(ours)
    with torch.no_grad():
        ref32 = hf32(torch.tensor([prompt])).logits[0]
        ref16 = hf16(torch.tensor([prompt])).logits[0].float()
    hf_error = (ref16 - ref32).abs().max().item()
    assert 0 < hf_error < 0.1 * ref32.abs().max().item()  # the tolerance is bf16's, and bf16 did round
    assert (ours - ref32).abs().max().item() <= 2 * hf_error


def test_bf16_checkpoint_dtype_choice_is_reported(bf16_checkpoint):
    """dtype="auto" on a bf16 checkpoint, served end to end with chunked prefill (chunks that need no logits)."""
    path, _, _ = bf16_checkpoint
    prompts = _prompts(ModelConfig.from_path(path).vocab_size)
    with Runtime(str(path), device="cpu", max_total_tokens=256, chunked_prefill_size=8) as rt:
        info = rt.model_info()
        results = rt.generate(prompts, max_new_tokens=4, temperature=0, ignore_eos=True)
        assert [len(r["output_ids"]) for r in results] == [4] * len(prompts)
        assert_pool_full(rt)
    assert info.dtype == ("torch.bfloat16" if cpu_features.detect().fast_bf16 else "torch.float32")
    assert info.dtype_reason.startswith("auto: checkpoint stored in bfloat16")
    assert info.cpu_features == cpu_features.detect().describe()
    dtype = torch.bfloat16 if "bfloat16" in info.dtype else torch.float32
    if cpu_native.available():  # bf16: dense weights (kept beside the packed ones), fp32: small, so packed copies
        widest = (f"decode batches up to {cpu_native.gemv_batch(dtype)}" if dtype == torch.bfloat16
                  else "every decode batch")
        assert info.cpu_kernels.startswith(f"on: decode layers as one call each for {widest}")
    else:
        assert info.cpu_kernels == cpu_native.describe(dtype)
    layers = ModelConfig.from_path(path).num_layers
    packs = info.dtype == "torch.bfloat16" and cpu_linear.packing_available(torch.bfloat16)
    assert info.packed_linears == (4 * layers + 1 if packs else 0)  # qkv, o, gate_up, down; the lm-head


@pytest.mark.parametrize("requests", [3, 7])  # within the C GEMV's width (4 rows), then oneDNN's
def test_bf16_batched_decode_runs_as_one_batch_and_agrees_with_the_torch_path(bf16_checkpoint, requests,
                                                                               monkeypatch):
    """A batch of several requests decodes in one step, with the C kernels' strided query views and all: no
    step falls back to running requests one by one ("engine.isolate"), and the greedy tokens equal the
    torch-only path's."""
    path, _, _ = bf16_checkpoint
    prompts = _prompts(ModelConfig.from_path(path).vocab_size)
    prompts = (prompts * 4)[:requests]
    # bf16 prefills go to the C kernel only on machines where it outruns torch's flash kernel (it computes in
    # fp32, so its bf16 outputs round differently): pinned to torch's here, the decode steps alone are compared.
    monkeypatch.setattr(cpu_attention, "c_kernel_wins", lambda *shape: False)

    def run() -> tuple[list[list[int]], list]:
        with Runtime(str(path), device="cpu", dtype="bfloat16", max_total_tokens=512) as rt:
            outs = [r["output_ids"] for r in rt.generate(prompts, max_new_tokens=5, temperature=0, ignore_eos=True)]
            return outs, rt.engine.events.since(0, kinds=("engine.isolate",))

    native, isolated = run()
    assert isolated == []
    monkeypatch.setattr(cpu_native, "_load", lambda: (None, "off in this test"))
    torch_only, isolated = run()
    assert isolated == []
    assert native == torch_only


def test_dense_weights_kept_for_the_gemv_only_within_the_memory_share(bf16_checkpoint, monkeypatch):
    """The C GEMV needs dense weights beside oneDNN's packed ones: a second copy, kept only while it takes at
    most cpu_linear.DENSE_COPY_SHARE of the machine's memory; otherwise one packed copy, as without the kernels,
    and model info says the GEMV is off and why."""
    if not (cpu_native.available() and cpu_linear.packing_available(torch.bfloat16)):
        pytest.skip("needs the C kernels and oneDNN packing")
    path, _, _ = bf16_checkpoint
    linears = lambda model: [m for m in model.modules() if isinstance(m, cpu_linear.Linear)]  # noqa: E731
    roomy = load_model(path, "cpu", torch.bfloat16)
    assert all(m.packed_weight is not None and not m.weight.is_mkldnn for m in linears(roomy))
    monkeypatch.setattr(cpu_features, "physical_memory_bytes", lambda: 1 << 16)  # 64 KiB: no room for a copy
    tight = load_model(path, "cpu", torch.bfloat16)
    assert all(m.packed_weight is None and m.packed for m in linears(tight))
    with Runtime(str(path), device="cpu", dtype="bfloat16", max_total_tokens=128) as rt:
        assert "GEMV off" in rt.model_info().cpu_kernels
        out = rt.generate([5, 6, 7, 8], max_new_tokens=3, temperature=0, ignore_eos=True)
        assert len(out["output_ids"]) == 3


def _decode_step(tokens: list[int], lens: list[int]) -> ForwardBatch:
    """One new token per request after `_extend_batch`'s layout: request i's context is slots 1 + 64 i onwards."""
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    out = [1 + 64 * i + n for i, n in enumerate(lens)]
    kv_idx = torch.cat([torch.arange(1 + 64 * i, 1 + 64 * i + n + 1) for i, n in enumerate(lens)])
    kv = [0, *torch.tensor([n + 1 for n in lens]).cumsum(0).tolist()]
    return ForwardBatch(ForwardMode.DECODE, t(tokens), t(lens), t(out), t(list(range(len(lens) + 1))), t(kv), kv_idx,
                        t(list(range(len(lens)))))


def _fused_against_layer_by_layer(path, dtype, monkeypatch, requests: int = 3):
    """One decode step of `requests` requests with each layer in one C call, and the same step layer by layer
    (the C GEMV, attention and element-wise kernels, or torch): (fused logits, plain logits, fused K, plain K)
    and how many steps went through cpu_native.decode_layers."""
    config = ModelConfig.from_path(path)
    model = load_model(path, "cpu", dtype, config)
    pool = KVPool(KVPoolConfig(512, config.num_layers, config.num_kv_heads, config.head_dim, dtype, "cpu"))
    backend = TorchAttentionBackend(pool, config.head_dim**-0.5)
    prompts = (_prompts(config.vocab_size) * 3)[:requests]
    model(_extend_batch(prompts, pool, [0] * requests), backend)
    calls = []
    original = cpu_native.decode_layers
    monkeypatch.setattr(cpu_native, "decode_layers", lambda *a, **k: calls.append(1) or original(*a, **k))
    step = lambda: _decode_step(list(range(7, 7 + requests)), [len(p) for p in prompts])  # noqa: E731
    fused = model(step(), backend)
    new_slots = step().out_cache_loc
    k_fused = [pool.k_buffers[i][new_slots].clone() for i in range(config.num_layers)]
    with monkeypatch.context() as m:
        m.setattr(type(model.model), "_fused_decode", lambda *a: None)
        plain = model(step(), backend)
    k_plain = [pool.k_buffers[i][new_slots].clone() for i in range(config.num_layers)]
    return fused, plain, k_fused, k_plain, len(calls)


@pytest.mark.parametrize("layout", ["packed", "dense"])
def test_fp32_fused_decode_layers_match_the_layer_by_layer_path(checkpoint, layout, monkeypatch):
    """An fp32 decode step with each layer in one C call (cpu_native.decode_layers), on packed copies of the
    weights (small models) or on the model's dense weights (larger ones; forced here), q/k norms (Qwen3)
    included, gives the layer-by-layer path's logits and K/V; model info says which path decodes."""
    path, _ = checkpoint
    if not cpu_native.available():
        pytest.skip(f"the C kernels are off here: {cpu_native.unavailable_reason()}")
    if layout == "dense":
        monkeypatch.setattr(cpu_native, "FUSED_DECODE_MAX_BYTES", 0)
    fused, plain, k_fused, k_plain, calls = _fused_against_layer_by_layer(path, torch.float32, monkeypatch)
    assert calls == 1
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for k, ref in zip(k_fused, k_plain):
        torch.testing.assert_close(k, ref, rtol=1e-6, atol=1e-6)
    with Runtime(str(path), device="cpu", max_total_tokens=256) as rt:
        kernels = rt.model_info().cpu_kernels
    widest = ("every decode batch" if layout == "packed"
              else f"decode batches up to {cpu_native.gemv_batch(torch.float32)}")
    assert kernels.startswith(f"on: decode layers as one call each for {widest}")


def test_bf16_fused_decode_layers_equal_the_layer_by_layer_c_kernels(bf16_checkpoint, monkeypatch):
    """bf16 decode layers in one call each, on the dense weights the C GEMV reads, round where the layer-by-layer
    kernels round: the same logits and K/V to the bit; a batch wider than `gemv_batch` stays layer by layer."""
    if not (cpu_native.available() and cpu_linear.keeps_dense(torch.bfloat16)):
        pytest.skip("needs the C kernels and room for the dense bf16 weights")
    path, _, _ = bf16_checkpoint
    fused, plain, k_fused, k_plain, calls = _fused_against_layer_by_layer(path, torch.bfloat16, monkeypatch)
    assert calls == 1
    assert torch.equal(fused, plain)
    assert all(torch.equal(k, ref) for k, ref in zip(k_fused, k_plain))
    wider = cpu_native.gemv_batch(torch.bfloat16) + 1
    *_, calls = _fused_against_layer_by_layer(path, torch.bfloat16, monkeypatch, requests=wider)
    assert calls == 0


def test_fused_decode_layers_refuse_out_of_range_slots_and_positions(checkpoint):
    path, _ = checkpoint
    if not cpu_native.available():
        pytest.skip(f"the C kernels are off here: {cpu_native.unavailable_reason()}")
    config = ModelConfig.from_path(path)
    model = load_model(path, "cpu", torch.float32, config)
    weights = model.model.fused_decode_weights()
    assert weights is not None
    pool = KVPool(KVPoolConfig(64, config.num_layers, config.num_kv_heads, config.head_dim, torch.float32, "cpu"))
    cis = torch.view_as_real(model.model.rotary_emb.cis)
    slots = pool.k_buffers[0].shape[0]
    embedding = torch.randn(2, config.hidden_size)
    good = dict(positions=torch.tensor([3, 5]), out_loc=torch.tensor([4, 6]), slots=torch.tensor([[1, 2, 3, 4, 0, 0],
                [7, 8, 9, 10, 11, 6]]), lens=torch.tensor([4, 6]))

    def call(**changes):
        args = {**good, **changes}
        return cpu_native.decode_layers(embedding.clone(), weights, cis, args["positions"], pool.k_buffers,
                                        pool.v_buffers, args["out_loc"], args["slots"], args["lens"], 0.1)

    for bad in (dict(out_loc=torch.tensor([4, slots])), dict(positions=torch.tensor([3, cis.shape[0]])),
                dict(slots=torch.tensor([[1, 2, 3, slots, 0, 0], [7, 8, 9, 10, 11, 6]])), dict(lens=torch.tensor([4, 7]))):
        before = pool.k_buffers[0].clone()
        with pytest.raises(RuntimeError, match="out of range"):
            call(**bad)
        assert torch.equal(pool.k_buffers[0], before)  # refused before anything was written
    with pytest.raises(ValueError, match="int64"):
        call(lens=torch.tensor([4, 6], dtype=torch.int32))
    assert torch.isfinite(call()).all()
    # The extend form: both rows one request's new tokens; its rows must add up to the batch, its queries fit.
    one = dict(slots=torch.tensor([[1, 2, 3, 4, 5, 6]]), lens=torch.tensor([6]))
    extend = lambda qo, **kw: cpu_native.decode_layers(  # noqa: E731
        embedding.clone(), weights, cis, torch.tensor([4, 5]), pool.k_buffers, pool.v_buffers, torch.tensor([5, 6]),
        kw.get("slots", one["slots"]), kw.get("lens", one["lens"]), 0.1, torch.tensor(qo))
    assert torch.isfinite(extend([0, 2])).all()
    for qo, kw in (([0, 3], {}), ([0, 1], {}), ([0, 2], {"lens": torch.tensor([1])})):
        with pytest.raises(RuntimeError, match="out of range"):
            extend(qo, **kw)
    dense = [layer.decode_weights(packed=False) for layer in model.model.layers]  # the GEMV's width at most
    wide = cpu_native.gemv_batch(torch.float32) + 1
    with pytest.raises(ValueError, match=f"batches of up to {wide - 1}"):
        cpu_native.decode_layers(torch.randn(wide, config.hidden_size), dense, cis, torch.arange(wide),
                                 pool.k_buffers, pool.v_buffers, torch.arange(1, wide + 1),
                                 torch.arange(1, wide + 1).view(wide, 1), torch.ones(wide, dtype=torch.int64), 0.1)
    # One call runs every layer: they must share one layout (packed and dense mixed are refused).
    with pytest.raises(ValueError, match="one shape, dtype and layout"):
        cpu_native.decode_layers(embedding.clone(), [weights[0], *dense[1:]], cis, good["positions"], pool.k_buffers,
                                 pool.v_buffers, good["out_loc"], good["slots"], good["lens"], 0.1)


def test_fused_decode_weights_are_packed_again_after_the_weights_change(checkpoint):
    path, _ = checkpoint
    config = ModelConfig.from_path(path)
    model = load_model(path, "cpu", torch.float32, config)
    first = model.model.fused_decode_weights()
    if first is None:
        pytest.skip(f"the C kernels are off here: {cpu_native.unavailable_reason()}")
    assert model.model.fused_decode_weights() is first  # cached
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(2)  # in place
    second = model.model.fused_decode_weights()
    assert second is not first
    torch.testing.assert_close(second[0].down, first[0].down * 2)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    assert model.model.fused_decode_weights() is not second
