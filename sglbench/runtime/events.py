"""Append-only engine event log: what viz and reports read, never a channel back into the engine."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One thing that happened: kind is e.g. 'request.arrived', 'batch.step', 'cache.evict'."""

    seq: int
    time: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """Thread-safe, bounded (oldest dropped first) log with monotonically increasing sequence numbers."""

    def __init__(self, capacity: int = 200_000):
        self.capacity = capacity
        self._events: list[Event] = []
        self._next_seq = 0
        self._lock = threading.Lock()

    def emit(self, kind: str, **data: Any) -> None:
        with self._lock:
            self._events.append(Event(self._next_seq, time.time(), kind, data))
            self._next_seq += 1
            if len(self._events) > self.capacity:
                del self._events[: len(self._events) - self.capacity]

    def since(self, seq: int = 0, kinds: tuple[str, ...] | None = None) -> list[Event]:
        """Events with sequence number >= seq, optionally only of the given kinds (prefix match)."""
        with self._lock:
            start = max(0, seq - self._events[0].seq) if self._events else 0
            events = self._events[start:]
        if kinds:
            events = [e for e in events if e.kind.startswith(kinds)]
        return events

    @property
    def next_seq(self) -> int:
        return self._next_seq
