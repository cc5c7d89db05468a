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
def one_thread():
    """Tiny tensors on a busy 2-core box: one intra-op thread avoids OpenMP spin-waits and is deterministic."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A folder holding ``tiny/tiny.inter``: 120 users x 80 items with two taste clusters (seconds to train)."""
    import numpy as np

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(120):
        liked = np.arange(0, 40) if u % 2 == 0 else np.arange(40, 80)
        items = rng.choice(liked, size=12, replace=False)
        for t, i in enumerate(items):
            rows.append([f"u{u}", f"i{i}", str(int(rng.integers(1, 6))), str(t)])
    write_atomic(root / "tiny", "tiny", "inter", ["user_id:token", "item_id:token", "rating:float",
                                                   "timestamp:float"], rows)
    return root


@pytest.fixture
def tiny(tiny_data, quiet):
    """Config values for a fast run on the tiny dataset."""
    return {**quiet, "data_path": str(tiny_data), "topk": [10], "valid_metric": "recall@10",
            "metrics": ["Recall", "NDCG"], "train_batch_size": 256}


def reevaluated_test_result(result) -> dict:
    """The test metrics of a run's checkpoint, reloaded and evaluated again by its task's trainer: equal to
    ``result.test_result`` when the reported numbers are those of the saved model on the test split."""
    from recbole_ext import registry
    from recbole_ext.quick_start import _trainer_class, load_run

    config, model, _, _, _, test = load_run(result.checkpoint, {"runs_root": result.run_dir})
    task = registry.get_task(config["task"] or "general")
    trainer = _trainer_class(task, config, type(model))(config, model)
    return dict(trainer.evaluate(test, load_best_model=False, show_progress=False))


def assert_same_metrics(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def assert_reloaded_run_scores_with_its_vectors(result) -> None:
    """A finished run of an inner-product model: its checkpoint reloads to the same test metrics, and the reloaded
    model's ``full_sort_predict`` equals ``user_vectors @ item_vectors.T``."""
    import torch

    from recbole_ext.quick_start import load_run

    assert result.checkpoint
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    _, model, _, _, _, _ = load_run(result.checkpoint)
    model.eval()
    users = torch.arange(1, 9)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1)
    assert torch.allclose(scores, model.user_vectors(users) @ model.item_vectors().T)
