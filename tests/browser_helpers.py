"""Real-browser test support: headless Debian chromium through playwright, a throwaway JupyterLab server.

Nothing is downloaded: playwright drives the system chromium (`CHROMIUM`), with background networking
off (on a closed network it makes chromium hang). Tests skip, naming what is missing, when either is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sglbench.server.background import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
VIEWPORT = {"width": 1400, "height": 1000}
# User settings of a test server: no news or update requests, no kernel dialog, every cell in the DOM.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True, "windowingMode": "none"},
}


def require_browser() -> Any:
    """playwright's sync API module, or skip the test naming what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (Debian package `chromium`)")
    try:
        from playwright import sync_api
    except ImportError:
        pytest.skip("Python package `playwright` not installed")
    return sync_api


@contextmanager
def chromium_context(user_data_dir: Path, timeout_ms: int = 30_000) -> Iterator[Any]:
    """A headless chromium browser context on a fresh profile, closed on exit (default timeouts bounded)."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_ARGS),
            viewport=VIEWPORT, timeout=timeout_ms,
        )
        context.set_default_timeout(timeout_ms)
        try:
            yield context
        finally:
            context.close()


def save_screenshot(page: Any, path: Path, **options: Any) -> Path:
    """Screenshot `page` (or one element: a playwright Locator) to `path`; also copied into $SGLBENCH_ARTIFACTS
    when that is set."""
    page.screenshot(path=str(path), **options)
    artifacts = os.environ.get("SGLBENCH_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(artifacts) / path.name)
    return path


def kernel_pids(runtime_dir: Path) -> dict[int, list[str]]:
    """Kernel processes (pid -> argv) whose connection file lies in `runtime_dir` (read from /proc)."""
    found: dict[int, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(arg.startswith(str(runtime_dir)) and "kernel-" in arg for arg in argv):
            found[int(proc.name)] = [a for a in argv if a]
    return found


@dataclass
class JupyterLab:
    """A running JupyterLab server: URL, token, process, log, and the runtime folder of its kernels."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path
    runtime_dir: Path

    def api(self, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
        """JSON from the server's REST API (token-authenticated)."""
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: str) -> str:
        """The browser URL opening `notebook` (relative to the server root) in JupyterLab."""
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:]


def _wait_ready(lab: JupyterLab, timeout: float) -> None:
    """Poll /api/status until the server answers; fail with its log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {lab.process.returncode}:\n{lab.log_tail()}")
        try:
            lab.api("/api/status", timeout=2.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    raise TimeoutError(f"jupyter lab did not answer within {timeout:.0f}s:\n{lab.log_tail()}")


def _stop(lab: JupyterLab, timeout: float) -> None:
    """Shut the server down (its kernels with it); kill whatever is left: its process group, stray kernels."""
    if lab.process.poll() is None:
        with suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            lab.api("/api/shutdown", method="POST")
        try:
            lab.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(lab.process.pid, signal.SIGKILL)
            lab.process.wait(timeout=timeout)
    for pid in kernel_pids(lab.runtime_dir):  # kernels run in their own sessions: not in the server's group
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextmanager
def jupyter_lab(root_dir: Path, state_dir: Path, *, env: dict[str, str] | None = None, auto_start_kernel: bool = True,
                start_timeout: float = 60.0, stop_timeout: float = 15.0) -> Iterator[JupyterLab]:
    """JupyterLab on 127.0.0.1 serving `root_dir` with a token, run by this interpreter; always stopped.

    Jupyter's config, data and runtime folders and IPython's live under `state_dir`, so no user settings,
    workspaces, startup files or kernel specs leak in; the `python3` kernel spec's `python` then resolves
    to `sys.executable`. With auto_start_kernel=False an opened notebook gets no kernel unless one is chosen.
    """
    token = os.urandom(16).hex()
    port = free_port()
    runtime_dir = state_dir / "runtime"
    folders = {"JUPYTER_CONFIG_DIR": state_dir / "config", "JUPYTER_DATA_DIR": state_dir / "data",
               "JUPYTER_RUNTIME_DIR": runtime_dir, "IPYTHONDIR": state_dir / "ipython"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    tracker = "@jupyterlab/notebook-extension/tracker"
    lab_settings = {**LAB_SETTINGS, tracker: {**LAB_SETTINGS[tracker], "autoStartDefaultKernel": auto_start_kernel}}
    for plugin, settings in lab_settings.items():
        path = state_dir / "config" / "lab" / "user-settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings))
    full_env = {**(os.environ if env is None else env), **{k: str(v) for k, v in folders.items()}}
    full_env.pop("JUPYTER_PATH", None)
    log_path = state_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root_dir}", "--ServerApp.allow_root=True",
             "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly"],
            env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        lab = JupyterLab(f"http://127.0.0.1:{port}", token, process, log_path, runtime_dir)
        try:
            _wait_ready(lab, start_timeout)
            yield lab
        finally:
            _stop(lab, stop_timeout)
