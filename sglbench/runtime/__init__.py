"""The in-process LLM engine: paged KV pool, radix cache, scheduler, sampling, Llama-family models."""

from sglbench.runtime.runtime import Runtime
from sglbench.runtime.sampling import SamplingParams

__all__ = ["Runtime", "SamplingParams"]
