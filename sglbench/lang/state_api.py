"""The program-facing surface shared by a running state and a tracing state: role blocks, variable
scopes and fork groups, all expressed through `_add(expr)`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sglbench.lang.ir import (
    SglExpr,
    SglExprList,
    SglRoleBegin,
    SglRoleEnd,
    SglVarScopeBegin,
    SglVarScopeEnd,
    as_expr,
)


class StateMethods(ABC):
    """Mixin: `s.system/user/assistant(expr)` adds a role block; without expr it is a `with` block."""

    @abstractmethod
    def _add(self, expr: SglExpr) -> None:
        """Append expr to this state's program."""

    def __iadd__(self, other: Any):
        self._add(as_expr(other))
        return self

    def _role(self, role: str, expr: Any):
        if expr is None:
            return self._role_scope(role)
        self._add(SglExprList((SglRoleBegin(role), as_expr(expr), SglRoleEnd(role))))
        return None

    @contextmanager
    def _role_scope(self, role: str) -> Iterator[None]:
        self._add(SglRoleBegin(role))
        yield
        self._add(SglRoleEnd(role))

    def system(self, expr: Any = None):
        return self._role("system", expr)

    def user(self, expr: Any = None):
        return self._role("user", expr)

    def assistant(self, expr: Any = None):
        return self._role("assistant", expr)

    @contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """The text added inside the block becomes variable `name`."""
        self._add(SglVarScopeBegin(name))
        yield
        self._add(SglVarScopeEnd(name))

    @abstractmethod
    def fork(self, size: int = 1, position_ids_offset: list[int] | None = None):
        """size copies of this state at this point of the program, as a group to join."""

    @contextmanager
    def copy(self, position_ids_offset: list[int] | None = None) -> Iterator[Any]:
        """`with s.copy() as c:` a fork of s to work on; joined (gather_variable) when the block ends."""
        group = self.fork(1, position_ids_offset)
        try:
            yield group[0]
        finally:
            group.join()


class StateGroupMethods:
    """Mixin for fork groups: `forks += x` adds x to every fork; x may be a list (one item per fork)
    or a function of the fork index."""

    states: list

    def __iadd__(self, other: Any):
        if other is None:
            raise ValueError("cannot add None to forked states")
        if callable(other):
            items = [other(i) for i in range(len(self.states))]
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"got {len(other)} items for {len(self.states)} forks")
            items = list(other)
        else:
            items = [other] * len(self.states)
        for state, item in zip(self.states, items):
            state += item
        return self

    def __getitem__(self, i: int):
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        """What `forks[i] += x` ends with: storing back the same fork (a fork cannot be replaced)."""
        if value is not self.states[i]:
            raise TypeError(f"forks[{i}] can only be added to (forks[{i}] += ...), not replaced")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self):
        return iter(self.states)


def fork_size(size: Any) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"fork size must be a positive integer, got {size!r}")
    return size


def check_join_mode(mode: str) -> str:
    if mode not in ("gather_variable", "concate_and_append"):
        raise ValueError(f"join mode must be 'gather_variable' or 'concate_and_append', got {mode!r}")
    return mode

