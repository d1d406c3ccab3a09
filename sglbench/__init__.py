"""sglbench: a Jupyter-first workbench for structured LLM programs, after SGLang.

Heavy modules (torch, the engine) load on first use, so `import sglbench` stays quick.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Runtime": "sglbench.runtime.runtime",
    "SamplingParams": "sglbench.runtime.sampling",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sglbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
