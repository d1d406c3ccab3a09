"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over the paged KV pool.

Parameter names equal the Hugging Face ones except the fused projections (qkv_proj, gate_up_proj),
which the loader stacks from the checkpoint's separate tensors; the loader also reorders each head's q/k
dims into the pairs the rotary embedding rotates (`interleave_rotary`).
The model sees a flattened ragged batch (ForwardBatch); attention goes through the backend seam.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sglbench.kernel import cpu_native
from sglbench.kernel.cpu_linear import Linear
from sglbench.kernel.reference import rms_norm_ref
from sglbench.runtime.attention import AttentionBackend
from sglbench.runtime.forward_batch import ForwardBatch, ForwardMode
from sglbench.runtime.model_config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if cpu_native.rms_norm_fits(rows, self.weight):  # on the CPU: one C call (bf16: not eight ops)
            return cpu_native.add_rms_norm(rows, self.weight, self.eps).view(x.shape)
        if x.dtype == torch.float32:  # torch's fused kernel: the same numbers in one pass
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return rms_norm_ref(x, self.weight, self.eps)  # fp32 math, cast back before the weight, as Llama does

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(residual + x), residual + x): the residual stream's add and the next norm, one C call where
        `forward` is one; `residual` may be updated in place."""
        if x.dim() == 2 and residual.is_contiguous() and cpu_native.rms_norm_fits(x, self.weight):
            return cpu_native.add_rms_norm(x, self.weight, self.eps, residual=residual), residual
        summed = residual + x
        return self(summed), summed


class RotaryEmbedding(nn.Module):
    """Precomputed rotations indexed by absolute position, as complex numbers: each head's q/k dims come
    in interleaved pairs (see `interleave_rotary`), so rotating is one complex multiply per pair."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq = config.rope_inv_freq()  # [dim / 2]
        t = torch.arange(config.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # [positions, dim / 2]
        self.register_buffer("cis", torch.polar(torch.ones_like(freqs), freqs), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        table = torch.view_as_real(self.cis)  # [positions, dim / 2, 2] fp32 (cos, sin)
        if cpu_native.rope_fits(q, k, table):  # on the CPU: rotated in place by one C call, not a dozen ops
            cpu_native.rope_(q, k, positions, table)
            return q, k
        cis = self.cis[positions].unsqueeze(1)  # [tokens, 1, dim / 2] complex64
        return rotate_pairs(q, cis), rotate_pairs(k, cis)


def rotate_pairs(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """x [tokens, heads, dim] with each interleaved pair (2i, 2i + 1) times cis [tokens, 1, dim / 2] (complex),
    in fp32 and cast back: the rotary embedding's torch path."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # [tokens, heads, dim / 2]
    return torch.view_as_real(pairs * cis).flatten(-2).to(x.dtype)


def interleave_rotary(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder the rows of a q/k projection (or the dims of a q/k norm weight) from the checkpoint's
    rotate-half layout, where dim i pairs with i + head_dim / 2, to interleaved pairs (2i, 2i + 1).
    Attention only sees q . k, which one permutation of both leaves unchanged."""
    return x.reshape(-1, 2, head_dim // 2, *x.shape[1:]).transpose(1, 2).reshape(x.shape)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        h = config.hidden_size
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        # q, k and v projections fused into one matmul (the loader stacks the checkpoint's three).
        self.qkv_proj = Linear(h, self.q_size + 2 * self.kv_size, bias=config.qkv_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, h, bias=config.o_bias)
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
        self.gate_up_proj = Linear(h, 2 * i, bias=b)  # gate and up fused (stacked by the loader)
        self.down_proj = Linear(i, h, bias=b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.silu_mul(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int):
        super().__init__()
        self.self_attn = Attention(config, layer_id)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, residual, positions, rotary, backend, batch):
        """(this layer's MLP output, the residual stream before it): the stream's adds are fused into the
        next norm (RMSNorm.add_forward), so x is the previous layer's output and residual the stream before
        it (None for the first layer, whose x is the embedding)."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, positions, rotary, backend, batch)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual

    def decode_params(self) -> tuple[torch.Tensor | None, ...]:
        """The tensors `decode_weights` takes, in its order."""
        attn, mlp = self.self_attn, self.mlp
        q_norm, k_norm = (None, None) if attn.q_norm is None else (attn.q_norm.weight, attn.k_norm.weight)
        return (self.input_layernorm.weight, self.post_attention_layernorm.weight, attn.qkv_proj.weight,
                attn.qkv_proj.bias, attn.o_proj.weight, attn.o_proj.bias, mlp.gate_up_proj.weight,
                mlp.gate_up_proj.bias, mlp.down_proj.weight, mlp.down_proj.bias, q_norm, k_norm)

    def decode_weights(self, packed: bool) -> cpu_native.DecodeLayerWeights | None:
        """This layer's weights for `cpu_native.decode_layers`, packed (fp32 copies) or dense (its own tensors),
        or None where that kernel does not take the layer (dtype, weights packed for oneDNN, odd shapes)."""
        attn, params = self.self_attn, self.decode_params()
        inter, dtype = self.mlp.down_proj.weight.shape[1], params[0].dtype
        if (dtype not in ((torch.float32,) if packed else cpu_native.GEMV_DTYPES)
                or not all(p is None or (p.dtype == dtype and p.device.type == "cpu" and not p.is_mkldnn
                                         and p.is_contiguous()) for p in params)
                or not cpu_native.decode_layer_fits(attn.num_heads, attn.num_kv_heads, attn.head_dim, inter, packed)):
            return None
        ln1, ln2, qkv, qkv_b, o, o_b, gate_up, gate_up_b, down, down_b, q_norm, k_norm = (
            None if p is None else p.detach() for p in params)
        if packed:
            qkv, o, gate_up, down = (cpu_native.pack_columns(w) for w in (qkv, o, gate_up, down))
        return cpu_native.DecodeLayerWeights(ln1, ln2, self.input_layernorm.eps, qkv, qkv_b, o, o_b, gate_up,
                                             gate_up_b, down, down_b, attn.num_heads, attn.num_kv_heads,
                                             attn.head_dim, inter, packed, q_norm, k_norm)


class LlamaModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self._fused_cache: tuple | None = None  # (versions, tensors, fused_decode_weights' answer)
        # Called with the packed copies fused_decode_weights makes, each time it makes them (the model runner
        # puts them on huge pages, as the dense weights: runtime/cpu_memory.py).
        self.on_packed: Callable[[list[torch.Tensor]], object] | None = None
        # load_state_dict(assign=True) swaps the tensors themselves: pack them again
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_fused_cache", None))

    def forward(self, batch: ForwardBatch, backend: AttentionBackend, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [tokens, hidden], or only those of `rows` (the last norm skips the others)."""
        x, residual = self.embed_tokens(batch.input_ids), None  # [tokens, hidden]
        fused = self._fused_decode(batch, backend)
        if fused is not None:  # a step the C kernels take whole: one call for every layer
            plan, weights, qo_indptr = fused
            pool = backend.pool
            residual, x = x, cpu_native.decode_layers(
                x, weights, torch.view_as_real(self.rotary_emb.cis), batch.positions, pool.k_buffers, pool.v_buffers,
                batch.out_cache_loc, plan.slots.view(plan.batch, plan.max_len), plan.lens, backend.sm_scale,
                qo_indptr)
        else:
            for layer in self.layers:
                x, residual = layer(x, residual, batch.positions, self.rotary_emb, backend, batch)
        if residual is None:  # no layers
            return self.norm(x if rows is None else x[rows])
        if rows is not None:
            x, residual = x[rows], residual[rows]
        return self.norm.add_forward(x, residual)[0]

    def fused_decode_weights(self) -> list[cpu_native.DecodeLayerWeights] | None:
        """Every layer's weights when decode steps run the layers in one C call (`cpu_native.decode_layers`), else
        None: for an fp32 model on the CPU whose packed copies stay within cpu_native.FUSED_DECODE_MAX_BYTES
        (small models, where a step is mostly per-op cost), packed copies that take every decode batch; for other
        bf16 and fp32 models whose Linears keep dense weights, those weights themselves, for decode batches up to
        cpu_native.gemv_batch(dtype) (there the C GEMV streams them anyway, and one call saves the per-op cost). Made
        once; again after a weight changes (in place, or by load_state_dict)."""
        weight = self.embed_tokens.weight
        if not self.layers or weight.device.type != "cpu" or not cpu_native.available():
            return None
        cached = self._fused_cache
        if cached is not None and cached[0] == _versions(cached[1]):
            return cached[2]
        params = tuple(p for layer in self.layers for p in layer.decode_params())
        packed_bytes = sum(p.numel() * 4 for p in params if p is not None and p.dim() == 2)  # the projections
        packed = weight.dtype == torch.float32 and packed_bytes <= cpu_native.FUSED_DECODE_MAX_BYTES
        weights = [layer.decode_weights(packed) for layer in self.layers]
        weights = None if any(w is None for w in weights) else weights
        if weights and packed and self.on_packed is not None:
            self.on_packed([t for w in weights for t in (w.qkv, w.o, w.gate_up, w.down)])
        self._fused_cache = (_versions(params), params, weights)
        return weights

    def _fused_decode(self, batch: ForwardBatch, backend: AttentionBackend):
        """(plan, `fused_decode_weights`, qo_indptr or None) when this step runs each layer as one C call: a
        decode batch the weights take, or on packed weights (small fp32 models) an extend batch of up to
        cpu_native.FUSED_EXTEND_MAX_ROWS new tokens, whose K/V the backend reads in place; else None."""
        if batch.mode is ForwardMode.DECODE:
            weights = self.fused_decode_weights()
            if weights is None or (weights[0].max_batch is not None and batch.batch_size > weights[0].max_batch):
                return None
            plan = backend.in_place_decode_plan(batch)
            return None if plan is None else (plan, weights, None)
        if batch.num_tokens > cpu_native.FUSED_EXTEND_MAX_ROWS:
            return None
        weights = self.fused_decode_weights()
        if not weights or not weights[0].packed:
            return None
        plan = backend.in_place_extend_plan(batch)
        return None if plan is None else (plan, weights, batch.qo_indptr)


def _versions(tensors: tuple[torch.Tensor | None, ...]) -> tuple:
    """What changes when a tensor is written in place or given other storage (packed copies go stale)."""
    return tuple(None if t is None else (id(t), t._version, 0 if t.is_mkldnn else t.data_ptr()) for t in tensors)


class LlamaForCausalLM(nn.Module):
    """Returns logits [len(batch.logits_rows), vocab] in fp32 for the rows the engine asked for: the last
    token of each request whose next token is sampled, and prompt positions only when prompt logprobs
    were asked (model_runner.prepare_extend); the lm-head never sees the other rows."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._packed_head: tuple | None = None  # (versions, weight, packed copy or None): see packed_lm_head

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, backend: AttentionBackend) -> torch.Tensor:
        hidden = self.model(batch, backend, batch.logits_rows)  # [rows, hidden]
        packed = self.packed_lm_head() if 0 < hidden.shape[0] <= cpu_native.PACKED_GEMM_MAX_ROWS else None
        if packed is not None:
            return cpu_native.gemm_packed(hidden, packed, self.lm_head.out_features)
        return self.lm_head(hidden).float()  # [rows, vocab]

    def packed_lm_head(self) -> torch.Tensor | None:
        """The lm-head's weight packed for `cpu_native.gemm_packed` when the layers run on packed copies (small fp32
        models on the CPU) and this one fits their budget too, else None: at a decode batch of 16 the embedded
        model's lm-head takes 0.2 ms there against 0.4 in torch. Made once; again after the weight changes."""
        weight = self.lm_head.weight
        if weight.device.type != "cpu" or not cpu_native.available():
            return None
        cached = self._packed_head
        if cached is not None and cached[1] is weight and cached[0] == _versions((weight,)):
            return cached[2]
        layers = self.model.fused_decode_weights()
        packed = None
        if (layers and layers[0].packed and self.lm_head.bias is None and weight.dtype == torch.float32
                and not weight.is_mkldnn and weight.numel() * 4 <= cpu_native.FUSED_DECODE_MAX_BYTES):
            packed = cpu_native.pack_columns(weight)
            if self.model.on_packed is not None:
                self.model.on_packed([packed])
        self._packed_head = (_versions((weight,)), weight, packed)
        return packed
