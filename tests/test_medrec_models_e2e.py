"""The medication models through recbole_ext.quick_start.run on the bundled datasets (needs the medication task)."""
from __future__ import annotations

import pytest

from recbole_ext import quick_start
from tests.conftest import assert_same_metrics, reevaluated_test_result

FAST = {"epochs": 1, "show_progress": False, "state": "WARNING", "embedding_size": 16, "patients_per_batch": 32,
        "medrec_bootstrap_rounds": 3}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("model", ["CafeMed", "MedDeepFM"])
def test_runs_on_bundled_synthetic(model, tmp_path):
    result = quick_start.run(model, "synth-ehr-small", config_dict={**FAST, "runs_root": str(tmp_path)})
    assert result.task == "medrec"
    # the reported metrics are those of the saved model on the test split (the bootstrap included)
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    # one epoch already ranks planted medications well above chance (random ranking: AP ~ 0.05 here)
    assert result.test_result["prauc"] > 0.1
    assert len(result.history) == 1


def test_cafemed_runs_on_mimic3_demo_and_reloads(tmp_path):
    result = quick_start.run("CafeMed", "mimic3-demo", config_dict={**FAST, "runs_root": str(tmp_path)})
    assert result.checkpoint
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    config, model, dataset, *_ = quick_start.load_run(result.checkpoint, {"runs_root": result.run_dir})
    assert type(model).__name__ == "CafeMed" and model.c_dm.shape == (dataset.n_diag + 1, dataset.n_med + 1)
