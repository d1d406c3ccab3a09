"""The runtime's public reads and hooks that the upper layers use instead of its engine's internals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sglbench.lang.backend.runtime_backend import RuntimeBackend
from sglbench.runtime import extensions
from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    with Runtime(str(make_random_checkpoint(tmp_path_factory.mktemp("api"), family="llama", seed=8)),
                 device="cpu", max_total_tokens=1024) as runtime:
        yield runtime


def test_model_info_is_what_the_engine_was_built_with(rt):
    info = rt.model_info()
    engine, mc = rt.engine, rt.engine.model_config
    assert info == type(info)(
        model_path=rt.config.model_path, architecture=mc.architecture, num_params=mc.num_params(),
        context_length=engine.context_length, vocab_size=mc.vocab_size, dtype=str(engine.dtype),
        device="cpu", attention_backend=engine.attention.name, max_total_tokens=engine.pool.num_slots,
        dtype_reason=engine.dtype_choice.reason, cpu_features=engine.runner.cpu_features,
        packed_linears=engine.runner.packed_linears, cpu_kernels=engine.runner.cpu_kernels,
        cpu_memory=engine.runner.cpu_memory, cuda_graph_bs=(),
        cuda_graph=engine.cuda_graph_reason,
    )
    assert info.dtype_reason.startswith("auto: ") and info.cpu_features  # why this dtype, on what CPU
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.vocab_size = 1  # type: ignore[misc]
    assert f"slots={engine.pool.num_slots}" in repr(rt) and f"dtype={engine.dtype}," in repr(rt)


def test_the_server_and_the_language_backend_report_the_engine_as_before(rt):
    engine = rt.engine
    with TestClient(build_app(rt)) as client:
        model = client.get("/get_model_info").json()
        server = client.get("/get_server_info").json()
    ours = {"model_path": Path(rt.config.model_path).name, "architecture": engine.model_config.architecture,
            "is_generation": True, "context_length": engine.context_length, "vocab_size": engine.model_config.vocab_size}
    assert {k: model[k] for k in ours} == ours  # beside SGLang's own fields
    assert server["max_total_num_tokens"] == engine.pool.num_slots and server["version"] == "sglbench"
    info = RuntimeBackend(rt).get_server_info()
    assert (info["dtype"], info["max_total_tokens"], info["context_length"]) == (
        str(engine.dtype), engine.pool.num_slots, engine.context_length)


def test_shutdown_runs_its_callbacks_once_while_the_engine_still_runs(tmp_path):
    seen: list[bool] = []
    rt = Runtime(str(make_random_checkpoint(tmp_path, family="llama", seed=9)), device="cpu", max_total_tokens=256)
    dash = rt.dashboard(graphs=[])
    assert rt.dashboard() is dash and rt.attachments
    rt.on_shutdown(lambda: seen.append(rt.is_running))
    rt.shutdown()
    rt.shutdown()
    assert seen == [True] and not rt.is_running and not dash.live


def test_an_unregistered_feature_says_how_to_register_one():
    with pytest.raises(RuntimeError, match="no 'nowhere' feature is registered"):
        extensions.resolve("nowhere")
    with pytest.raises(ValueError, match=r"package\.module:function"):
        extensions.register("nowhere", "sglbench.viz.workbench")


def test_the_engine_is_built_on_its_own_thread_and_a_failed_build_raises_here(tmp_path):
    """Loading runs on the engine thread (one OpenMP pool for all its torch work, see `_build_and_serve`);
    a build that fails raises on the caller's thread and leaves no engine thread behind."""
    import threading

    seen: list[str] = []
    with Runtime(str(make_random_checkpoint(tmp_path / "ok", family="llama", seed=10)), device="cpu",
                 max_total_tokens=256) as rt:
        rt.call(lambda engine: seen.append(threading.current_thread().name))
        assert seen == [rt._thread.name] and rt._thread is not threading.current_thread()
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="max_total_tokens must be >= 2"):
        Runtime(str(make_random_checkpoint(tmp_path / "bad", family="llama", seed=10)), device="cpu",
                max_total_tokens=1)
    broken = make_random_checkpoint(tmp_path / "broken", family="llama", seed=10)
    (Path(broken) / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="deserializing header"):  # safetensors' own error, as raised on its thread
        Runtime(str(broken), device="cpu", max_total_tokens=256)
    assert {t.name for t in threading.enumerate() if t.name.startswith("sglbench-engine")} <= before
