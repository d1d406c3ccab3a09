"""Test-wide setup: Triton kernels run under the interpreter when no GPU is present.

TRITON_INTERPRET must be set before any module decorated with @triton.jit is imported,
so it is set here, at collection start.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))
