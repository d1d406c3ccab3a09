"""What one client may ask of `sglbench serve`: body size, prompt tokens, samples per request and requests in
flight, each with a default and a `serve` flag, answered 413/400/429 with a message naming the limit and the flag
that raises it. The two limits enforced before a route runs are plain ASGI middleware (so a client's disconnect
still reaches the route): `BodyLimit` reads and counts the body before anything parses it, `ConcurrencyLimit`
counts requests in flight per API key (or per client address when the server has no key)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIB = 1 << 20

# The `serve` flag that sets each limit (named in every refusal, with the field build_app takes).
FLAGS = {
    "max_body_bytes": "--max-body-mb",
    "max_prompt_tokens": "--max-prompt-tokens",
    "max_samples_per_request": "--max-samples-per-request",
    "max_concurrent_requests": "--max-concurrent-requests",
}


@dataclass(frozen=True)
class ServerLimits:
    """Per-request and per-client bounds of one server (`build_app(limits=...)`, `serve` flags)."""

    max_body_bytes: int = 16 * MIB  # a request body's size, read before parsing (413)
    max_prompt_tokens: int | None = None  # tokens of one prompt; None: the model's context length (400)
    max_samples_per_request: int = 256  # prompts x n of one request, so one body cannot flood the queue (400)
    max_concurrent_requests: int = 256  # in flight per API key, or per client address without one (429)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"ServerLimits.{field.name} must be a positive integer, got {value!r}")


def raise_hint(name: str) -> str:
    """How to raise limit `name`: its serve flag and its ServerLimits field."""
    return f"raise it with {FLAGS[name]} (ServerLimits.{name})"


def _refusal(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


class BodyLimit:
    """Reads a request's body, refusing it with 413 as soon as its Content-Length or the bytes received pass
    max_bytes, then hands the body on to the app (whose later `receive` calls see the client's disconnect).
    check(body) may refuse a body the limit lets through: it returns a 400 message, or None."""

    def __init__(self, app: ASGIApp, max_bytes: int, check: Callable[[bytes], str | None] | None = None):
        self.app, self.max_bytes, self.check = app, max_bytes, check

    def _too_large(self) -> JSONResponse:
        return _refusal(413, f"request body is larger than {self.max_bytes} bytes, this server's limit; "
                             f"{raise_hint('max_body_bytes')}", "invalid_request_error")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = self.check(body) if self.check is not None and body else None
        if problem is not None:
            await _refusal(400, problem, "invalid_request_error")(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read already, then what the client sends next (its disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


class ConcurrencyLimit:
    """Answers 429 (with Retry-After) to a client that already has `limit` requests in flight; a request counts
    from its arrival until its response (a whole stream) is sent. Clients are told apart by `client_of(scope)`.
    Paths in `exempt` (health checks) are not counted."""

    def __init__(self, app: ASGIApp, limit: int, client_of: Callable[[Scope], str],
                 exempt: frozenset[str] = frozenset(), retry_after_s: int = 1):
        self.app, self.limit, self.client_of, self.exempt = app, limit, client_of, exempt
        self.retry_after_s = retry_after_s
        self.in_flight: Counter[str] = Counter()  # event-loop state: only touched from ASGI calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        client = self.client_of(scope)
        if self.in_flight[client] >= self.limit:
            message = (f"too many requests in flight: this client already has {self.limit}, the most this server "
                       f"runs at once for one API key (or client address); retry later, or "
                       f"{raise_hint('max_concurrent_requests')}")
            await _refusal(429, message, "rate_limit_error", {"Retry-After": str(self.retry_after_s)}
                           )(scope, receive, send)
            return
        self.in_flight[client] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]
