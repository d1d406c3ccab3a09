"""How sglbench holds CPU memory: freed activations kept in the heap, weights and KV pool on huge pages.

Freed activations. glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB
as blocks are freed) with freshly mapped pages and unmaps them on free, and it trims the heap top past the
trim threshold. A prefill step allocates tens of MiB per layer (the default model's gate/up output for 6,000
tokens is 34 MiB), so every layer of every step page-faults on fresh zeroed pages. Raising both thresholds
(`retain_freed_memory`) lets the next step reuse the same memory: 10-15 % faster prefill on this repository's
CPU. The price is that the process keeps up to TRIM_THRESHOLD of freed memory. The setting is process-wide:
whatever else runs in the process (a transformers model, say) gets the same heap.

Weights on huge pages. A decode step streams every weight once, and on 4 KiB pages that is a TLB miss (a page
walk, two-dimensional under a hypervisor) every 4 KiB. `move_to_huge_pages` copies the dense weights into one
2 MiB-aligned mapping advised MADV_HUGEPAGE, so the kernel backs it with transparent huge pages: on this
repository's 2-core Xeon VM the C GEMV read Qwen2.5-0.5B's bf16 layer weights at 25-26 GB/s instead of 19-22
(the 272 MB lm-head: 27.8 instead of 24-25). The KV pool takes a `huge_page_buffer` of its own (kv_pool.py).
Where THP is off ("never") or missing, nothing moves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import platform
from collections.abc import Iterable
from pathlib import Path

import torch

MMAP_THRESHOLD = 256 << 20  # blocks below this come from the heap
TRIM_THRESHOLD = 512 << 20  # free memory the heap top may hold before it is returned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_applied = False
HUGE_PAGE_BYTES = 2 << 20  # a transparent huge page on x86-64 and (with 4 KiB base pages) arm64
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
_ALIGN = 64  # each tensor in a huge-page buffer starts on a cache line
THP_ON = ("always", "madvise")  # the THP modes in which MADV_HUGEPAGE takes effect


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; False where the C library is not glibc."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) & bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied


def transparent_huge_pages() -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise' or 'never'); None where it has none."""
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_page_buffer(nbytes: int) -> torch.Tensor | None:
    """A zeroed uint8 CPU tensor of nbytes on a private anonymous mapping of its own, 2 MiB aligned and advised
    MADV_HUGEPAGE (the kernel backs it with huge pages as it is first touched); None where THP is off."""
    if nbytes <= 0 or transparent_huge_pages() not in THP_ON or not hasattr(mmap, "MADV_HUGEPAGE"):
        return None
    mapping = mmap.mmap(-1, nbytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE)
    except OSError:
        mapping.close()
        return None
    whole = torch.frombuffer(mapping, dtype=torch.uint8)  # holds the mapping until its storage is freed
    start = -whole.data_ptr() % HUGE_PAGE_BYTES
    return whole[start : start + nbytes]


def move_to_huge_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Copy each dense, contiguous CPU tensor (a model's parameters, say) into one `huge_page_buffer` and point
    it there (`tensor.data`), so modules holding it read the copy and the old memory is freed: returns the
    bytes moved, 0 where THP is off or nothing qualifies. Tensors already on huge pages, packed (mkldnn) ones
    and views that are not contiguous stay where they are."""
    movable, seen = [], set()
    for t in tensors:
        if (id(t) in seen or t.device.type != "cpu" or t.is_mkldnn or not t.is_contiguous() or t.numel() == 0
                or on_huge_pages(t)):
            continue
        seen.add(id(t))
        movable.append(t)
    offsets, total = [], 0
    for t in movable:
        offsets.append(total)
        total += -(-t.nbytes // _ALIGN) * _ALIGN
    buffer = huge_page_buffer(total)
    if buffer is None:
        return 0
    with torch.no_grad():
        for t, at in zip(movable, offsets):
            copy = buffer[at : at + t.nbytes].view(t.dtype).view(t.shape)
            copy.copy_(t)
            t.data = copy
    buffer.untyped_storage()._sglbench_huge = True
    return sum(t.nbytes for t in movable)


def on_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether `move_to_huge_pages` put this tensor's storage on its huge-page buffer (the mark rides on the
    storage's Python object, which torch keeps for as long as the storage lives)."""
    return not tensor.is_mkldnn and bool(getattr(tensor.untyped_storage(), "_sglbench_huge", False))
