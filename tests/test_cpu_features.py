"""CPU feature detection (sglbench/kernel/cpu_features.py) and the dtype="auto" choice it drives (loader)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sglbench.kernel import cpu_features
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.loader import choose_dtype, resolve_dtype

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu sse2
"""
AMX = cpu_features.features_from_flags(frozenset({"avx512f", "avx512_bf16", "amx_bf16"}), "AVX512")
AVX512_BF16 = cpu_features.features_from_flags(frozenset({"avx512f", "avx512_bf16"}), "AVX512")
PLAIN = cpu_features.features_from_flags(frozenset({"avx2"}), "AVX2")


def test_parse_cpuinfo_reads_the_first_processor_flags():
    flags = cpu_features.parse_cpuinfo_flags(CPUINFO)
    assert {"amx_bf16", "avx512_bf16", "avx512f", "amx_tile"} <= flags
    features = cpu_features.features_from_flags(flags, "AVX512")
    assert (features.amx_bf16, features.avx512_bf16, features.avx512f, features.avx512_fp16) == (True,) * 4
    assert features.fast_bf16
    assert features.describe() == "AMX-BF16 AVX512-BF16 AVX512-FP16 AVX512F (torch AVX512, from cpuinfo)"
    assert cpu_features.parse_cpuinfo_flags("processor\t: 0\n") == frozenset()


def test_arm_features_line_and_plain_cpus():
    flags = cpu_features.parse_cpuinfo_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert flags == {"fp", "asimd", "bf16"}
    assert not PLAIN.fast_bf16 and not cpu_features.features_from_flags(flags, "DEFAULT").fast_bf16
    assert PLAIN.describe().startswith("no AVX-512/AMX")
    assert AVX512_BF16.fast_bf16 and not AVX512_BF16.amx_bf16


def test_torch_fallback_reads_capability_and_missing_probes_as_absent(monkeypatch):
    class FakeCpu:
        @staticmethod
        def _is_amx_tile_supported():
            return True

    monkeypatch.setattr(torch._C, "_cpu", FakeCpu, raising=False)
    features = cpu_features.features_from_torch("AVX512")
    assert features.amx_bf16 and features.avx512f and not features.avx512_bf16
    assert features.source == "torch"
    assert not cpu_features.features_from_torch("AVX2").avx512f


def test_detect_is_cached_and_frozen():
    features = cpu_features.detect()
    assert features is cpu_features.detect()
    assert features.torch_capability == torch.backends.cpu.get_cpu_capability()
    with pytest.raises(dataclasses.FrozenInstanceError):
        features.amx_bf16 = True  # type: ignore[misc]


def _config(stored: str | None) -> ModelConfig:
    return ModelConfig.from_dict({"model_type": "llama", "vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "torch_dtype": stored})


@pytest.mark.parametrize(("stored", "features", "expected"), [
    ("bfloat16", AMX, torch.bfloat16),
    ("float16", AVX512_BF16, torch.bfloat16),
    ("bfloat16", PLAIN, torch.float32),
    ("float32", AMX, torch.float32),  # the embedded default model: fp32 unless asked
    (None, AMX, torch.float32),
])
def test_auto_on_the_cpu(stored, features, expected):
    choice = choose_dtype("auto", "cpu", _config(stored), features)
    assert choice.dtype == expected
    assert choice.reason.startswith("auto: checkpoint stored in")
    if expected == torch.bfloat16:
        assert ("AMX-BF16" if features.amx_bf16 else "AVX512-BF16") in choice.reason
    elif stored in ("bfloat16", "float16"):
        assert "neither AMX-BF16 nor AVX512-BF16" in choice.reason


def test_explicit_dtypes_and_gpu_auto():
    asked = choose_dtype("bfloat16", "cpu", _config("float32"), PLAIN)
    assert asked == choose_dtype(torch.bfloat16, "cpu", _config(None))
    assert (asked.dtype, asked.reason) == (torch.bfloat16, "asked for bfloat16")
    assert choose_dtype("float32", "cpu", _config("bfloat16"), AMX).dtype == torch.float32
    assert choose_dtype("auto", "cuda", _config("float16")).dtype == torch.float16
    assert choose_dtype("auto", "cuda", _config("float32")).dtype == torch.bfloat16
    assert resolve_dtype("auto", "cpu", _config("float32")) == torch.float32
    with pytest.raises(ValueError, match="dtype must be"):
        choose_dtype("int8", "cpu", _config(None))
