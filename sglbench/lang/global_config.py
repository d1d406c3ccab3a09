"""Process-wide settings of the language layer, mutable like SGLang's `global_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalConfig:
    """Defaults read when a program runs; change the attributes of `global_config` to adjust them."""

    default_backend: Any = None  # a BaseBackend, set by `set_default_backend`
    variable_timeout: float = 30.0  # seconds a state may sit idle while a read waits for a variable
    enable_precache_with_tracing: bool = True  # run_batch caches a program's constant prefix first
    precache_min_chars: int = 64  # shorter constant prefixes are not worth a request
    skip_special_tokens_in_output: bool = True
    telemetry_history: int = 256  # program runs kept in the recent-runs registry


global_config = GlobalConfig()
