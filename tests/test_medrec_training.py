"""End to end: the medrec task through recbole_ext.quick_start.run with a reference model, and its checkpoint."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import recbole_ext  # noqa: E402,F401  (shims, registry)
from recbole_ext import quick_start, registry  # noqa: E402
from recbole_ext.errors import UserError  # noqa: E402
from recbole_ext.evaluation.medrec_metrics import METRIC_KEYS  # noqa: E402

from medrec_reference import MedLogReg  # noqa: E402

registry.register_model(MedLogReg)


@pytest.fixture(scope="module")
def run_result(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return quick_start.run("MedLogReg", "synth-ehr-small",
                           config_dict={"epochs": 3, "learning_rate": 0.05, "runs_root": str(runs),
                                        "patients_per_batch": 32, "show_progress": False})


def test_run_reports_bootstrap_mean_and_std(run_result):
    r = run_result
    assert r.task == "medrec"
    assert set(r.best_valid_result) == set(METRIC_KEYS)
    assert set(r.test_result) == set(METRIC_KEYS) | {f"{k}_std" for k in METRIC_KEYS}
    assert all(r.test_result[f"{k}_std"] > 0 for k in ("jaccard", "f1", "prauc"))
    assert r.best_valid_score == pytest.approx(r.best_valid_result["jaccard"])
    assert len(r.history) == 3 and all("jaccard" in h["valid"] for h in r.history)
    # the planted signal is learnable: a linear model on codes clearly beats chance within a few epochs
    assert r.test_result["jaccard"] > 0.15 and r.test_result["prauc"] > 0.3
    assert "bootstrap" in r.protocol["test"] and r.checkpoint


def test_checkpoint_reload_reproduces_test_result(run_result):
    from recbole_ext.training.medrec import MedRecTrainer

    config, model, dataset, _train, _valid, test = quick_start.load_run(run_result.checkpoint,
                                                                        {"runs_root": run_result.run_dir})
    trainer = MedRecTrainer(config, model)
    res = trainer.evaluate(test, load_best_model=False)
    for k, v in run_result.test_result.items():
        assert res[k] == pytest.approx(v, abs=1e-12), k
    prob, target, patient = trainer.predict_split(test)
    assert prob.shape == target.shape == (len(dataset.phase_visits("test")), dataset.n_med)
    assert np.array_equal(np.unique(patient), np.arange(len(dataset.split_patients("test"))))


def test_non_medication_model_is_rejected(tmp_path):
    with pytest.raises(UserError, match="cannot run on a medication dataset"):
        quick_start.run("BPR", "mimic3-demo", config_dict={"runs_root": str(tmp_path)})


def test_demo_runs_out_of_the_box(tmp_path):
    r = quick_start.run("MedLogReg", "mimic3-demo", config_dict={"epochs": 1, "runs_root": str(tmp_path),
                                                                 "patients_per_batch": 16, "show_progress": False})
    assert "ddi_rate_std" in r.test_result
    # it trained on the demo's labels and scored its test visits: an untrained (all-equal) or random ranking gives
    # a PRAUC near the share of medications per visit (0.19-0.22 here), the training visits' medication
    # frequencies 0.68; one epoch of the reference model gets there (0.68)
    assert r.test_result["prauc"] > 0.4


@pytest.mark.parametrize("key,value", [("patients_per_batch", 0), ("patients_per_batch", "many"),
                                       ("medrec_split", "sideways"), ("metrics", ["Recall", "Jaccard"]),
                                       ("medrec_bootstrap_frac", 0.0), ("medrec_threshold", 1.5),
                                       ("medrec_bootstrap_seed", -1)])
def test_bad_task_options_are_user_errors(tmp_path, key, value):
    match = {"medrec_split": "medrec_split must be", "metrics": r"metrics \['Recall'\] cannot score",
             "medrec_bootstrap_frac": r"medrec_bootstrap_frac' = 0.0 must be in \(0, 1\]",
             "medrec_threshold": r"medrec_threshold' = 1.5 must be in \[0, 1\]",
             "medrec_bootstrap_seed": r"medrec_bootstrap_seed' = -1 must be in \[0, 4294967295\]"}.get(key, key)
    with pytest.raises(UserError, match=match):
        quick_start.run("MedLogReg", "mimic3-demo", config_dict={key: value, "epochs": 1, "runs_root": str(tmp_path)})
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_trainer_uses_fused_adam_on_cpu_unless_switched_off(run_result):
    """MedRecTrainer turns RecBole's plain Adam into fused Adam on CPU (fused_adam, default True), hyper-parameters
    kept; fused_adam: False keeps the per-tensor Adam. The bench builds its optimizer through the same rule."""
    import torch

    from recbole_ext.training.medrec import MedRecTrainer

    config, model, *_ = quick_start.load_run(run_result.checkpoint, {"runs_root": run_result.run_dir})
    trainer = MedRecTrainer(config, model)
    assert isinstance(trainer.optimizer, torch.optim.Adam) and trainer.optimizer.defaults["fused"]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    config["fused_adam"] = False
    assert not MedRecTrainer(config, model).optimizer.defaults.get("fused")


def test_fused_adam_is_the_same_update():
    import torch

    from recbole_ext.training.optim import fuse_adam_on_cpu

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    copies = [torch.nn.Parameter(p.detach().clone()) for p in params]
    plain = torch.optim.Adam(params, lr=0.1, weight_decay=0.01)
    fused = fuse_adam_on_cpu(torch.optim.Adam(copies, lr=0.1, weight_decay=0.01))
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    for step in range(3):
        for group in (params, copies):
            for p in group:
                p.grad = torch.full_like(p, 0.5 * (step + 1)) + p.detach()
        plain.step()
        fused.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, copies))
    sgd = torch.optim.SGD(params, lr=0.1)
    assert fuse_adam_on_cpu(sgd) is sgd and fuse_adam_on_cpu(plain, enabled=False) is plain
