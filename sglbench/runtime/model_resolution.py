"""`model_path` to a local checkpoint folder: an existing folder as given, a Hugging Face id ("org/name")
through the hub cache, downloaded when online (as SGLang's `--model-path` takes either)."""

from __future__ import annotations

import os
import re
from pathlib import Path

# What the loader reads: config and tokenizer files, safetensors weights (no .bin, .gguf or ONNX copies).
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja")

_HF_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def looks_like_hf_id(name: str) -> bool:
    """True for "org/name" (the Hub's repo id form); bare names and paths ("./x", "/x", "a/b/c") are paths."""
    return bool(_HF_ID.fullmatch(name)) and ".." not in name and not name.endswith((".", "-"))


def resolve_model_path(model_path: str | os.PathLike, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None) -> str:
    """A local folder for `model_path`. A path that exists wins; a Hugging Face id comes from the hub cache
    (then the Hub when online); anything else is returned unchanged, for the loader's missing-folder error."""
    path = Path(model_path).expanduser()
    if path.exists() or not looks_like_hf_id(str(model_path)):
        return str(path)
    return _from_hub(str(model_path), revision, cache_dir)


def hub_cache_dir() -> str:
    """The hub cache as the environment names it now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as the environment sets it now."""
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _from_hub(repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = str(cache_dir) if cache_dir is not None else hub_cache_dir()
    where = f"{repo_id!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True)
    except LocalEntryNotFoundError:  # IncompleteSnapshotError is one too
        pass
    if hub_offline():
        raise FileNotFoundError(_not_cached(where, repo_id, revision, cache, "HF_HUB_OFFLINE is set"))
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=list(CHECKPOINT_FILES))
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise FileNotFoundError(f"model_path {where} is neither a local folder nor a model the Hugging Face Hub "
                                f"serves to you ({type(exc).__name__}); check the id, or log in with `hf auth "
                                "login` for a gated model") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise FileNotFoundError(_not_cached(where, repo_id, revision, cache, f"the Hub could not be reached: {exc}")
                                ) from exc


def _not_cached(where: str, repo_id: str, revision: str | None, cache: str, why: str) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (f"model_path {where} is not a local folder and is not in the Hugging Face cache {cache} ({why}); "
            f"download it where the Hub is reachable with `hf download {repo_id}{rev}` (or `huggingface-cli "
            f"download {repo_id}{rev}`) and point HF_HUB_CACHE/HF_HOME at that cache, or pass a local folder "
            "as model_path")
