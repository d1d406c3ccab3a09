"""The tensors one model step needs, built by the engine and read by the model and attention backend."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill or a prefill chunk: several new tokens per request
    DECODE = "decode"  # exactly one new token per request


@dataclass
class ForwardBatch:
    """Flattened ragged batch; see sglbench/kernel/reference.py for the indptr/indices contract.

    input_ids, positions, out_cache_loc: [num_tokens]
    qo_indptr, kv_indptr:               [batch + 1]
    kv_indices:                         [total kv tokens], pool slots of each request's whole context
    logits_rows:                        rows of the hidden states the LM head is applied to
    padded_kv_indices:                  decode only, optional: [batch, >= longest context] the same slots
                                        as kv_indices, one row per request, anything past its length
                                        being some valid slot (a backend may gather from it directly)
    parts:                              a mixed extend batch, optional: (the extend requests' own batch,
                                        the decode batch of the requests riding along, one token each,
                                        whose tokens come last); the whole is a valid extend batch too,
                                        so a backend may split it or treat it as one
    """

    mode: ForwardMode
    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    logits_rows: torch.Tensor
    max_q_len: int = 0  # longest new-token run of one request (0: unknown); spares kernels a device sync
    padded_kv_indices: torch.Tensor | None = None
    parts: tuple[ForwardBatch, ForwardBatch] | None = None

    @property
    def batch_size(self) -> int:
        return self.qo_indptr.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.numel()
