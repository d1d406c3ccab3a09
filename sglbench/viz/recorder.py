"""`MetricsRecorder`: keeps a history of engine metrics (and the largest radix tree) while programs run.

Reads only `rt.metrics()` and `rt.cache_snapshot()`; a timeline or report built later gets the history.
"""

from __future__ import annotations

import threading
from typing import Any

from sglbench.runtime.records import CacheSnapshot, EngineMetrics
from sglbench.viz.poller import MIN_INTERVAL, Poller


class MetricsRecorder:
    """Samples `rt.metrics()` when it changed; history is thinned by half whenever it exceeds `max_samples`.

    With `track_largest`, also keeps the radix tree snapshot (without text: `render_tree(decode=...)` labels it) taken
    when the cache held the most tokens so far.

    >>> with MetricsRecorder(rt) as rec:      # samples in the background while the block runs
    ...     judge.run_batch(essays)
    >>> rt.report("run.html")                 # or write_report(rt, path, metrics_history=rec)
    """

    def __init__(self, rt: Any, interval: float = MIN_INTERVAL, max_samples: int = 4096, track_largest: bool = True):
        if max_samples < 2:
            raise ValueError(f"max_samples must be >= 2, got {max_samples}")
        self.rt = rt
        self.max_samples = max_samples
        self.track_largest = track_largest
        self._samples: list[EngineMetrics] = []
        self._largest: CacheSnapshot | None = None
        self._lock = threading.Lock()
        self._poller = Poller(self.sample, interval, name="sglbench-metrics")

    def sample(self) -> bool:
        """Record the current metrics if they changed since the last sample; returns whether it did."""
        m = self.rt.metrics()
        with self._lock:
            if self._samples and self._samples[-1] is m:
                return False
            self._samples.append(m)
            if len(self._samples) > self.max_samples:
                self._samples = self._samples[::2]
            largest = -1 if self._largest is None else self._largest.total_size
        if self.track_largest and m.cache_evictable + m.cache_protected > largest:
            snap = self.rt.cache_snapshot(with_text=False)
            with self._lock:
                if self._largest is None or snap.total_size > self._largest.total_size:
                    self._largest = snap
        return True

    @property
    def samples(self) -> tuple[EngineMetrics, ...]:
        with self._lock:
            return tuple(self._samples)

    @property
    def largest(self) -> CacheSnapshot | None:
        """The snapshot taken when the cache was at its largest so far (None before the first sample)."""
        return self._largest

    @property
    def running(self) -> bool:
        return self._poller.running

    def start(self) -> MetricsRecorder:
        """Sample in a background thread (at most 10 times per second)."""
        self.sample()
        self._poller.start()
        return self

    def stop(self) -> MetricsRecorder:
        """Stop the thread and take a final sample."""
        self._poller.stop()
        self.sample()
        return self

    def __enter__(self) -> MetricsRecorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MetricsRecorder(samples={len(self._samples)}, running={self.running})"
