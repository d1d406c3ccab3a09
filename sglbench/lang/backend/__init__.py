"""Backends: where a program's gen/select calls run. `as_backend` accepts a backend or a `Runtime`."""

from __future__ import annotations

from typing import Any

from sglbench.lang.backend.base import BaseBackend, CallContext
from sglbench.lang.global_config import global_config

__all__ = ["BaseBackend", "CallContext", "as_backend", "resolve_backend"]


def as_backend(obj: Any) -> BaseBackend:
    """obj itself if it is a backend; a `RuntimeBackend` for a `Runtime` (reusing the default backend's)."""
    if isinstance(obj, BaseBackend):
        return obj
    from sglbench.runtime.runtime import Runtime

    if isinstance(obj, Runtime):
        from sglbench.lang.backend.runtime_backend import RuntimeBackend

        default = global_config.default_backend
        if isinstance(default, RuntimeBackend) and default.runtime is obj:
            return default
        return RuntimeBackend(obj)
    raise TypeError(f"a backend must be a sglbench Runtime or a BaseBackend, got {type(obj).__name__}")


def resolve_backend(backend: Any = None) -> BaseBackend:
    """The given backend, else the default one; a clear error when there is neither."""
    if backend is None:
        backend = global_config.default_backend
    if backend is None:
        raise RuntimeError("no backend: call sgl.set_default_backend(runtime) or pass backend=... to run()")
    return as_backend(backend)
