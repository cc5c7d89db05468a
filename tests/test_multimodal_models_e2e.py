"""The multimodal models through the real pipeline: MMRec task on the bundled synth-mm data, checkpoint reload."""
import pytest
import torch

from recbole_ext import checkpoint
from recbole_ext.grid_search import run_grid
from recbole_ext.quick_start import load_run, run
from tests.conftest import assert_same_metrics, reevaluated_test_result


pytestmark = pytest.mark.usefixtures("one_thread")


def test_mambarec_runs_and_reloads_with_identical_scores(quiet, tmp_path, monkeypatch):
    from recbole_ext.training import multimodal as multimodal_training

    attached, attach = [], multimodal_training.attach_row_adam

    def recording_attach(*args, **kwargs):
        attached.append(attach(*args, **kwargs))
        return attached[-1]

    monkeypatch.setattr(multimodal_training, "attach_row_adam", recording_attach)
    result = run("MambaRec", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs")})
    assert result.task == "mmrec" and result.checkpoint
    assert result.config["n_ui_layers"] == 4 and result.config["stopping_step"] == 10
    # the trainer ran the feature tables' Adam steps inside backward; their moments are saved with the optimiser
    assert attached == [["image", "text"]]
    assert_same_metrics(reevaluated_test_result(result), result.test_result)  # (a second trainer attaches again)
    moments = {tuple(s["exp_avg"].shape) for s in checkpoint.load(result.checkpoint)["optimizer"]["state"].values()}
    assert {(1001, 4096), (1001, 384)} <= moments
    _, model, _, _, _, test_data = load_run(result.checkpoint)
    users = torch.arange(1, 9)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1)
    assert torch.allclose(scores, model.user_vectors(users) @ model.item_vectors().T)
    again = run("MambaRec", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs2")})
    assert again.test_result == result.test_result  # same seed, same numbers through the whole pipeline


def test_grid_through_quick_start_selects_on_validation(quiet, tmp_path):
    grid = {"mmd_weight": [0.1, 0.2]}
    out = run_grid("MambaRec", "synth-mm", grid=grid, config_dict={**quiet, "runs_root": str(tmp_path / "g")})
    scores = [p["best_valid_score"] for p in out.points]
    assert out.chosen == out.points[scores.index(max(scores))]["params"]
    assert "recall@20" in out.test_result


def test_lattice_runs_through_the_pipeline_and_reloads(quiet, tmp_path):
    result = run("LATTICE", "synth-mm", {**quiet, "runs_root": str(tmp_path / "runs")})
    assert result.task == "mmrec"
    assert_same_metrics(reevaluated_test_result(result), result.test_result)
    assert result.config["lambda_coeff"] == 0.9 and list(result.config["learning_rate_scheduler"]) == [0.96, 50]
    state = checkpoint.load(result.checkpoint)["state_dict"]
    assert {"modal_weight", "feature_tables.image", "feature_tables.text"} <= set(state)
    _, model, _, _, _, _ = load_run(result.checkpoint)
    assert torch.equal(model.modal_weight.detach(), state["modal_weight"])
    assert torch.equal(model.feature_tables["image"].detach(), state["feature_tables.image"])
    model.eval()
    users = torch.arange(1, 9)
    scores = model.full_sort_predict({model.USER_ID: users}).view(len(users), -1)
    assert torch.allclose(scores, model.user_vectors(users) @ model.item_vectors().T)
