"""SGLang's own frontend, fetched at test time: the `sglang` wheel from PyPI, loaded without its server.

SGLang's top-level `sglang/__init__.py` imports the GPU server (`sglang.srt`), so this module:

1. downloads one fixed wheel of `sglang==SGLANG_VERSION` with `pip download --no-deps` into a cache folder
   (`$SGLBENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/sglbench`, else `~/.cache/sglbench`), reused across runs
   and checked against its SHA-256;
2. extracts only the pure-Python frontend (`sglang/lang/`, `sglang/utils.py`) and the frontend test programs
   (`sglang/test/test_programs.py`) into a temporary folder;
3. writes a package `__init__.py` of its own (the wheel's `from sglang.lang... import` lines, nothing else)
   and provides the few `sglang.srt.*` names the frontend and the programs import as small stand-ins
   (`is_hip`, `get_tokenizer` through transformers, `envs`).

Nothing of SGLang is stored in this repository. Two `sglang` packages exist side by side in one process: the
wheel's (for its `RuntimeEndpoint` against `sglbench serve`) and `sglbench` posing as `sglang` (for the
in-process mode). Each is a `ModuleSet`, installed into `sys.modules` only while `with modules.active():`,
since SGLang's code imports lazily (`from sglang.lang.interpreter import run_program` inside a call).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sglbench.kernel.cpu_native import cache_dir  # sglbench's cache folder: the wheel is kept under it

SGLANG_VERSION = "0.5.23"
# The frontend is pure Python, so one wheel serves every machine: pip is told which one to fetch (the
# Linux x86-64 CPython 3.11 build), whatever this interpreter and platform are. PyPI never replaces a
# published file, so its hash is fixed.
WHEEL_NAME = f"sglang-{SGLANG_VERSION}-cp311-cp311-manylinux_2_34_x86_64.whl"
WHEEL_SHA256 = "00b3cd5b265ac76c64185fbb6b95424f324ddd9f428d0306b77bc9db9d859937"
PIP_TARGET = ["--only-binary=:all:", "--platform", "manylinux_2_34_x86_64", "--python-version", "3.11",
              "--implementation", "cp", "--abi", "cp311"]
# What is taken out of the wheel: the frontend, the helpers it imports, the programs, the public API list.
EXTRACT = ("sglang/__init__.py", "sglang/utils.py", "sglang/lang/", "sglang/test/test_programs.py")
PROGRAMS_FILE = "sglang/test/test_programs.py"


class WheelUnavailable(RuntimeError):
    """The wheel could not be obtained (no network, no pip): the tests skip, or fail under CI."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_download_lock = threading.Lock()


def _writable_cache() -> Path:
    """cache_dir()/wheels, or a folder under the system temp dir when that cannot be created."""
    for folder in (cache_dir() / "wheels", Path(tempfile.gettempdir()) / "sglbench-cache" / "wheels"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise WheelUnavailable(f"no writable cache folder ({cache_dir()}, {tempfile.gettempdir()})")


def wheel_path(attempts: int = 3) -> Path:
    """The cached wheel, downloaded with pip when missing (retried with backoff); raises WheelUnavailable."""
    with _download_lock:
        for cached in (cache_dir() / "wheels" / WHEEL_NAME,
                       Path(tempfile.gettempdir()) / "sglbench-cache" / "wheels" / WHEEL_NAME):
            if cached.is_file() and _sha256(cached) == WHEEL_SHA256:
                return cached
        folder = _writable_cache()
        target = folder / WHEEL_NAME
        errors = []
        for attempt in range(attempts):
            with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
                       "--disable-pip-version-check", "--retries", "5", "--timeout", "60", *PIP_TARGET,
                       "-d", tmp, f"sglang=={SGLANG_VERSION}"]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                except (OSError, subprocess.TimeoutExpired) as e:
                    errors.append(repr(e))
                else:
                    got = Path(tmp) / WHEEL_NAME
                    if done.returncode == 0 and got.is_file():
                        digest = _sha256(got)
                        if digest != WHEEL_SHA256:  # not a network problem: never skip over this
                            raise AssertionError(f"{WHEEL_NAME}: SHA-256 {digest}, expected {WHEEL_SHA256}")
                        os.replace(got, target)  # atomic: a concurrent run sees the whole file or none
                        return target
                    errors.append((done.stderr or done.stdout).strip()[-2000:])
            if attempt + 1 < attempts:
                time.sleep(2 * (attempt + 1))
        raise WheelUnavailable(f"`pip download --no-deps sglang=={SGLANG_VERSION}` failed {attempts} times; "
                               f"last error:\n{errors[-1]}")


