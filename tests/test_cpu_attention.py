"""The CPU path's extend attention (sglbench/kernel/cpu_attention.py) against the plain-torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from sglbench.kernel import cpu_attention, reference
from tests.helpers import EXTEND_CASES, GQA, make_batch

CASES = {
    **EXTEND_CASES,
    # a long chunk over a prefix next to a short one, and one new token over a long prefix
    "long_chunk_over_prefix": ([549, 3], [90, 0]),
    "one_token_over_prefix": ([1], [700]),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("group", list(GQA))
@pytest.mark.parametrize("head_dim", [32, 64])
def test_extend_attention_cpu_matches_reference(head_dim, group, case):
    q_lens, prefix_lens = CASES[case]
    kv_heads = GQA[group]
    args = make_batch(q_lens, prefix_lens, kv_heads * group, kv_heads, head_dim)
    scale = 1 / math.sqrt(head_dim)
    torch.testing.assert_close(
        cpu_attention.extend_attention_cpu(*args, scale), reference.extend_attention_ref(*args, scale),
    )


def test_low_precision_inputs_compute_in_fp32():
    q, kb, vb, qo, kvp, kvi = make_batch([9, 4], [20, 0], 4, 2, 32)
    out = cpu_attention.extend_attention_cpu(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2)
    expected = reference.extend_attention_ref(q.bfloat16(), kb.bfloat16(), vb.bfloat16(), qo, kvp, kvi, 0.2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
