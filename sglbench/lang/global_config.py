"""Process-wide settings of the language layer, mutable like SGLang's `global_config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalConfig:
    """Defaults read when a program runs; change the attributes of `global_config` to adjust them."""

    verbosity: int = 0  # 0: quiet; 2: print each program's final text when it finishes (as SGLang)
    default_backend: Any = None  # a BaseBackend, set by `set_default_backend`
    # How generated token ids become text (the engine's skip_special_tokens / spaces_between_special_tokens).
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True
    enable_precache_with_tracing: bool = True  # run_batch caches a program's constant prefix first
    # SGLang joins concate_and_append forks by splicing their KV caches; sglbench always appends their text
    # (the shared prefix stays cached, the forks' text is encoded again), so this setting changes nothing.
    enable_parallel_encoding: bool = True
    variable_timeout: float = 30.0  # seconds a state may sit idle while a read waits for a variable
    precache_min_chars: int = 64  # shorter constant prefixes are not worth a request
    telemetry_history: int = 256  # program runs kept in the recent-runs registry


global_config = GlobalConfig()
