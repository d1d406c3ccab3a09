"""The in-process LLM engine: paged KV pool, radix cache, scheduler, sampling, Llama-family models.

`Runtime` and `SamplingParams` load on first use, so torch-free modules here (`records`, `events`)
import without loading torch or the engine.
"""

from __future__ import annotations

from sglbench.lazy import lazy_attributes

_LAZY = {"Runtime": "sglbench.runtime.runtime", "SamplingParams": "sglbench.runtime.sampling_params"}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes("sglbench.runtime", _LAZY, globals())
