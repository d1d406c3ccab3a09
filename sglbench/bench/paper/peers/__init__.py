"""Peer systems of the paper suite: Outlines, Guidance and LMQL, each running every workload it can express
in its own API on the same checkpoint through its own transformers backend (`pip install -e '.[peers]'`).

`open_peer` imports a peer only when asked, so the suite runs without them: a peer that is not installed,
or that fails to load, becomes an `UnavailablePeer` whose rows say why.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass

import torch

from sglbench.bench.paper.peers.base import MISSING, PeerSystem, UnavailablePeer


@dataclass(frozen=True)
class PeerSpec:
    """Where a peer lives: its distribution (what pip installs) and the module and class that drive it."""

    distribution: str
    module: str
    cls: str
    # The model already computes in a process of the peer's own, and the peer refuses to start inside a
    # multiprocessing worker (LMQL's in-process model server): the suite never isolates it again.
    own_process: bool = False


PEERS = {
    "outlines": PeerSpec("outlines", "sglbench.bench.paper.peers.outlines_peer", "OutlinesPeer"),
    "guidance": PeerSpec("guidance", "sglbench.bench.paper.peers.guidance_peer", "GuidancePeer"),
    "lmql": PeerSpec("lmql", "sglbench.bench.paper.peers.lmql_peer", "LmqlPeer", own_process=True),
}


def peer_version(key: str) -> str | None:
    """The installed version of a peer's distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(PEERS[key].distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def open_peer(key: str, name: str, model_path: str, device: str, dtype: torch.dtype,
              batch_size: int = 16) -> PeerSystem:
    """The peer `key` (a key of PEERS) loaded on the checkpoint, or an UnavailablePeer saying why not."""
    spec = PEERS[key]
    if importlib.util.find_spec(spec.distribution) is None:
        return UnavailablePeer(name, MISSING)
    try:
        cls = getattr(importlib.import_module(spec.module), spec.cls)
        return cls(name, model_path, device, dtype, batch_size)
    except Exception as exc:
        return UnavailablePeer(name, f"unavailable: {type(exc).__name__}: {exc}")
