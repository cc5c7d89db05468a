"""Every test runs in its own temporary working directory with its own cache, so nothing lands in the repo."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import recbole_ext  # noqa: E402,F401  (shims + registry, before any RecBole import in tests)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / ".cache"))
    yield


@pytest.fixture
def quiet():
    """Config values that keep a test run short and silent."""
    return {"show_progress": False, "state": "WARNING", "epochs": 1}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


def write_atomic(folder: Path, name: str, suffix: str, header: list[str], rows: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{suffix}"
    lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
