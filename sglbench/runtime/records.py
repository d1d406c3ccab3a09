"""The engine's records: events, counters, cache snapshots, metrics, model info; immutable and torch-free.

Widgets, reports and HTTP clients import these without loading torch or the engine; the engine
builds them on its thread and other threads only read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREVIEW_TOKENS = 32
"""How many leading token ids of a node a `NodeSnapshot` carries (and decodes into text_preview)."""

EventKind = Literal["insert", "split", "evict", "flush"]


@dataclass(frozen=True)
class CacheEvent:
    """One structural change, for the append-only event log the widgets replay.

    insert: a new leaf `node_id` now caches `num_tokens` tokens.
    split:  a node was cut in two; `node_id` is the new upper node holding its first
            `num_tokens` tokens (the split node keeps its id for the rest and hangs below).
    evict:  node `node_id` and its `num_tokens` slots were freed.
    flush:  the whole cache was dropped; `node_id` is the root, `num_tokens` the tokens freed.
    """

    kind: EventKind
    node_id: int
    num_tokens: int


@dataclass(frozen=True)
class CacheCounters:
    """Cumulative token counters; a window's numbers are the difference of two records (`later - earlier`).

    evicted_tokens counts tokens dropped by evict() and flush(), so
    inserted_tokens - evicted_tokens == total_size() at all times.
    """

    query_tokens: int = 0
    hit_tokens: int = 0
    inserted_tokens: int = 0
    evicted_tokens: int = 0

    def __sub__(self, earlier: CacheCounters) -> CacheCounters:
        return CacheCounters(
            self.query_tokens - earlier.query_tokens,
            self.hit_tokens - earlier.hit_tokens,
            self.inserted_tokens - earlier.inserted_tokens,
            self.evicted_tokens - earlier.evicted_tokens,
        )

    @property
    def hit_rate(self) -> float:
        """Fraction of queried tokens that were served from the cache (0.0 before any query)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@dataclass(frozen=True)
class NodeSnapshot:
    """Immutable view of one node. The root has id 0, parent_id None and no tokens."""

    id: int
    parent_id: int | None
    num_tokens: int
    token_ids_preview: tuple[int, ...]
    lock_ref: int
    last_access: int
    hit_count: int
    text_preview: str | None = None
    token_ids: tuple[int, ...] = ()  # every token id of the node (shared with the tree: keys are immutable)


@dataclass(frozen=True)
class CacheSnapshot:
    """Immutable view of the whole cache; `version` grows with every mutation (equal versions, equal content)."""

    version: int
    disabled: bool
    nodes: tuple[NodeSnapshot, ...]  # depth-first, root first, siblings by first token id
    evictable_size: int
    protected_size: int
    total_size: int
    counters: CacheCounters


@dataclass(frozen=True)
class EngineMetrics:
    """Immutable snapshot of engine counters, rebuilt after every step."""

    time: float
    num_waiting: int
    num_running: int
    pool_slots: int
    pool_free: int
    cache_evictable: int
    cache_protected: int
    cache: CacheCounters
    prefill_tokens: int
    decode_tokens: int
    num_steps: int
    num_finished: int
    num_retractions: int
    jump_forward_tokens: int = 0  # output tokens appended by jump-forward: decode steps saved

    @property
    def hit_rate(self) -> float:
        return self.cache.hit_tokens / self.cache.query_tokens if self.cache.query_tokens else 0.0


@dataclass(frozen=True)
class ModelInfo:
    """What a runtime serves, fixed once it is built: for servers, language backends and benchmarks."""

    model_path: str
    architecture: str
    num_params: int
    context_length: int  # the longest prompt plus output a request may have
    vocab_size: int
    dtype: str  # as torch prints it, e.g. 'torch.float32'
    device: str
    attention_backend: str  # the attention kernels in use: 'torch' or 'triton'
    max_total_tokens: int  # KV pool slots
    dtype_reason: str = ""  # why this dtype, e.g. 'auto: checkpoint stored in bfloat16 and the CPU has AMX-BF16'
    cpu_features: str = ""  # the CPU's bf16-relevant instruction sets (kernel/cpu_features.py); '' on a GPU
    packed_linears: int = 0  # linear layers whose weights are packed for oneDNN (kernel/cpu_linear.py)
    cpu_kernels: str = ""  # what sglbench's C kernels do here, or why they are off (kernel/cpu_native.py); '' on a GPU
    cpu_memory: str = ""  # how much of the weights sits on huge pages, or why none (runtime/cpu_memory.py); '' on a GPU
    cuda_graph_bs: tuple[int, ...] = ()  # decode batch sizes replayed from CUDA graphs (runtime/graph_runner.py)
    cuda_graph: str = ""  # whether decode graphs are on, and why not


@dataclass(frozen=True)
class RuntimeHealth:
    """Whether the runtime takes requests: state "running", "shutting_down" or "stopped", and why not (what a
    server's /health reports)."""

    state: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "running"

    @property
    def stopped(self) -> bool:
        """Whether it takes no new request (shutting down or stopped)."""
        return self.state != "running"
