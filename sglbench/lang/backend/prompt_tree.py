"""`PromptTree`: a client-side radix tree over the characters of the prompts a remote backend sent, so that
`sglbench.viz` can draw what a server's prefix cache could share, where the server shows no cache of its own.
"""

from __future__ import annotations

import heapq
import itertools
import threading

from sglbench.runtime.records import PREVIEW_TOKENS, CacheCounters, CacheSnapshot, NodeSnapshot
from sglbench.sequences import common_prefix_len


class _Node:
    __slots__ = ("children", "hit_count", "id", "key", "last_access", "lock_ref", "parent")

    def __init__(self, node_id: int, key: str, parent: _Node | None):
        self.id = node_id
        self.key = key  # characters of this run
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.lock_ref = 0  # requests in flight whose prompt passes through this node
        self.last_access = 0
        self.hit_count = 0  # prompts that shared this whole node with an earlier one


class PromptTree:
    """Radix tree over the characters of the prompts a remote backend sent: what a server's prefix cache
    could share. Nodes on an in-flight request's path are locked (drawn as in use); past `max_chars`,
    least recently used unlocked leaves are dropped. Thread-safe."""

    def __init__(self, max_chars: int = 1 << 20):
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._root = _Node(0, "", None)
        self._clock = self._version = self._size = 0
        self._inserted = self._evicted = 0
        self._server_prompt_tokens = self._server_cached_tokens = 0

    @property
    def version(self) -> int:
        """Grows with every change (a cheap probe for views)."""
        return self._version

    def send(self, prompt: str) -> _Node:
        """Insert prompt and lock its path until `done`; returns the ticket for `done`."""
        with self._lock:
            self._clock += 1
            self._version += 1
            node, pos = self._root, 0
            while pos < len(prompt):
                child = node.children.get(prompt[pos])
                if child is None:
                    child = _Node(next(self._ids), prompt[pos:], node)
                    node.children[prompt[pos]] = child
                    self._size += len(child.key)
                    self._inserted += len(child.key)
                else:
                    shared = common_prefix_len(child.key, prompt[pos:pos + len(child.key)])
                    if shared < len(child.key):
                        child = self._split(child, shared)
                    child.hit_count += 1
                child.last_access = self._clock
                node, pos = child, pos + len(child.key)
            self._walk_up(node, +1)
            self._evict()
            return node

    def done(self, ticket: _Node, meta: dict | None) -> None:
        """The request behind ticket finished; meta (when it succeeded) adds the server's token counts,
        where the server reports cached tokens."""
        with self._lock:
            self._version += 1
            self._walk_up(ticket, -1)
            if meta is not None and meta.get("cached_tokens") is not None:
                self._server_prompt_tokens += int(meta.get("prompt_tokens") or 0)
                self._server_cached_tokens += int(meta["cached_tokens"])
            self._evict()

    def clear(self) -> None:
        """Forget every prompt (after the server's cache was flushed)."""
        with self._lock:
            self._version += 1
            self._evicted += self._size
            self._size = 0
            self._root.children = {}

    def snapshot(self) -> CacheSnapshot:
        """The tree as the engine's `CacheSnapshot` (sizes in characters; the hit counters are the server's
        prompt and cached token counts)."""
        with self._lock:
            nodes, stack = [], [self._root]
            while stack:  # depth-first, siblings in character order
                n = stack.pop()
                nodes.append(NodeSnapshot(
                    id=n.id, parent_id=None if n.parent is None else n.parent.id, num_tokens=len(n.key),
                    token_ids_preview=tuple(ord(c) for c in n.key[:PREVIEW_TOKENS]), lock_ref=n.lock_ref,
                    last_access=n.last_access, hit_count=n.hit_count, text_preview=n.key[:PREVIEW_TOKENS],
                ))
                stack.extend(n.children[c] for c in sorted(n.children, reverse=True))
            protected = sum(n.num_tokens for n in nodes if n.lock_ref > 0)
            return CacheSnapshot(
                version=self._version, disabled=False, nodes=tuple(nodes), evictable_size=self._size - protected,
                protected_size=protected, total_size=self._size,
                counters=CacheCounters(self._server_prompt_tokens, self._server_cached_tokens, self._inserted,
                                       self._evicted),
            )

    # ------------------------------------------------------------------ internals (caller holds _lock)
    def _split(self, node: _Node, at: int) -> _Node:
        """Cut node after `at` characters; the new upper node takes its place and inherits its counts."""
        upper = _Node(next(self._ids), node.key[:at], node.parent)
        upper.lock_ref, upper.hit_count, upper.last_access = node.lock_ref, node.hit_count, node.last_access
        node.parent.children[upper.key[0]] = upper
        node.key, node.parent = node.key[at:], upper
        upper.children[node.key[0]] = node
        return upper

    def _walk_up(self, node: _Node, delta: int) -> None:
        while node is not self._root and node is not None:
            node.lock_ref += delta
            node = node.parent

    def _evict(self) -> None:
        if self._size <= self.max_chars:
            return
        target = self.max_chars * 9 // 10
        stack, leaves = [self._root], []
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if n is not self._root and not n.children and n.lock_ref == 0:
                leaves.append((n.last_access, n.id, n))
        heapq.heapify(leaves)
        while self._size > target and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            del parent.children[leaf.key[0]]
            self._size -= len(leaf.key)
            self._evicted += len(leaf.key)
            if parent is not self._root and not parent.children and parent.lock_ref == 0:
                heapq.heappush(leaves, (parent.last_access, parent.id, parent))
