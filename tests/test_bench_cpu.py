"""`python -m sglbench.bench cpu`: the shape costs and rooflines, the goals from fixed numbers, the careful
transformers baseline, the GGUF writer, and the quick run end to end with missing peers reported."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sglbench.bench import cpu
from sglbench.bench.baselines import hf_generate_naive, hf_generate_prefix_reuse, load_hf, shared_prefix_len
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.synthetic import (
    PRESETS,
    make_preset_checkpoint,
    make_random_checkpoint,
    tiny_config,
)


def preset_config(name: str) -> ModelConfig:
    spec = dict(PRESETS[name])
    return ModelConfig.from_dict(tiny_config(spec.pop("family"), **spec).to_dict())


# ---------------------------------------------------------------------------- shapes and limits
@pytest.mark.parametrize(("preset", "params"), [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-1.5b", 1_543_714_304),
                                                ("llama-3.2-1b", 1_235_814_400)])
def test_shape_cost_counts_the_published_parameter_totals(preset, params):
    cost = cpu.shape_cost(preset_config(preset))
    assert cost.total_params == params and cost.tied
    assert cost.decode_bytes(2) == 2 * params  # tied: the lm-head reads the embedding once per step


def test_decode_bytes_and_prefill_flops_of_the_qwen_shape():
    cost = cpu.shape_cost(preset_config("qwen2.5-0.5b"))
    assert cost.layer_params == 24 * 14_912_384  # q/k/v with bias, o, gate/up/down, two norms
    assert cost.decode_bytes(4) == 4 * (cost.layer_params + 151_936 * 896 + 896)
    assert cost.prefill_flops_per_token == 2 * cost.layer_params


def test_rooflines_from_fixed_numbers():
    assert cpu.roofline_tok_s(1, 1e9, 20e9) == pytest.approx(20.0)
    assert cpu.roofline_tok_s(8, 1e9, 20e9) == pytest.approx(160.0)
    assert cpu.peak_tok_s(2e9, 1e12) == pytest.approx(500.0)


def test_measured_limits_are_positive_for_each_dtype():
    threads = torch.get_num_threads()
    limits = cpu.measure_limits(threads, ["bf16", "fp32"], megabytes=4, gemm_size=64, repeats=1)
    assert limits.threads == threads and set(limits.peak_flops) == {"bf16", "fp32"}
    assert limits.read_bytes_s > 0 and limits.copy_bytes_s > 0 and min(limits.peak_flops.values()) > 0


def test_best_limits_keep_the_higher_measurement_of_each():
    a = cpu.MachineLimits(2, read_bytes_s=5e9, copy_bytes_s=9e9, peak_flops={"bf16": 4e11, "fp32": 1e11})
    b = cpu.MachineLimits(2, read_bytes_s=20e9, copy_bytes_s=8e9, peak_flops={"bf16": 3e11, "fp32": 2e11})
    best = cpu.best_limits(a, b)
    assert (best.read_bytes_s, best.copy_bytes_s) == (20e9, 9e9)
    assert best.peak_flops == {"bf16": 4e11, "fp32": 2e11}


# ---------------------------------------------------------------------------- goals and rows from fixed numbers
LIMITS = cpu.MachineLimits(threads=2, read_bytes_s=20e9, copy_bytes_s=18e9, peak_flops={"bf16": 1e12, "fp32": 2e11})
COST = cpu.ShapeCost(layer_params=400_000_000, vocab_params=100_000_000, hidden_size=1000, tied=True)  # 1 GB bf16
MISSING = "missing: llama-cpp-python not installed"


def run_result(dtype: str, ours: dict, others: dict, llama: dict | None = None) -> cpu.RunResult:
    cells = {(m, cpu.SGL): v for m, v in ours.items()}
    cells.update(others)
    llama = llama or {m: MISSING for m in (cpu.decode_key(1), cpu.PREFILL, cpu.FEWSHOT)}
    cells.update({(m, cpu.LLAMA): v for m, v in llama.items()})
    return cpu.RunResult("p", dtype, f"torch.{cpu.DTYPES[dtype]}", COST, cells)


def test_goals_pass_and_fail_from_fixed_numbers():
    # bf16: roofline 20e9 / 1.000002e9 bytes ~ 20 tok/s; prefill peak 1e12 / 8e8 FLOPs = 1250 tok/s
    bf16 = run_result("bf16", {cpu.decode_key(1): 17.0, cpu.PREFILL: 600.0, cpu.FEWSHOT: 10.0},
                      {(cpu.decode_key(1), cpu.HF): 12.0, (cpu.FEWSHOT, cpu.HF): 0.9, (cpu.FEWSHOT, cpu.HF_CAREFUL): 4.0})
    goals = {g.name: g for g in cpu.evaluate_goals([bf16], LIMITS)}
    assert goals["batch-1 decode / bandwidth roofline"].measured == pytest.approx(17.0 * 1.000002e9 / 20e9)
    assert goals["batch-1 decode / bandwidth roofline"].passed is True  # 85 % >= 80 %
    assert goals["batch-1 decode / transformers generate"].passed is False  # 1.42x < 1.5x
    assert goals["few-shot / transformers careful"].passed is True  # 2.5x
    assert goals["few-shot / transformers naive"].passed is True  # 11.1x
    assert goals["prefill / bf16 matmul peak"].measured == pytest.approx(600 / 1250)
    assert goals["prefill / bf16 matmul peak"].passed is False
    for name in ("batch-1 decode / llama.cpp", "prefill / llama.cpp", "few-shot / llama.cpp"):
        assert goals[name].passed is None and goals[name].measured == MISSING
    rows = {r["goal"]: r for r in cpu.goal_rows(list(goals.values()))}
    assert rows["batch-1 decode / bandwidth roofline"]["measured"] == "85 %"
    assert rows["batch-1 decode / bandwidth roofline"]["result"] == "PASS"
    assert rows["prefill / bf16 matmul peak"]["target"] == ">= 50 %"
    assert rows["few-shot / llama.cpp"]["result"] == "n/a" and rows["few-shot / llama.cpp"]["measured"] == MISSING


def test_llama_cpp_goals_when_present_and_no_prefill_goal_in_fp32():
    fp32 = run_result("fp32", {cpu.decode_key(1): 8.0, cpu.PREFILL: 300.0, cpu.FEWSHOT: 3.0},
                      {(cpu.decode_key(1), cpu.HF): 4.0, (cpu.FEWSHOT, cpu.HF): 0.3, (cpu.FEWSHOT, cpu.HF_CAREFUL): 1.0},
                      llama={cpu.decode_key(1): 8.0, cpu.PREFILL: 300.0, cpu.FEWSHOT: 2.0})
    goals = {g.name: g for g in cpu.evaluate_goals([fp32], LIMITS)}
    assert "prefill / bf16 matmul peak" not in goals
    assert goals["batch-1 decode / llama.cpp"].passed is True  # equal counts: "at or above"
    assert goals["prefill / llama.cpp"].passed is False  # equal does not count: "ahead of"
    assert goals["few-shot / llama.cpp"].measured == pytest.approx(1.5) and goals["few-shot / llama.cpp"].passed
    assert goals["batch-1 decode / transformers generate"].passed is True  # 2x


def test_result_rows_hold_each_measure_against_its_limit():
    r = run_result("bf16", {cpu.decode_key(1): 10.0, cpu.decode_key(8): 40.0, cpu.PREFILL: 625.0, cpu.FEWSHOT: 5.0},
                   {(cpu.decode_key(1), cpu.HF): 9.0, (cpu.FEWSHOT, cpu.HF_CAREFUL): 2.0})
    rows = {row["measure"]: row for row in cpu.result_rows(r, LIMITS)}
    assert list(rows) == [cpu.decode_key(1), cpu.decode_key(8), cpu.PREFILL, cpu.FEWSHOT]
    assert rows[cpu.decode_key(8)]["limit"] == pytest.approx(8 * 20e9 / r.decode_bytes)
    assert rows[cpu.decode_key(1)]["of limit"] == "50 %" and rows[cpu.PREFILL]["of limit"] == "50 %"
    assert rows[cpu.decode_key(1)]["transformers naive"] == 9.0 and rows[cpu.decode_key(8)][cpu.HF_CAREFUL] == "-"
    assert rows[cpu.FEWSHOT][cpu.LLAMA] == MISSING and rows[cpu.FEWSHOT]["limit"] == "-"


def test_fewshot_work_counts_the_shared_prefix_once():
    work = cpu.FewShotWork.of([[1, 2, 3, 4, 5], [1, 2, 3, 6], [1, 2, 3, 7, 8, 9]], new_tokens=4)
    assert work == cpu.FewShotWork(programs=3, prefill_tokens=3 + 2 + 1 + 3, decode_steps=3)
    # 9 tokens x 2e9 FLOPs at 1e12 FLOP/s = 18 ms; 3 steps x 1e9 bytes at 20e9 bytes/s = 150 ms
    assert work.limit_programs_s(2e9, 1e12, 1e9, 20e9) == pytest.approx(3 / 0.168)


def test_goals_to_a_peer_say_how_far_the_machine_lets_them_go():
    work = cpu.FewShotWork(programs=16, prefill_tokens=1000, decode_steps=3)
    r = replace(run_result("fp32", {cpu.decode_key(1): 9.0, cpu.PREFILL: 200.0, cpu.FEWSHOT: 3.0},
                           {(cpu.decode_key(1), cpu.HF): 8.0, (cpu.FEWSHOT, cpu.HF): 0.2,
                            (cpu.FEWSHOT, cpu.HF_CAREFUL): 2.0}), fewshot=work)
    goals = {g.name: g for g in cpu.evaluate_goals([r], LIMITS)}
    roofline = 20e9 / r.decode_bytes  # ~10 tok/s in fp32
    decode = goals["batch-1 decode / transformers generate"]
    assert decode.ceiling == pytest.approx(roofline / 8.0) and not decode.reachable  # ~1.25x < 1.5x
    fewshot_limit = 16 / (1000 * 8e8 / 2e11 + 3 * r.decode_bytes / 20e9)
    assert r.limit(cpu.FEWSHOT, LIMITS) == pytest.approx(fewshot_limit)
    careful = goals["few-shot / transformers careful"]
    assert careful.ceiling == pytest.approx(fewshot_limit / 2.0) and careful.reachable == (fewshot_limit >= 4.0)
    assert goals["batch-1 decode / bandwidth roofline"].ceiling is None  # a fraction of the limit itself
    assert goals["few-shot / llama.cpp"].ceiling is None  # llama.cpp missing
    rows = {row["goal"]: row for row in cpu.goal_rows(list(goals.values()))}
    assert rows["batch-1 decode / transformers generate"]["result"] == "FAIL (out of reach on this machine)"
    assert rows["batch-1 decode / transformers generate"]["machine allows"] == f"{roofline / 8.0:.2f}x"
    assert rows["few-shot / transformers naive"]["result"] == "PASS"  # 15x
    table = {row["measure"]: row for row in cpu.result_rows(r, LIMITS)}
    assert table[cpu.FEWSHOT]["limit"] == pytest.approx(fewshot_limit) and table[cpu.FEWSHOT]["of limit"] != "-"


def test_missing_peers_say_what_is_missing(monkeypatch):
    absent = {"llama_cpp", "gguf"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else object())
    assert cpu.llama_cpp_missing() == "missing: llama-cpp-python not installed; no HF->GGUF converter (gguf)"
    absent.discard("llama_cpp")
    assert cpu.llama_cpp_missing() == "missing: no HF->GGUF converter (gguf)"
    absent.clear()
    assert cpu.llama_cpp_missing() is None


# ---------------------------------------------------------------------------- checkpoints, prompts and baselines
def test_preset_checkpoint_keeps_real_fields_ties_and_saves_bf16(tmp_path):
    # a vocabulary large enough for the fast (meta-device) fill, everything else small
    out = make_preset_checkpoint(tmp_path, "llama-3.2-1b", hidden_size=128, intermediate_size=256,
                                 num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                 vocab_size=131072)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["rms_norm_eps"] == 1e-5
    rope = config.get("rope_parameters") or config["rope_scaling"]
    assert rope["rope_type"] == "llama3" and rope["factor"] == 32.0
    model, _ = load_hf(str(out), "cpu", "bfloat16")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert 0.01 < model.model.embed_tokens.weight.float().std().item() < 0.04


def test_fewshot_prompts_share_the_prefix_and_reach_the_question_length(tmp_path):
    from transformers import AutoTokenizer

    from sglbench.bench.fewshot import build_prompts

    tokenizer = AutoTokenizer.from_pretrained(str(make_random_checkpoint(tmp_path, family="qwen2")))
    prompts = cpu.fewshot_prompts(tokenizer, prefix_tokens=120, questions=5, question_tokens=20)
    prefix, _ = build_prompts(tokenizer, 120, 0)
    base = len(tokenizer.encode(prefix))
    assert 100 <= base <= 120 and len(set(prompts)) == 5 and all(p.startswith(prefix) for p in prompts)
    assert all(20 <= len(tokenizer.encode(p)) - base <= 24 for p in prompts)


def test_shared_prefix_len_leaves_every_prompt_a_token():
    assert shared_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_len([]) == 0


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_careful_transformers_user_generates_what_the_naive_one_does(tmp_path, family):
    from sglbench.bench.fewshot import build_prompts

    model, tokenizer = load_hf(str(make_random_checkpoint(tmp_path, family=family, seed=5)), "cpu", "float32")
    _, prompts = build_prompts(tokenizer, 80, 6, seed=2)
    naive = hf_generate_naive(model, tokenizer, prompts, 4, batch_size=4)
    careful = hf_generate_prefix_reuse(model, tokenizer, prompts, 4, batch_size=4)
    assert careful.texts == naive.texts
    assert careful.decode_tokens == naive.decode_tokens == 6 * 4
    assert careful.prefill_tokens < naive.prefill_tokens / 3  # the prefix ran once, not six times


def test_gguf_writer_maps_every_tensor_and_permutes_llama_rotary_rows(tmp_path):
    gguf = pytest.importorskip("gguf")
    from safetensors.torch import load_file

    out = make_preset_checkpoint(tmp_path, "llama-3.2-1b", **{**cpu.QUICK_SHAPE, "head_dim": 32})
    reader = gguf.GGUFReader(cpu.write_gguf(out, tmp_path / "m.gguf", "fp32"))
    tensors = {t.name: t for t in reader.tensors}
    weights = load_file(str(out / "model.safetensors"))
    assert len(tensors) == len(weights) + 1 and "rope_freqs.weight" in tensors  # llama3 factors added
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    q = weights["model.layers.0.self_attn.q_proj.weight"].float()
    assert torch.equal(torch.from_numpy(tensors["blk.0.attn_q.weight"].data.copy()), cpu._permute_rotary(q, 4))
    assert reader.fields["llama.attention.head_count_kv"].contents() == 2
    bf16 = gguf.GGUFReader(cpu.write_gguf(out, tmp_path / "b.gguf", "bf16"))
    types = {t.name: t.tensor_type for t in bf16.tensors}
    assert types["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.BF16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


class FakeLlama:
    """Stands in for llama_cpp.Llama: records every eval (position, tokens); logits favour token n_tokens % 50."""

    def __init__(self, model_path: str, **kwargs):
        self.kwargs, self.n_tokens, self.evals, self.closed = kwargs, 0, [], False
        self.logits = (ctypes.c_float * 50)()
        FakeLlama.last = self

    ctx = None

    def n_vocab(self) -> int:
        return 50

    def reset(self) -> None:
        self.n_tokens = 0

    def eval(self, tokens) -> None:
        self.evals.append((self.n_tokens, list(tokens)))
        self.n_tokens += len(tokens)
        self.logits[:] = [1.0 if i == self.n_tokens % 50 else 0.0 for i in range(50)]

    def close(self) -> None:
        self.closed = True


def test_llama_cpp_runner_keeps_the_prefix_and_runs_each_question_after_it(monkeypatch):
    fake = types.SimpleNamespace(Llama=FakeLlama, llama_get_logits_ith=lambda ctx, i: ctypes.cast(
        FakeLlama.last.logits, ctypes.POINTER(ctypes.c_float)))
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    s = cpu.QUICK
    prompts = [[1, 2, 3, 4, 10 + q, 20 + q] for q in range(3)]
    cells = cpu.run_llama_cpp(Path("m.gguf"), 2, s, prompts, vocab=50)
    llm = FakeLlama.last
    assert set(cells) == {cpu.decode_key(1), cpu.PREFILL, cpu.FEWSHOT} and min(cells.values()) > 0
    assert llm.closed and llm.kwargs["n_threads"] == llm.kwargs["n_threads_batch"] == 2
    fewshot = llm.evals[llm.evals.index((0, [1, 2, 3, 4])):]  # the prefix, evaluated once
    questions = [e for e in fewshot if len(e[1]) == 2]
    assert questions == [(4, [10 + q, 20 + q]) for q in range(3)]  # each right after the prefix
    assert len(fewshot) == 1 + 3 * s.fewshot_new_tokens  # per question: its tokens, then new_tokens - 1 steps
    assert fewshot[2] == (6, [6])  # the greedy token fed back is the argmax of the last logits


def test_a_failing_peer_is_reported_in_its_cells(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "llama_cpp_missing", lambda: None)

    def broken(*args):
        raise RuntimeError("converter broke")

    monkeypatch.setattr(cpu, "write_gguf", broken)
    path = make_random_checkpoint(tmp_path, family="qwen2")
    cells = cpu.llama_cpp_cells(str(path), "bf16", 2, cpu.QUICK, ["a b", "a c"], vocab=400)
    assert set(cells.values()) == {"error: RuntimeError: converter broke"}


# ---------------------------------------------------------------------------- the quick run, in process
def test_quick_run_prints_every_measure_and_reports_missing_peers(capsys):
    report = cpu.main(["--quick", "--dtypes", "bf16,fp32", "--threads", "2"])
    out = capsys.readouterr().out
    assert [r.dtype for r in report.results] == ["bf16", "fp32"]
    assert [r.engine_dtype for r in report.results] == ["torch.bfloat16", "torch.float32"]
    missing = cpu.llama_cpp_missing()
    for r in report.results:
        rows = {row["measure"]: row for row in cpu.result_rows(r, report.limits)}
        assert list(rows) == [cpu.decode_key(1), cpu.decode_key(4), cpu.PREFILL, cpu.FEWSHOT]
        for measure in rows:
            assert rows[measure][cpu.SGL] > 0
        assert rows[cpu.decode_key(1)]["transformers naive"] > 0 and rows[cpu.PREFILL]["transformers naive"] > 0
        assert rows[cpu.FEWSHOT]["transformers naive"] > 0 and rows[cpu.FEWSHOT][cpu.HF_CAREFUL] > 0
        if missing:
            assert all(rows[m][cpu.LLAMA] == missing for m in (cpu.decode_key(1), cpu.PREFILL, cpu.FEWSHOT))
    if importlib.util.find_spec("llama_cpp") is None:
        assert "missing: llama-cpp-python not installed" in out
    assert "timing only: random weights" in out and "goals (issue 21)" in out
    names = {g.name for g in report.goals}
    assert len(report.goals) == 8 + 7 and "prefill / bf16 matmul peak" in names  # bf16 has the prefill goal
    assert all(g.passed is not None for g in report.goals if "llama.cpp" not in g.name)
