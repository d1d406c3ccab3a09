"""Paged KV memory: one K and one V buffer per layer, a slot per token (page size 1), a free list.

Running requests and the radix cache share this pool; who holds which slot is the
engine's bookkeeping, the pool only knows free vs allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sglbench.runtime.cpu_memory import huge_page_buffer


class OutOfSlotsError(RuntimeError):
    """The pool has fewer free slots than asked for; the caller evicts or retracts first."""


@dataclass(frozen=True)
class KVPoolConfig:
    num_slots: int
    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: str
    huge_pages: bool = False  # CPU: the buffers on transparent huge pages, zeroed as first touched (cpu_memory)

    def __post_init__(self) -> None:
        if self.num_slots <= 0:
            raise ValueError(f"num_slots must be positive, got {self.num_slots}")

    @property
    def bytes_per_token(self) -> int:
        element = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.head_dim * element


class TokenSlotAllocator:
    """Free list over slot indices. Slot 0 is reserved as a padding target and never handed out.

    Kept in numpy, not torch: the engine allocates and frees on every step, and each torch call there gives
    up the GIL, which the language frontend's threads then hold for a switch interval (tree-of-thought: most
    of the scheduler's time was such waits). Slots come back as CPU int64 tensors (on the pool's device)."""

    def __init__(self, num_slots: int, device: str = "cpu"):
        self.num_slots = num_slots
        self.device = device
        self._free = np.arange(1, num_slots + 1, dtype=np.int64)
        self._free_count = num_slots
        self._allocated = np.zeros(num_slots + 1, dtype=bool)

    @property
    def free_count(self) -> int:
        return self._free_count

    def alloc(self, n: int) -> torch.Tensor:
        """Return n free slots (int64, on the pool's device) or raise OutOfSlotsError."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of slots ({n})")
        if n > self._free_count:
            raise OutOfSlotsError(f"asked for {n} KV slots, {self._free_count} free")
        start = self._free_count - n
        slots = self._free[start : self._free_count].copy()
        self._free_count = start
        self._allocated[slots] = True
        out = torch.from_numpy(slots)
        return out if str(self.device) == "cpu" else out.to(self.device)

    def free(self, slots: torch.Tensor) -> None:
        """Give slots back. Freeing a slot that is not allocated is a bookkeeping bug and raises."""
        if slots.numel() == 0:
            return
        if slots.device.type != "cpu" or slots.dtype != torch.int64:
            slots = slots.to("cpu", torch.int64)
        index = slots.numpy()
        if not self._allocated[index].all() or np.unique(index).size != index.size:
            raise RuntimeError("double free of KV slots")
        self._allocated[index] = False
        n = index.size
        self._free[self._free_count : self._free_count + n] = index
        self._free_count += n

    def allocated_count(self) -> int:
        return self.num_slots - self._free_count


class KVPool:
    """Per-layer K/V buffers of shape [num_slots + 1, kv_heads, head_dim] plus the slot allocator."""

    def __init__(self, config: KVPoolConfig):
        self.config = config
        shape = (config.num_slots + 1, config.kv_heads, config.head_dim)
        per_buffer = (config.num_slots + 1) * config.kv_heads * config.head_dim * config.dtype.itemsize
        arena = (huge_page_buffer(2 * config.num_layers * per_buffer)
                 if config.huge_pages and str(config.device) == "cpu" else None)
        self.huge_page_bytes = 0 if arena is None else arena.numel()
        if arena is not None:  # one mapping, K buffers then V buffers; its pages are zero until written
            buffers = [arena[i * per_buffer : (i + 1) * per_buffer].view(config.dtype).view(shape)
                       for i in range(2 * config.num_layers)]
        else:
            buffers = [torch.zeros(shape, dtype=config.dtype, device=config.device)
                       for _ in range(2 * config.num_layers)]
        self.k_buffers, self.v_buffers = buffers[: config.num_layers], buffers[config.num_layers :]
        self.allocator = TokenSlotAllocator(config.num_slots, config.device)

    @property
    def num_slots(self) -> int:
        return self.config.num_slots

    def alloc(self, n: int) -> torch.Tensor:
        return self.allocator.alloc(n)

    def free(self, slots: torch.Tensor) -> None:
        self.allocator.free(slots)

    @property
    def free_count(self) -> int:
        return self.allocator.free_count


class ReqToTokenTable:
    """Maps each admitted request's token positions to pool slots: table[row, pos] = slot.

    A row is held from admission to release; width is the longest context a request may have. One more
    row, `padding_row`, is never handed out and stays all zeros (slot 0, the pool's padding slot): the
    rows a padded decode batch (a replayed CUDA graph) fills its unused places with.
    """

    def __init__(self, max_requests: int, max_context: int, device: str = "cpu"):
        self.table = torch.zeros((max_requests + 1, max_context), dtype=torch.int64, device=device)
        # On the CPU, the same memory as numpy: a decode step's scattered writes there take a few us, not 50.
        self._array = self.table.numpy() if self.table.device.type == "cpu" else None
        self.padding_row = max_requests
        self._free_rows = list(range(max_requests - 1, -1, -1))

    @property
    def free_rows(self) -> int:
        return len(self._free_rows)

    def alloc(self) -> int:
        if not self._free_rows:
            raise OutOfSlotsError("no free request rows")
        return self._free_rows.pop()

    def free(self, row: int) -> None:
        self._free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.table[row, start : start + slots.numel()] = slots

    def write_one_each(self, rows: list[int], positions: list[int], slots: torch.Tensor) -> None:
        """slots[i] at (rows[i], positions[i]): one indexed write for a decode batch's new slots."""
        if self._array is not None and slots.device.type == "cpu":
            self._array[rows, positions] = slots.numpy()
            return
        index = torch.tensor([rows, positions], dtype=torch.int64, device=self.table.device)
        self.table[index[0], index[1]] = slots

    @property
    def array(self) -> np.ndarray | None:
        """The table as numpy (the same memory) when it is on the CPU, else None: for the engine's per-step
        index work, where each torch call costs more than the work."""
        return self._array

    def slots(self, row: int, start: int, end: int) -> torch.Tensor:
        return self.table[row, start:end]
