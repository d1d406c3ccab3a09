"""Identifiers for programs, states and requests: unique in this process (a counter) and, through a
random tag drawn once, across processes. uuid4 costs a system call each, which a run_batch of hundreds
of programs pays while it competes with the engine for the CPU."""

from __future__ import annotations

import itertools
import uuid

_PROCESS_TAG = uuid.uuid4().hex[:12]
_counter = itertools.count()  # next() on it is atomic under the GIL


def new_id() -> str:
    """A fresh 20-character hex id."""
    return f"{_PROCESS_TAG}{next(_counter):08x}"
