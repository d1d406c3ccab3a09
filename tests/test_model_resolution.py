"""Models by Hugging Face id: resolved through a hub cache this test writes itself, offline (nothing touches
the network); a local folder wins; a missing id offline is a clear error saying how to get it."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import LocalEntryNotFoundError

from sglbench.default_model import default_model_path
from sglbench.runtime import model_resolution
from sglbench.runtime.model_resolution import CHECKPOINT_FILES, looks_like_hf_id, resolve_model_path

REPO_ID = "sglbench-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(hub: Path, repo_id: str = REPO_ID, commit: str = COMMIT) -> Path:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(default_model_path(), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """A hub cache holding the default model under REPO_ID, found through HF_HUB_CACHE, with the Hub offline."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read the environment at import: make sure it cannot reach the network either.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return write_hub_cache(hub)


@pytest.mark.parametrize(("name", "is_id"), [
    ("Qwen/Qwen2.5-0.5B-Instruct", True), ("meta-llama/Llama-3.2-1B", True), ("org/name.v2", True),
    ("gpt2", False), ("./models/x", False), ("/abs/path", False), ("a/b/c", False), ("../up/one", False),
    ("org/..", False), ("", False), ("org/", False),
])
def test_what_looks_like_a_hub_id(name, is_id):
    assert looks_like_hf_id(name) is is_id


def test_an_id_resolves_to_its_cached_snapshot_offline(offline_hub):
    assert Path(resolve_model_path(REPO_ID)) == offline_hub
    assert Path(resolve_model_path(REPO_ID, revision=COMMIT)) == offline_hub


def test_hf_home_names_the_cache_too(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    snapshot = write_hub_cache(tmp_path / "home" / "hub")
    assert Path(resolve_model_path(REPO_ID)) == snapshot


def test_runtime_and_engine_load_a_model_by_id(offline_hub):
    from sglbench.runtime.offline_engine import Engine
    from sglbench.runtime.runtime import Runtime

    with Runtime(REPO_ID, device="cpu", max_total_tokens=256) as rt:
        assert Path(rt.config.model_path) == offline_hub
        expected = rt.generate("Q: What is 2 + 3?\nA:", max_new_tokens=3, temperature=0)["output_ids"]
    with Engine(model_path=REPO_ID, revision=COMMIT, device="cpu", max_total_tokens=256) as llm:
        info = llm.get_server_info()
        assert info["model_path"] == REPO_ID and Path(info["local_model_path"]) == offline_hub
        out = llm.generate("Q: What is 2 + 3?\nA:", {"max_new_tokens": 3, "temperature": 0})
        assert out["output_ids"] == expected


def test_an_id_missing_offline_says_how_to_get_it(offline_hub):
    from sglbench.runtime.runtime import Runtime

    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("nobody/missing-model")
    message = str(err.value)
    assert "'nobody/missing-model'" in message and "hf download nobody/missing-model" in message
    assert "HF_HUB_OFFLINE" in message and "local folder" in message
    with pytest.raises(FileNotFoundError, match="nobody/missing-model"):
        Runtime("nobody/missing-model", device="cpu")
    with pytest.raises(FileNotFoundError, match="--revision v2"):
        resolve_model_path(REPO_ID, revision="v2")  # a revision the cache lacks


def test_a_local_folder_wins_over_the_cache(offline_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    local = tmp_path / REPO_ID
    local.mkdir(parents=True)
    assert resolve_model_path(REPO_ID) == REPO_ID  # the relative folder, as given
    assert resolve_model_path(str(local)) == str(local)


def test_a_missing_path_that_is_no_id_keeps_the_loaders_error(offline_hub, tmp_path):
    from sglbench.runtime.runtime import Runtime

    missing = str(tmp_path / "no" / "such" / "model")
    assert resolve_model_path(missing) == missing
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        Runtime(missing, device="cpu")


def test_online_it_downloads_the_checkpoint_files_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):  # stands in for the Hub: no network in tests
        calls.append((repo_id, kwargs))
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path / "downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_path(REPO_ID, revision="main") == str(tmp_path / "downloaded")
    (_, first), (_, second) = calls
    assert first["local_files_only"] and first["cache_dir"] == str(tmp_path / "hub")
    assert second["allow_patterns"] == list(CHECKPOINT_FILES) and second["revision"] == "main"


def test_online_an_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(repo_id, **kwargs):
        raise LocalEntryNotFoundError("connection refused")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError, match=r"could not be reached.*hf download"):
        model_resolution.resolve_model_path(REPO_ID, cache_dir=tmp_path)
