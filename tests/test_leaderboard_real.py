"""One real run through ``recbole_ext.quick_start.run`` (BPR, 2 epochs, a tiny dataset written here)."""
from __future__ import annotations

import json

import numpy as np

from recbole_ext.leaderboard import cli
from recbole_ext.leaderboard.store import ResultStore
from recbole_ext.utils.hashing import dir_sha256
from tests.test_leaderboard_helpers import write_spec


def _tiny_dataset(root):
    rng = np.random.default_rng(0)
    folder = root / "tiny"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(40):
        for i in rng.choice(30, size=8, replace=False):
            lines.append(f"u{u}\ti{i}\t{len(lines)}")
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return folder


def test_real_bpr_run_is_stored_with_provenance_and_is_reproducible(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    folder = _tiny_dataset(tmp_path / "data")
    spec = write_spec(tmp_path / "s.yaml", task="general", datasets=["tiny"], seeds=[3], models=["BPR"],
                      config={"epochs": 2, "show_progress": False, "state": "WARNING", "topk": [5],
                              "metrics": ["Recall", "NDCG"], "valid_metric": "ndcg@5", "train_batch_size": 64})
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli.main([str(spec), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr()
        with ResultStore(out / "results.sqlite") as store:
            [row] = store.rows()
        results.append(row)
    row = results[0]
    assert row["status"] == "ok" and row["run_fn"] == "recbole_ext.quick_start:run"
    assert set(row["test_result"]) == {"recall@5", "ndcg@5"} and row["valid_metric"] == "ndcg@5"
    assert row["protocol"] and row["dataset_sha256"] == dir_sha256(folder) and row["ddi_sha256"] is None
    assert len(row["history"]) == 2 and row["history"][0]["train_loss"] > 0
    assert row["run_wall_time_s"] > 0 and row["run_peak_rss_mb"] > 50
    assert row["effective_config"]["seed"] == 3 and row["effective_config"]["epochs"] == 2
    run_dir = tmp_path / "a" / "runs" / row["run_key"]
    assert json.loads((run_dir / "result.json").read_text())["test_result"] == row["test_result"]
    per_user = row["per_user_test"]  # one value per test user, stored with the row
    assert per_user == json.loads((run_dir / "per_user_test.json").read_text()) and len(per_user["users"]) == 40
    assert {k: round(float(np.mean(v)), 4) for k, v in per_user["metrics"].items()} == row["test_result"]
    assert results[1]["run_key"] == row["run_key"] and results[1]["test_result"] == row["test_result"]  # same seed
    assert "ndcg@5 ↑" in (tmp_path / "a" / "leaderboard.md").read_text()
