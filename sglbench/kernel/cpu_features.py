"""What the host CPU offers the bf16 path: AMX-BF16 tiles, AVX512-BF16 dot products, plain AVX-512.

Read once from /proc/cpuinfo's flags on Linux, else from what torch reports (its dispatch capability and,
where the build has them, its AMX / AVX512-BF16 probes). The engine uses `fast_bf16` to let dtype="auto"
run bf16 checkpoints in bf16, and `cpu_linear` to pack bf16 weights for oneDNN's AMX kernels.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's bf16-relevant instruction sets, and where that was read ('cpuinfo' or 'torch')."""

    amx_bf16: bool
    avx512_bf16: bool
    avx512f: bool
    avx512_fp16: bool
    torch_capability: str  # torch's kernel dispatch level, e.g. 'AVX512' or 'DEFAULT'
    source: str

    @property
    def fast_bf16(self) -> bool:
        """Whether bf16 matmuls run natively (AMX tiles or AVX512-BF16), not emulated through fp32."""
        return self.amx_bf16 or self.avx512_bf16

    def describe(self) -> str:
        """One line for model info: the bf16-relevant features present, e.g. 'AMX-BF16 AVX512-BF16 AVX512F'."""
        names = [name for name, present in (("AMX-BF16", self.amx_bf16), ("AVX512-BF16", self.avx512_bf16),
                                            ("AVX512-FP16", self.avx512_fp16), ("AVX512F", self.avx512f)) if present]
        return f"{' '.join(names) or 'no AVX-512/AMX'} (torch {self.torch_capability}, from {self.source})"


def parse_cpuinfo_flags(text: str) -> frozenset[str]:
    """The flags of the first processor listed in /proc/cpuinfo's text (empty when there are none)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def features_from_flags(flags: frozenset[str], torch_capability: str, source: str = "cpuinfo") -> CpuFeatures:
    """CpuFeatures from a set of Linux cpuinfo flag names."""
    return CpuFeatures(amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags,
                       avx512f="avx512f" in flags, avx512_fp16="avx512_fp16" in flags,
                       torch_capability=torch_capability, source=source)


def _torch_probe(name: str) -> bool:
    probe = getattr(getattr(torch._C, "_cpu", None), name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def features_from_torch(torch_capability: str) -> CpuFeatures:
    """CpuFeatures from torch's own probes (no cpuinfo: macOS, Windows); what a build lacks reads as absent."""
    return CpuFeatures(amx_bf16=_torch_probe("_is_amx_tile_supported"),
                       avx512_bf16=_torch_probe("_is_avx512_bf16_supported"),
                       avx512f=torch_capability.startswith("AVX512"),
                       avx512_fp16=_torch_probe("_is_avx512_fp16_supported"),
                       torch_capability=torch_capability, source="torch")


@functools.cache
def detect() -> CpuFeatures:
    """This machine's CpuFeatures (read once per process)."""
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        flags = parse_cpuinfo_flags(_CPUINFO.read_text())
    except OSError:
        flags = frozenset()
    return features_from_flags(flags, capability) if flags else features_from_torch(capability)


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say (sysconf)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
