"""Features a higher layer lends `Runtime` (the dashboard, the report), registered as import strings.

The runtime imports a feature only when it is first used and never names the layer that provides it,
so the engine layer depends on nothing above it. Torch-free: `sglbench/__init__.py` registers here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_FEATURES: dict[str, str] = {}


def register(name: str, target: str) -> None:
    """Make feature `name` resolve to `target`, a 'package.module:function' string (imported on first use)."""
    module, _, attribute = target.partition(":")
    if not module or not attribute:
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    _FEATURES[name] = target


def resolve(name: str) -> Callable[..., Any]:
    """The function registered for `name`, importing its module now; RuntimeError when none is registered."""
    target = _FEATURES.get(name)
    if target is None:
        raise RuntimeError(f"no {name!r} feature is registered: `import sglbench` registers the workbench's; "
                           f"else sglbench.runtime.extensions.register({name!r}, 'package.module:function')")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
