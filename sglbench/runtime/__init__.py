"""The in-process LLM engine: paged KV pool, radix cache, scheduler, sampling, Llama-family models.

`Runtime` and `SamplingParams` load on first use, so torch-free modules here (`records`, `events`)
import without loading torch or the engine.
"""

from __future__ import annotations

import importlib

_LAZY = {"Runtime": "sglbench.runtime.runtime", "SamplingParams": "sglbench.runtime.sampling_params"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sglbench.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
