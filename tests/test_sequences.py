"""common_prefix_len (the one prefix comparison of the radix cache, scheduler and frontends) against a plain walk."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sglbench.sequences import common_prefix_len

tokens = st.lists(st.integers(0, 3), max_size=40)


def walk(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@given(tokens, tokens)
def test_matches_a_plain_walk_for_lists_tuples_and_mixed(a, b):
    expected = walk(a, b)
    assert common_prefix_len(a, b) == expected
    assert common_prefix_len(tuple(a), tuple(b)) == expected
    assert common_prefix_len(tuple(a), b) == expected  # mixed types take the element walk


@given(tokens, tokens)
def test_shared_prefix_is_found_exactly(shared, rest):
    a, b = [*shared, 7, *rest], [*shared, 8]
    assert common_prefix_len(a, b) == len(shared) == common_prefix_len(b, a)
    assert common_prefix_len(shared, shared + rest) == len(shared)
