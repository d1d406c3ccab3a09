"""SGLang's own frontend test programs (`sglang/test/test_programs.py` from the `sglang` wheel on PyPI), their
code unchanged, run against sglbench two ways:

- `inprocess`: the programs' `import sglang as sgl` resolves to `sglbench`, default backend `sglbench.Runtime()`
  (the embedded default model), as `import sglbench as sgl` would;
- `http`: the programs use SGLang's real frontend from the wheel, and its `RuntimeEndpoint` talks to
  `sglbench serve` (the same runtime, on loopback).

The wheel is fetched with `pip download` and loaded by tests/sglang_frontend.py. The embedded model knows a
made-up world, so programs that assert facts about the real world cannot pass on it: they run, and only a miss
in their own final check is an expected failure (EXPECTED_MISSES), or they are skipped where their structure
itself needs the knowledge (SKIP). Structure (types, regexes, JSON, forks, streams, logprobs, min_tokens) must
pass; where sglbench still falls short a program is a strict xfail naming the gap (GAPS), so a fix shows up as
an unexpected pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sglang_frontend
from tests.helpers import serving

MODES = ("inprocess", "http")
API_KEY = "sglang-programs"  # the server asks for one, so SGLang's client is seen to send it
TIMEOUT_S = 60.0  # per program; each takes well under 5 s when it works
HANG_TIMEOUT_S = 10.0  # programs known to wait forever on an unset variable

# Arguments SGLang's own test suites pass (test_select needs one; the rest default to checking answers).
ARGS: dict[str, dict] = {
    "test_select": {"check_answer": False},
    "test_expert_answer": {"check_answer": False},
    "test_parallel_encoding": {"check_answer": False},
}

# Programs that run, where a miss in their own final check is expected of the embedded model: what it needs
# that the model lacks, the exception the check raises, and the start of the program's line that raises it.
EXPECTED_MISSES: dict[str, tuple[str, type[BaseException], str]] = {
    "test_few_shot_qa": ("world knowledge: it asserts the capitals of the United States, Japan, the UK and China",
                         AssertionError, "assert"),
    "test_decode_int": ("world knowledge: it asserts 24 hours in a day and 365 days in a year",
                        AssertionError, "assert"),
    "test_decode_json": ("a model that closes its strings: at temperature 1 the embedded model's gen_string() values "
                         "ramble (newlines included) until max_new_tokens=64 stops them unclosed; SGLang's REGEX_STR "
                         "`\"[\\w\\d\\s]*\"` allows any length and newlines, and SGLang's client sends that same regex, "
                         "so this is the model, not sglbench",
                         json.JSONDecodeError, "js_obj = json.loads("),
    "test_decode_json_regex": ("a model that closes its strings: greedy, the embedded model's name under SGLang's "
                               "REGEX_STR `\"[\\w\\d\\s]*\"` rambles (newlines included) until max_tokens; the "
                               "regex allows that, so the JSON has raw newlines inside a string (as test_decode_json)",
                               json.JSONDecodeError, "js_obj = json.loads("),
    "test_gen_min_new_tokens": ("a model whose tokens re-encode to themselves: it re-tokenizes the answer and asks "
                                "for >= 64 tokens; sglbench decodes >= 64 before the stop token, but the embedded "
                                "model sometimes emits two tokens that the tokenizer would merge (e.g. 65 decoded, 63 "
                                "re-encoded), so the recount can fall short",
                                AssertionError, "assert len(token_ids) >= MIN_TOKENS"),
    "test_stream_logprobs": ("SGLang's client to keep every streamed chunk: over HTTP its interpreter lost a chunk "
                             "(the text \"'s\" and its logprob entry) when the embedded model's short tokens "
                             "streamed quickly, while the server's chunks, read directly, carry every token with "
                             "matching completion_tokens and incremental logprobs; in process it passes",
                             AssertionError, "assert len(chunk_output_token_logprobs) == ("),
}

# Programs not run, in both modes, and why.
SKIP = {
    "test_image_qa": "an image program; the embedded model is text-only (the clear error it gets is checked by "
                     "test_image_is_a_clear_error)",
    "test_react": "world knowledge steers its structure: it reads `answer`, set only when the model chooses "
                  "`Finish` and names where Linus Torvalds lives; the embedded model does neither (and in SGLang "
                  "reading a never-set variable waits forever)",
    "test_tool_use": "world knowledge steers its structure: the program eval()s the model's text as a Python "
                     "expression for 257*983; the embedded model does not write arithmetic",
    "test_completion_speculative": "an OpenAI-backend program (API speculative execution): it reads "
                                   "`default_backend.token_usage`, which only SGLang's OpenAI backend has; SGLang "
                                   "runs it in test_openai_backend.py only",
}
# ... and not run in one mode.
SKIP_IN_MODE = {
    ("http", "test_chat_completion_speculative"):
        "an OpenAI-backend program (API speculative execution, `num_api_spec_tokens`): SGLang's interpreter reads "
        "`backend.is_chat_model`, which SGLang's own RuntimeEndpoint lacks, so it fails in SGLang's client against "
        "any server (SGLang runs it in test_openai_backend.py only)",
}

# (mode, program) -> the sglbench gap that still makes it fail: strict xfails, removed as fixes land.
GAPS: dict[tuple[str, str], str] = {
}

# (mode, program) pairs that hang when they fail (a variable that is never set), given a shorter timeout.
HANGS: set[tuple[str, str]] = set()

PROGRAMS = (
    "test_few_shot_qa", "test_mt_bench", "test_select", "test_decode_int", "test_decode_json_regex",
    "test_decode_json", "test_expert_answer", "test_tool_use", "test_react", "test_parallel_decoding",
    "test_parallel_encoding", "test_image_qa", "test_stream", "test_stream_logprobs", "test_regex",
    "test_dtype_gen", "test_completion_speculative", "test_chat_completion_speculative",
    "test_gen_min_new_tokens",
)


def _cases():
    for mode in MODES:
        for name in PROGRAMS:
            marks = []
            if name in SKIP or (mode, name) in SKIP_IN_MODE:
                marks.append(pytest.mark.skip(reason=SKIP.get(name) or SKIP_IN_MODE[mode, name]))
            elif (mode, name) in GAPS:
                marks.append(pytest.mark.xfail(strict=True, reason=GAPS[mode, name]))
            yield pytest.param(mode, name, marks=marks, id=f"{mode}-{name}")


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one wheel, one runtime, one server for the module.


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    try:
        return sglang_frontend.open_frontend(tmp_path_factory.mktemp("sglang-wheel"))
    except sglang_frontend.WheelUnavailable as e:
        if os.environ.get("CI") or os.environ.get("SGLBENCH_REQUIRE_SGLANG"):
            pytest.fail(f"CI must run SGLang's programs, but the wheel is unavailable: {e}")
        pytest.skip(f"SGLang's wheel is unavailable (no network to PyPI?): {e}")


@pytest.fixture(scope="module")
def runtime():
    import sglbench

    rt = sglbench.Runtime()  # the embedded default model, on CPU
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module")
def server(runtime):
    from sglbench.server.app import build_app

    with serving(build_app(runtime, api_key=API_KEY, incremental_streaming_output=True, show_model_path=True)) as url:  # as SGLang's CI
        yield url


class Mode:
    """One way of running the programs: its `sglang` modules, the programs loaded over them, its backend."""

    def __init__(self, modules: sglang_frontend.ModuleSet, programs, sgl, backend):
        self.modules, self.programs, self.sgl, self.backend = modules, programs, sgl, backend

    def call(self, fn, kwargs: dict, timeout: float, background_errors: bool = False):
        """fn(**kwargs) on a daemon thread with this mode's `sglang` installed and its backend the default;
        returns its result or re-raises its exception; a TimeoutError if it does not finish in time.

        A program can return normally although one of its states failed on its worker thread (SGLang's
        interpreter only warns "Error in stream_executor", sglbench's logs "state ... failed"): unless
        background_errors, such a failure fails the call too, so no program passes by swallowing an error."""
        outcome: dict = {}

        def target():
            try:
                outcome["result"] = fn(**kwargs)
            except BaseException as e:
                outcome["error"] = e

        with self.modules.active(), _background_failures() as failures:
            config = self.sgl.global_config
            previous = config.default_backend
            self.sgl.set_default_backend(self.backend)
            before = set(threading.enumerate())
            deadline = time.monotonic() + timeout
            try:
                worker = threading.Thread(target=target, daemon=True, name=f"sglang-program-{fn.__name__}")
                worker.start()
                worker.join(timeout)
                # run() may return before its states finish (SGLang's does unless synced): let the threads the
                # program started end (for a while), so their failures are seen here
                grace = min(deadline, time.monotonic() + 15.0)
                for thread in set(threading.enumerate()) - before - {worker}:
                    thread.join(max(0.0, grace - time.monotonic()))
            finally:
                config.default_backend = previous
        if worker.is_alive():
            raise TimeoutError(f"{fn.__name__} did not finish within {timeout:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        if failures and not background_errors:
            raise AssertionError(f"{fn.__name__} returned, but a state failed in the background:\n{failures[0]}")
        return outcome.get("result")


@contextlib.contextmanager
def _background_failures() -> Iterator[list[str]]:
    """Messages of program states that failed on worker threads while inside (both interpreters' reports)."""
    failures: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed" in record.getMessage():
                failures.append(record.getMessage())

    handler = Collect(logging.WARNING)
    lang_logger = logging.getLogger("sglbench.lang")
    lang_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield failures
        failures.extend(str(w.message) for w in caught if str(w.message).startswith("Error in stream_executor"))
    finally:
        lang_logger.removeHandler(handler)


class LaunchedServer:
    """Stands for SGLang's `sgl.Runtime(...)`, the backend SGLang's own suites run these programs on: it launches
    SGLang's server and keeps a RuntimeEndpoint to it as `.endpoint`, which the interpreter talks to. Here the
    server is `sglbench serve`, launched by the fixture; test_gen_min_new_tokens reads `default_backend.endpoint`."""

    def __init__(self, endpoint):
        self.endpoint = endpoint


@pytest.fixture(scope="module")
def modes(request, frontend):
    """mode name -> Mode, each built on first use (the HTTP one starts the server)."""
    built: dict[str, Mode] = {}

    def get(mode: str) -> Mode:
        if mode not in built:
            runtime = request.getfixturevalue("runtime")
            if mode == "inprocess":
                programs = frontend.programs(frontend.sglbench)
                built[mode] = Mode(frontend.sglbench, programs, frontend.sglbench.modules["sglang"], runtime)
            else:
                url = request.getfixturevalue("server")
                programs = frontend.programs(frontend.wheel)
                sgl = frontend.sgl
                with frontend.wheel.active():
                    endpoint = sgl.RuntimeEndpoint(url, api_key=API_KEY)
                    backend = LaunchedServer(endpoint)
                built[mode] = Mode(frontend.wheel, programs, sgl, backend)
        return built[mode]

    return get


# ---------------------------------------------------------------------------------------------------------


def test_every_program_is_classified(frontend):
    """The table above covers exactly the programs the wheel has (a new SGLang version is a deliberate change)."""
    source = frontend.programs_path.read_text()
    names = {line.split("(")[0][4:] for line in source.splitlines() if line.startswith("def test_")}
    assert names == set(PROGRAMS)
    assert set(SKIP) | set(EXPECTED_MISSES) | set(ARGS) <= set(PROGRAMS)
    for pairs in (GAPS, SKIP_IN_MODE, HANGS):
        assert {mode for mode, _ in pairs} <= set(MODES) and {name for _, name in pairs} <= set(PROGRAMS)
    assert not set(GAPS) & set(SKIP_IN_MODE) and not set(SKIP) & {name for _, name in GAPS}


def test_each_mode_runs_the_intended_sglang(modes, frontend):
    import sglbench

    inprocess, http = modes("inprocess"), modes("http")
    assert inprocess.programs.sgl is sglbench
    assert http.programs.sgl is http.sgl and http.sgl is not sglbench
    wheel_client = frontend.wheel.modules["sglang.lang.backend.runtime_endpoint"]
    assert type(http.backend.endpoint) is wheel_client.RuntimeEndpoint
    assert Path(wheel_client.__file__).is_relative_to(frontend.root)  # the wheel's own code, unchanged


def _expected_miss(name: str, exc: BaseException, programs_file: str) -> str | None:
    """The reason, when exc is the program's own final check failing as EXPECTED_MISSES says it may."""
    if name not in EXPECTED_MISSES:
        return None
    reason, kind, line_start = EXPECTED_MISSES[name]
    if not isinstance(exc, kind):
        return None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.samefile(f.filename, programs_file)]
    if not frames or not (frames[-1].line or "").lstrip().startswith(line_start):
        return None
    return reason


@pytest.mark.parametrize(("mode", "name"), list(_cases()))
def test_sglang_program(modes, frontend, mode, name):
    m = modes(mode)
    timeout = HANG_TIMEOUT_S if (mode, name) in HANGS else TIMEOUT_S
    try:
        m.call(getattr(m.programs, name), ARGS.get(name, {}), timeout)
    except Exception as e:
        reason = _expected_miss(name, e, str(frontend.programs_path))
        if reason is None:
            raise
        pytest.xfail(f"needs {reason}; here: {type(e).__name__}: {str(e)[:200]}")


def _png(path: Path) -> Path:
    """A valid 1x1 grey PNG, written without an imaging library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 1x1, 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("mode", MODES)
def test_image_is_a_clear_error(modes, mode, tmp_path):
    """An image sent to the text-only model fails the state with an error that says so, in both modes."""
    m = modes(mode)
    sgl = m.sgl
    image = _png(tmp_path / "pixel.png")

    def run():
        @sgl.function
        def image_qa(s, path):
            s += sgl.user(sgl.image(path) + "What is in this image?")
            s += sgl.assistant(sgl.gen("answer", max_tokens=4))

        state = image_qa.run(path=str(image))
        return state.error()

    error = m.call(run, {}, TIMEOUT_S, background_errors=True)
    assert error is not None, "an image on a text-only model ran without an error"
    message = str(error)
    assert "image" in message.lower() and "text-only" in message, message
