"""sglbench: a Jupyter-first workbench for structured LLM programs, after SGLang.

Heavy modules (torch, the engine) load on first use, so `import sglbench` stays quick.
"""

from __future__ import annotations

from sglbench.lazy import lazy_attributes
from sglbench.runtime import extensions as _extensions

__version__ = "0.1.0"

# The workbench lends the runtime `rt.dashboard()` and `rt.report()`: named here, imported on first use.
_extensions.register("dashboard", "sglbench.viz.workbench:dashboard")
_extensions.register("report", "sglbench.viz.workbench:report")

_LAZY = {
    "Runtime": "sglbench.runtime.runtime",
    "Engine": "sglbench.runtime.offline_engine",
    "ServerArgs": "sglbench.runtime.server_args",
    "SamplingParams": "sglbench.runtime.sampling_params",
    "RuntimeEndpoint": "sglbench.lang.backend.endpoint",
    "OpenAI": "sglbench.lang.backend.openai_backend",
    "Crusoe": "sglbench.lang.backend.openai_backend",
    "Anthropic": "sglbench.lang.api",
    "LiteLLM": "sglbench.lang.api",
    "VertexAI": "sglbench.lang.api",
    "function": "sglbench.lang.api",
    "gen": "sglbench.lang.api",
    "gen_int": "sglbench.lang.api",
    "gen_string": "sglbench.lang.api",
    "select": "sglbench.lang.api",
    "image": "sglbench.lang.api",
    "video": "sglbench.lang.api",
    "separate_reasoning": "sglbench.lang.api",
    "system": "sglbench.lang.api",
    "user": "sglbench.lang.api",
    "assistant": "sglbench.lang.api",
    "system_begin": "sglbench.lang.api",
    "system_end": "sglbench.lang.api",
    "user_begin": "sglbench.lang.api",
    "user_end": "sglbench.lang.api",
    "assistant_begin": "sglbench.lang.api",
    "assistant_end": "sglbench.lang.api",
    "set_default_backend": "sglbench.lang.api",
    "flush_cache": "sglbench.lang.api",
    "get_server_info": "sglbench.lang.api",
    "global_config": "sglbench.lang.api",
    "token_length_normalized": "sglbench.lang.api",
    "greedy_token_selection": "sglbench.lang.api",
    "unconditional_likelihood_normalized": "sglbench.lang.api",
}


__getattr__, __dir__ = lazy_attributes("sglbench", _LAZY, globals())


def load_ipython_extension(ipython) -> None:
    """`%load_ext sglbench`: registers %%sgl, %sgl_runtime and %sgl_report."""
    from sglbench.magics import load_ipython_extension as register

    register(ipython)
