"""The embedded default model: a small Llama checkpoint the project trains itself (see `train.py`).

Importing this package loads nothing heavy; `default_model_path()` only checks that the folder is there.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "checkpoint"


def default_model_path() -> str:
    """Path of the shipped checkpoint folder (a standard Hugging Face Llama folder)."""
    if not (DEFAULT_MODEL_PATH / "config.json").exists():
        raise FileNotFoundError(
            f"the default model checkpoint is missing at {DEFAULT_MODEL_PATH}; "
            "train it with `python -m sglbench.default_model.train`"
        )
    return str(DEFAULT_MODEL_PATH)
