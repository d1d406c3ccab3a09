"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over the paged KV pool.

Parameter names equal the Hugging Face ones except the fused projections (qkv_proj, gate_up_proj),
which the loader stacks from the checkpoint's separate tensors.
The model sees a flattened ragged batch (ForwardBatch); attention goes through the backend seam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglbench.kernel.reference import rms_norm_ref
from sglbench.runtime.attention import AttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch
from sglbench.runtime.model_config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_ref(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables indexed by absolute position (rotate-half convention, as in HF)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq = config.rope_inv_freq()  # [dim / 2]
        t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [positions, dim / 2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [positions, dim]
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos[positions].unsqueeze(1)  # [tokens, 1, dim]
        sin = self.sin[positions].unsqueeze(1)  # [tokens, 1, dim]
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        h = config.hidden_size
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        # q, k and v projections fused into one matmul (the loader stacks the checkpoint's three).
        self.qkv_proj = nn.Linear(h, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, positions, rotary: RotaryEmbedding, backend: AttentionBackend, batch: ForwardBatch):
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(tokens, self.num_heads, self.head_dim)  # [tokens, heads, dim]
        k = k.reshape(tokens, self.num_kv_heads, self.head_dim)  # [tokens, kv_heads, dim]
        v = v.reshape(tokens, self.num_kv_heads, self.head_dim)  # [tokens, kv_heads, dim]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rotary(positions, q, k)
        o = backend.forward(q, k, v, self.layer_id, batch)  # [tokens, heads, dim]
        return self.o_proj(o.reshape(tokens, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        h, i, b = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_up_proj = nn.Linear(h, 2 * i, bias=b)  # gate and up fused (stacked by the loader)
        self.down_proj = nn.Linear(i, h, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.self_attn = Attention(config, layer_id)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, positions, rotary, backend, batch):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, backend, batch)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, batch: ForwardBatch, backend: AttentionBackend) -> torch.Tensor:
        x = self.embed_tokens(batch.input_ids)  # [tokens, hidden]
        for layer in self.layers:
            x = layer(x, batch.positions, self.rotary_emb, backend, batch)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    """Returns logits [len(batch.logits_rows), vocab] in fp32 for the rows the engine asked for."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, backend: AttentionBackend) -> torch.Tensor:
        hidden = self.model(batch, backend)  # [tokens, hidden]
        return self.lm_head(hidden[batch.logits_rows]).float()  # [rows, vocab]
