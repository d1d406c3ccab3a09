"""`ServerArgs`: SGLang's server arguments as `sgl.Engine(**kwargs)` takes them, for one in-process engine.

Every name SGLang's ServerArgs has that `sgl.Engine` users pass falls in one group: a field here (mapped onto
`Runtime`), accepted and ignored (HTTP, compilation and logging knobs one in-process engine has no use for), or
accepted at SGLang's default only (multi-process parallelism, and features this engine lacks): any other value
is a ValueError naming it. A name SGLang does not have is a TypeError. Torch-free.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass
from typing import Any

# SGLang's dtype names -> the Runtime's.
DTYPES = {"auto": "auto", "half": "float16", "float16": "float16", "bfloat16": "bfloat16", "float": "float32",
          "float32": "float32"}
# SGLang's attention backends this engine has -> the Runtime's (None: triton on CUDA, torch on the CPU).
ATTENTION_BACKENDS = {None: "auto", "torch_native": "torch", "torch": "torch", "triton": "triton"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

# Arguments for several processes, GPUs or nodes: one engine in this process has only SGLang's default.
ONE_PROCESS: dict[str, Any] = {
    "tp_size": 1, "dp_size": 1, "pp_size": 1, "ep_size": 1, "attn_cp_size": 1, "dcp_size": 1, "moe_dp_size": 1,
    "nnodes": 1, "node_rank": 0, "dist_init_addr": None, "enable_dp_attention": False, "tokenizer_worker_num": 1,
    "detokenizer_worker_num": 1, "use_ray": False, "disaggregation_mode": "null",
}

# Features this engine lacks: the values it accepts (SGLang's defaults, or what it does anyway) and why.
LACKING: dict[str, tuple[tuple[Any, ...], str]] = {
    "skip_tokenizer_init": ((False,), "the tokenizer always loads from the model folder; pass input_ids= to "
                                      "generate() to skip tokenizing prompts"),
    "tokenizer_mode": (("auto",), "the fast tokenizer is always used"),
    "load_format": (("auto", "safetensors"), "checkpoints load from *.safetensors files only"),
    "model_impl": (("auto", "sglang"), "sglbench's own model code runs"),
    "json_model_override_args": (("{}", None), "the model's config.json is used as it is"),
    "quantization": ((None,), "weights load as stored, in dtype= (no quantized kernels)"),
    "kv_cache_dtype": (("auto",), "the KV cache takes the model's dtype"),
    "is_embedding": ((False,), "only generation models are served"),
    "enable_multimodal": ((None, False), "only text models are served"),
    "enable_lora": ((None, False), "LoRA adapters are not supported"),
    "lora_paths": ((None,), "LoRA adapters are not supported"),
    "speculative_algorithm": ((None,), "speculative decoding is not supported"),
    "page_size": ((None, 1), "the KV pool holds one token per page"),
    "grammar_backend": ((None, "xgrammar"), "constrained decoding always uses xgrammar"),
    "allow_auto_truncate": ((False,), "a prompt longer than the context is refused, not truncated"),
    "max_queued_requests": ((None,), "the waiting queue is unbounded"),
    "enable_priority_scheduling": ((False,), "there is no priority scheduling; schedule_policy= picks the order"),
    "incremental_streaming_output": ((False,), "stream chunks carry the text so far (SGLang's default)"),
    "stream_output": ((False,), "stream chunks carry the text so far (SGLang's default)"),
    "base_gpu_id": ((0,), "pick the GPU with device='cuda:N'"),
}

# Accepted with no effect: they tune an HTTP server, compilation, metrics or request logs.
IGNORED = frozenset({
    "host", "port", "served_model_name", "trust_remote_code", "skip_server_warmup", "warmups", "api_key",
    "chat_template", "reasoning_parser", "tool_call_parser", "file_storage_path", "enable_cache_report",
    "watchdog_timeout", "log_level_http", "log_requests", "log_requests_level", "show_time_cost",
    "enable_metrics", "crash_dump_folder", "decode_log_interval", "stream_interval",
    "disable_overlap_schedule", "enable_torch_compile",
    "torch_compile_max_bs", "disable_custom_all_reduce", "num_continuous_decode_steps",
    "sampling_backend", "triton_attention_num_kv_splits", "sleep_on_idle",
    "enable_deterministic_inference", "weight_version", "dist_timeout", "nccl_port", "gpu_id_step",
})


@dataclass(frozen=True)
class ServerArgs:
    """SGLang's server arguments that shape this engine (SGLang's names and meanings); None: the Runtime's default."""

    model_path: str | None = None  # a local folder or a Hugging Face id; None: the embedded default model
    tokenizer_path: str | None = None  # None or model_path: the tokenizer comes from the model folder
    revision: str | None = None  # of a Hugging Face id
    download_dir: str | None = None  # the Hugging Face cache to use (default: HF_HUB_CACHE)
    dtype: str = "auto"
    device: str | None = None  # None: CUDA when available, else the CPU
    context_length: int | None = None
    mem_fraction_static: float | None = None
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    chunked_prefill_size: int | None = None  # <= 0 turns chunked prefill off
    max_prefill_tokens: int | None = None
    schedule_policy: str | None = None
    schedule_conservativeness: float | None = None  # memory kept for running requests' outputs (SGLang's 1.0)
    disable_radix_cache: bool = False
    attention_backend: str | None = None
    random_seed: int | None = None
    log_level: str | None = None  # the "sglbench" logger's level; None leaves logging as it is
    disable_jump_forward: bool = False  # sglbench's own: grammar jump-forward on (the default) or off
    # decoding requests ride along with prefill steps; None: sglbench's default (on), unlike SGLang's (off)
    enable_mixed_chunk: bool | None = None
    # CUDA graphs for decode (on CUDA with the Triton backend); SGLang's names and meanings
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int | None = None
    cuda_graph_bs: tuple[int, ...] | list[int] | None = None
    ignored: tuple[tuple[str, Any], ...] = ()  # SGLang arguments given that have no effect here

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend {self.attention_backend!r} is not available in sglbench; "
                             f"choose one of {[b for b in ATTENTION_BACKENDS if b]} (or leave it None)")
        if self.log_level is not None and str(self.log_level).lower() not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {list(LOG_LEVELS)}, got {self.log_level!r}")
        if self.tokenizer_path is not None and self.tokenizer_path != self.model_path:
            raise ValueError(f"tokenizer_path={self.tokenizer_path!r}: sglbench reads the tokenizer from the "
                             "model folder; leave tokenizer_path unset (or equal to model_path)")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ServerArgs:
        """Build from `sgl.Engine(**kwargs)`: TypeError for names SGLang does not have, ValueError for values
        that mean nothing for one in-process engine (all named at once)."""
        own = {f.name for f in dataclasses.fields(cls)} - {"ignored"}
        known = own | ONE_PROCESS.keys() | LACKING.keys() | IGNORED
        unknown = sorted(set(kwargs) - known)
        if unknown:
            hints = {n: difflib.get_close_matches(n, known, n=1) for n in unknown}
            hint = "; ".join(f"{n}: did you mean {m[0]!r}?" for n, m in hints.items() if m)
            raise TypeError(f"unknown server argument(s) {unknown}" + (f" ({hint})" if hint else ""))
        problems = [
            f"{name}={value!r} has no meaning here: sglbench runs one engine in this process "
            f"(only {name}={ONE_PROCESS[name]!r})"
            for name, value in kwargs.items() if name in ONE_PROCESS and value != ONE_PROCESS[name]
        ] + [
            f"{name}={value!r} is not available in sglbench: {LACKING[name][1]}"
            for name, value in kwargs.items() if name in LACKING and value not in LACKING[name][0]
        ]
        if problems:
            raise ValueError("; ".join(problems))
        ignored = tuple(sorted((k, v) for k, v in kwargs.items() if k in IGNORED))
        return cls(**{k: v for k, v in kwargs.items() if k in own}, ignored=ignored)

    def runtime_kwargs(self, model_path: str | None) -> dict[str, Any]:
        """Keyword arguments for `Runtime` (model_path: the resolved local folder); unset ones keep its defaults."""
        optional = {name: getattr(self, name) for name in (
            "mem_fraction_static", "max_running_requests", "chunked_prefill_size", "max_prefill_tokens",
            "schedule_policy", "schedule_conservativeness", "random_seed", "enable_mixed_chunk", "cuda_graph_max_bs",
            "cuda_graph_bs")}
        return {
            "model_path": model_path, "device": self.device or "auto", "dtype": DTYPES[self.dtype],
            "max_total_tokens": self.max_total_tokens, "context_length": self.context_length,
            "attention_backend": ATTENTION_BACKENDS[self.attention_backend],
            "disable_radix_cache": self.disable_radix_cache, "disable_jump_forward": self.disable_jump_forward,
            "disable_cuda_graph": self.disable_cuda_graph,
            **{k: v for k, v in optional.items() if v is not None},
        }

    def as_dict(self) -> dict[str, Any]:
        """Every argument by name, the one-process ones (tp_size=1, ...) and the ignored ones included."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ignored"}
        return {**ONE_PROCESS, **own, **dict(self.ignored)}

    def apply_log_level(self) -> None:
        """Set the "sglbench" logger's level, as SGLang's log_level sets its loggers'."""
        if self.log_level is not None:
            logging.getLogger("sglbench").setLevel(str(self.log_level).upper())
