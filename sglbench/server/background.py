"""`sglbench serve` inside a notebook or a test: the app on a loopback port, served by uvicorn on a thread, around a
Runtime the caller keeps using in process (its dashboard shows the served requests too)."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import: clients and benchmarks use free_port without loading the engine
    from sglbench.runtime.runtime import Runtime


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """An ASGI app served on a thread: `url` (e.g. http://127.0.0.1:PORT), `openai_url` (its /v1), `stop()`; a
    context manager. Stopping the server leaves the Runtime behind the app running."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0):
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.openai_url = f"{self.url}/v1"
        self.app = app
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name=f"sglbench-serve-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open connections are closed); the Runtime keeps running."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BackgroundServer({self.url}, {'running' if self._thread.is_alive() else 'stopped'})"


def serve_in_background(rt: Runtime, host: str = "127.0.0.1", port: int | None = None,
                        **app_kwargs: Any) -> BackgroundServer:
    """Serve rt over HTTP (SGLang-native and OpenAI-compatible) from a thread; app_kwargs go to `build_app`
    (api_key, model_name, tool_call_parser, reasoning_parser, ...)."""
    from sglbench.server.app import build_app

    return BackgroundServer(build_app(rt, **app_kwargs), host, port)
