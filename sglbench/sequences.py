"""Token-sequence helpers shared by the radix cache, the scheduler, the engine and the frontends (no torch)."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of a and b.

    Lists against lists (or tuples against tuples) bisect with slice comparisons, which run in C: the
    scheduler and the radix cache compare prompts of thousands of tokens on every step. Other pairs
    are walked element by element."""
    n = min(len(a), len(b))
    if type(a) is not type(b) or not isinstance(a, (list, tuple)):
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return i
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
