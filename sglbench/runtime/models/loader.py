"""Build a model from a local Hugging Face folder, loading safetensors straight to device and dtype."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import safe_open

from sglbench.runtime.model_config import ModelConfig
from sglbench.runtime.models.llama import LlamaForCausalLM, interleave_rotary

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype, device: str, config: ModelConfig) -> torch.dtype:
    """'auto' is fp32 on the CPU and the checkpoint's dtype (bf16 if unknown or fp32) on a GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device == "cpu":
            return torch.float32
        return torch.float16 if config.torch_dtype == "float16" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


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


def load_model(model_path: str | Path, device: str, dtype: torch.dtype, config: ModelConfig | None = None) -> LlamaForCausalLM:
    """Instantiate the decoder on the meta device, then fill every parameter from the safetensors shards."""
    path = Path(model_path)
    config = config or ModelConfig.from_path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model_path {str(path)!r} has no *.safetensors weights")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}  # fused parameter -> its checkpoint pieces
    for file in files:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                fused = _fused_name(name)
                if fused is None and name not in params:
                    continue
                tensor = f.get_tensor(name).to(dtype)
                if _ROTATED.search(name):
                    tensor = interleave_rotary(tensor, config.head_dim)
                if fused is not None:
                    parts.setdefault(fused[0], {})[fused[1]] = tensor
                else:
                    loaded[name] = tensor
    for name, pieces in parts.items():
        order = _QKV if "qkv_proj" in name else _GATE_UP
        if all(p in pieces for p in order):
            loaded[name] = torch.cat([pieces[p] for p in order], dim=0)
    if config.tie_word_embeddings and "model.embed_tokens.weight" in loaded:
        loaded["lm_head.weight"] = loaded["model.embed_tokens.weight"]
    missing = [n for n in params if n not in loaded]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(loaded, assign=True, strict=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (rotary tables) were created on meta: rebuild them on the target device.
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model.to(device).eval()
