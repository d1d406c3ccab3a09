"""Build a model from a local Hugging Face folder, loading safetensors straight to device and dtype."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from sglbench.kernel import cpu_features
from sglbench.kernel.cpu_linear import Linear, keeps_dense, pack_weight, packing_available
from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.llama import LlamaForCausalLM, interleave_rotary

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype an engine computes in, and why (shown in model info)."""

    dtype: torch.dtype
    reason: str


def choose_dtype(dtype: str | torch.dtype, device: str, config: ModelConfig,
                 features: cpu_features.CpuFeatures | None = None) -> DtypeChoice:
    """'auto' on a GPU: the checkpoint's dtype (bf16 if unknown or fp32). On the CPU: bf16 for a checkpoint
    stored in bf16 or fp16 when the CPU multiplies bf16 natively (AMX-BF16 or AVX512-BF16), else fp32 (an
    fp32 checkpoint, such as the embedded default model, stays fp32). Anything else is taken as asked."""
    if isinstance(dtype, torch.dtype):
        return DtypeChoice(dtype, f"asked for {str(dtype).removeprefix('torch.')}")
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        return DtypeChoice(_DTYPES[dtype], f"asked for {dtype}")
    stored = config.torch_dtype or "unknown"
    if device != "cpu":
        chosen = torch.float16 if stored == "float16" else torch.bfloat16
        return DtypeChoice(chosen, f"auto: checkpoint stored in {stored}, on {device}")
    if stored not in ("bfloat16", "float16"):
        return DtypeChoice(torch.float32, f"auto: checkpoint stored in {stored}, kept in float32 on the CPU")
    features = features or cpu_features.detect()
    if features.fast_bf16:
        native = "AMX-BF16" if features.amx_bf16 else "AVX512-BF16"
        return DtypeChoice(torch.bfloat16, f"auto: checkpoint stored in {stored} and the CPU has {native}")
    return DtypeChoice(torch.float32, f"auto: checkpoint stored in {stored}, but the CPU has neither AMX-BF16 "
                                      "nor AVX512-BF16, so float32")


def resolve_dtype(dtype: str | torch.dtype, device: str, config: ModelConfig) -> torch.dtype:
    """The dtype `choose_dtype` picks."""
    return choose_dtype(dtype, device, config).dtype


_QKV = ("q_proj", "k_proj", "v_proj")
_ROTATED = re.compile(r"\.(q_proj|k_proj|q_norm|k_norm)\.")  # head dims the rotary embedding pairs up
_GATE_UP = ("gate_proj", "up_proj")


def _fused_name(name: str) -> tuple[str, str] | None:
    """'...self_attn.k_proj.bias' -> ('...self_attn.qkv_proj.bias', 'k_proj'); None if not fused."""
    for group, fused in ((_QKV, "qkv_proj"), (_GATE_UP, "gate_up_proj")):
        for piece in group:
            marker = f".{piece}."
            if marker in name:
                return name.replace(marker, f".{fused}."), piece
    return None


def load_model(model_path: str | Path, device: str, dtype: torch.dtype, config: ModelConfig | None = None,
               pack: bool = True) -> LlamaForCausalLM:
    """Instantiate the decoder on the meta device, then fill every parameter from the safetensors shards.

    pack: where cpu_linear packs weights of this dtype, each linear weight is packed as soon as it is read
    (or stacked), so the model never holds it dense as well, unless cpu_linear keeps dense weights for the
    C GEMV (`keeps_dense`): then every Linear packs a copy beside its weight once loaded. The tensors left
    dense are copied off the file's memory map, which would otherwise stay mapped (and counted in RSS)."""
    path = Path(model_path)
    config = config or ModelConfig.from_path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model_path {str(path)!r} has no *.safetensors weights")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    packing = pack and str(device) == "cpu" and packing_available(dtype)
    linears = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Linear)}
    dense_bytes = sum(m.weight.numel() for name, m in linears.items() if name != "lm_head.weight") * dtype.itemsize
    in_place = packing and not keeps_dense(dtype, dense_bytes)  # packed copies replace dense weights as read

    def final(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not packing:
            return tensor
        return pack_weight(tensor) if in_place and name in linears else tensor.clone()

    loaded: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}  # fused parameter -> its checkpoint pieces read so far
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                fused = _fused_name(name)
                if fused is None and name not in params:
                    continue
                tensor = f.get_tensor(name).to(dtype)
                if _ROTATED.search(name):
                    tensor = interleave_rotary(tensor, config.head_dim)
                if fused is None:
                    loaded[name] = final(name, tensor)
                    continue
                pieces = parts.setdefault(fused[0], {})
                pieces[fused[1]] = tensor
                order = _QKV if "qkv_proj" in fused[0] else _GATE_UP
                if all(p in pieces for p in order):  # stacked at once: one layer's pieces held at a time
                    loaded[fused[0]] = final(fused[0], torch.cat([pieces.pop(p) for p in order], dim=0))
    tied = config.tie_word_embeddings and "model.embed_tokens.weight" in loaded
    if tied:  # the lm-head reads the embedding: the same tensor, or its own packed copy
        embedding = loaded["model.embed_tokens.weight"]
        loaded["lm_head.weight"] = pack_weight(embedding) if in_place else embedding
    missing = [n for n in params if n not in loaded]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, assign=True, strict=False)
    if tied and not in_place:
        model.lm_head.weight = model.model.embed_tokens.weight
    if packing and not in_place:  # packed copies beside the dense weights (cpu_linear.keeps_dense)
        for m in model.modules():
            if isinstance(m, Linear):
                m.pack(keep_dense=True)
    # Non-persistent buffers (rotary tables) were created on meta: rebuild them on the target device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model.to(device).eval()
