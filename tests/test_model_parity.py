"""Our Llama-family runner against transformers on random tiny checkpoints of every family (fp32)."""

from __future__ import annotations

import pytest
import torch
import transformers

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
