"""Identifiers for programs, states and requests: 80 random bits each, so ids are unique and unguessable (a
client cannot name another client's request to abort or shadow it). os.urandom costs about a microsecond."""

from __future__ import annotations

import secrets


def new_id() -> str:
    """A fresh 20-character hex id."""
    return secrets.token_hex(10)
