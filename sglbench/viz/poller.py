"""A throttled background poller: the one place viz starts a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable

MIN_INTERVAL = 0.1
"""Seconds between ticks at the least: live views read snapshots at most 10 times per second."""


class Poller:
    """Daemon thread calling `tick()` every `interval` seconds (never faster than MIN_INTERVAL) until `stop()`.

    A tick that raises (e.g. the runtime was shut down) ends the thread; the error is kept in `error`.
    """

    def __init__(self, tick: Callable[[], object], interval: float = MIN_INTERVAL, name: str = "sglbench-viz"):
        self.interval = max(float(interval), MIN_INTERVAL)
        self.name = name
        self.error: str | None = None
        self._tick = tick
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start ticking (no-op if already running)."""
        if self.running:
            return
        self._stopped.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking and wait for the thread (unless called from the tick itself)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self._tick()
            except Exception as exc:  # the thread has no caller to raise to: keep the reason, stop
                self.error = repr(exc)
                return