def extract(wheel: Path, dest: Path) -> Path:
    """The frontend files of the wheel under dest; returns dest (the folder holding `sglang/`)."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(EXTRACT) and not n.endswith("/")]
        missing = [p for p in EXTRACT if not any(n.startswith(p) for n in names)]
        assert not missing, f"{wheel.name} lacks {missing}"
        for name in names:
            zf.extract(name, dest)
    return dest


# ---------------------------------------------------------------------------------------------------------
# Stand-ins for the `sglang.srt` names the frontend imports (the real ones need the GPU server).


def _module(name: str, doc: str, package: bool = False, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name, doc)
    if package:
        mod.__path__ = []  # a package with no files: any other `sglang.srt.*` is a clear ModuleNotFoundError
    mod.__dict__.update(attrs)
    return mod


def _get_tokenizer(tokenizer_name: str, *args, tokenizer_mode: str = "auto", trust_remote_code: bool = False,
                   tokenizer_revision: str | None = None, **kwargs):
    """`sglang.srt.utils.hf_transformers_utils.get_tokenizer`, reduced to what a CPU test needs."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_name, *args, trust_remote_code=trust_remote_code,
                                         revision=tokenizer_revision, use_fast=tokenizer_mode != "slow")


class _EnvVar:
    def __init__(self, name: str):
        self.name = name

    def get(self):
        value = os.environ.get(self.name)
        if value is None:
            return None
        return value.lower() in ("1", "true", "yes") if value.lower() in ("0", "1", "true", "false",
                                                                            "yes", "no") else value


class _Envs:
    """`sglang.srt.environ.envs`: each attribute an environment variable with .get()."""

    def __getattr__(self, name: str) -> _EnvVar:
        if name.startswith("_"):
            raise AttributeError(name)
        return _EnvVar(name)


def srt_stubs() -> dict[str, types.ModuleType]:
    srt = _module("sglang.srt", "Stand-in for SGLang's server package (not loaded in these tests).", True)
    utils = _module("sglang.srt.utils", "Stand-in: only what the frontend imports.", True,
                    is_hip=lambda: False)
    hf = _module("sglang.srt.utils.hf_transformers_utils", "Stand-in: get_tokenizer via transformers.",
                 get_tokenizer=_get_tokenizer)
    environ = _module("sglang.srt.environ", "Stand-in: environment flags.", envs=_Envs())
    srt.utils, srt.environ, utils.hf_transformers_utils = utils, environ, hf
    return {m.__name__: m for m in (srt, utils, hf, environ)}


# ---------------------------------------------------------------------------------------------------------
# Module sets: one `sglang` at a time in sys.modules.


def _is_sglang(name: str) -> bool:
    return name == "sglang" or name.startswith("sglang.")


class ModuleSet:
    """Modules named `sglang` and `sglang.*`, installed in sys.modules only inside `active()`."""

    _lock = threading.RLock()

    def __init__(self, label: str, modules: dict[str, types.ModuleType] | None = None):
        self.label = label
        self.modules = dict(modules or {})

    @contextlib.contextmanager
    def active(self) -> Iterator[ModuleSet]:
        with self._lock:
            saved = {n: m for n, m in sys.modules.items() if _is_sglang(n)}
            for name in saved:
                del sys.modules[name]
            sys.modules.update(self.modules)
            try:
                yield self
            finally:
                # keep what was imported lazily meanwhile, for the next activation
                self.modules = {n: m for n, m in sys.modules.items() if _is_sglang(n)}
                for name in self.modules:
                    del sys.modules[name]
                sys.modules.update(saved)

    def load_file(self, name: str, path: Path) -> types.ModuleType:
        """A source file executed as module `name` (not registered as `sglang.*`) with this set active."""
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        with self.active():
            sys.modules[name] = mod
            try:
                spec.loader.exec_module(mod)
            finally:
                sys.modules.pop(name, None)
        return mod


def _wheel_public_imports(init_source: str) -> str:
    """The wheel's `sglang/__init__.py` reduced to its `from sglang.lang... import ...` statements."""
    keep = [node for node in ast.parse(init_source).body
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sglang.lang")]
    assert keep, "the wheel's sglang/__init__.py exports nothing from sglang.lang"
    return "\n".join(ast.unparse(node) for node in keep)


def load_wheel_frontend(root: Path) -> ModuleSet:
    """SGLang's real frontend from the extracted wheel under root, with a package __init__ written here."""
    pkg = root / "sglang"
    init = pkg / "__init__.py"
    wheel_init = init.read_text()
    init.write_text(
        '"""SGLang\'s frontend loaded by sglbench\'s tests, without sglang.srt (written by '
        'tests/sglang_frontend.py)."""\n' + _wheel_public_imports(wheel_init) + f"\n__version__ = {SGLANG_VERSION!r}\n"
    )
    modules = ModuleSet("sglang (wheel)", srt_stubs())
    spec = importlib.util.spec_from_file_location("sglang", init, submodule_search_locations=[str(pkg)])
    top = importlib.util.module_from_spec(spec)
    with modules.active():
        sys.modules["sglang"] = top
        spec.loader.exec_module(top)
        top.srt = sys.modules["sglang.srt"]
        for name in ("sglang.lang.interpreter", "sglang.lang.tracer", "sglang.lang.backend.runtime_endpoint",
                     "sglang.utils"):
            importlib.import_module(name)
    return modules


_IMPORTED = re.compile(r"^\s*(?:from|import)\s+(sglang(?:\.\w+)*)", re.MULTILINE)


def sglbench_as_sglang(programs_source: str) -> ModuleSet:
    """`sglbench` under the name `sglang`, with aliases for each `sglang.*` module the programs import
    (`sglang.lang.ir` is `sglbench.lang.ir`), and the `sglang.srt` stand-ins."""
    import sglbench

    modules = {"sglang": sglbench, **srt_stubs()}
    for dotted in set(_IMPORTED.findall(programs_source)):
        parts = dotted.split(".")
        for i in range(2, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in modules:
                modules[name] = importlib.import_module("sglbench." + ".".join(parts[1:i]))
    return ModuleSet("sglbench as sglang", modules)


class Frontend:
    """The extracted wheel: its programs loaded twice, once over each `sglang`."""

    def __init__(self, root: Path):
        self.root = root
        self.programs_path = root / PROGRAMS_FILE
        source = self.programs_path.read_text()
        self.wheel = load_wheel_frontend(root)
        self.sglbench = sglbench_as_sglang(source)

    @property
    def sgl(self) -> types.ModuleType:
        """The wheel's `sglang` package (the real frontend API)."""
        return self.wheel.modules["sglang"]

    def programs(self, modules: ModuleSet) -> types.ModuleType:
        """`test_programs.py`, code unchanged, with `import sglang` resolving to modules' `sglang`."""
        tag = "wheel" if modules is self.wheel else "sglbench"
        return modules.load_file(f"sglang_test_programs_{tag}", self.programs_path)


def open_frontend(tmp: Path) -> Frontend:
    """Downloads (or reuses) the wheel and loads it under tmp; raises WheelUnavailable."""
    root = extract(wheel_path(), tmp)
    return Frontend(root)
