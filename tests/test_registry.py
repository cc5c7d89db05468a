from __future__ import annotations

import pytest

import recbole_ext
from recbole_ext import registry
from recbole_ext.errors import UserError
from tests.tiny_models import TinyMF


@pytest.fixture
def tiny_registered(tmp_path, monkeypatch):
    props = tmp_path / "props"
    (props / "model").mkdir(parents=True)
    (props / "dataset").mkdir()
    (props / "overall.yaml").write_text("data_path: '@bundled'\ntask: general\nruns_root: runs\nrun_dir: ~\n"
                                        "retrieval: dense\n")
    (props / "model" / "TinyMF.yaml").write_text("tiny_dim: 8  # (int) embedding size\nlearning_rate: 0.05\n")
    monkeypatch.setattr(registry, "PROPERTIES_DIR", props)
    monkeypatch.setitem(registry._extra_models, "TinyMF", TinyMF)
    return props


def test_registration_is_idempotent():
    before = dict(registry.ext_models())
    recbole_ext.register()
    recbole_ext.register()
    registry.install_hooks()
    assert registry.ext_models() == before
    from recbole.config.configurator import Config

    assert Config._load_internal_config_dict.__ext_original__.__name__ == "_load_internal_config_dict"
    assert not hasattr(Config._load_internal_config_dict.__ext_original__, "__ext_original__")


def test_recbole_entry_points_resolve_ext_models(tiny_registered):
    from recbole.config import Config
    from recbole.utils import get_model

    assert get_model("TinyMF") is TinyMF
    config = Config(model="TinyMF", dataset="ml-100k", config_dict={"state": "WARNING"})
    assert config["tiny_dim"] == 8 and config["learning_rate"] == 0.05  # overlay from properties/model/


def test_external_config_wins_over_overlay(tiny_registered):
    from recbole.config import Config

    config = Config(model="TinyMF", dataset="ml-100k", config_dict={"state": "WARNING", "tiny_dim": 4})
    assert config["tiny_dim"] == 4


def test_builtin_models_unchanged():
    from recbole.model.general_recommender.bpr import BPR
    from recbole.utils import get_model

    assert get_model("BPR") is BPR
    with pytest.raises(ValueError, match="not the name of an existing model"):
        get_model("NoSuchModel")  # RecBole's contract, without the lightgbm import error


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'Nope'"):
        registry.model_class("Nope")


def test_run_recbole_and_load_data_and_model_for_ext_model(tiny_registered, tiny):
    import torch
    from recbole.quick_start import load_data_and_model, run_recbole

    result = run_recbole(model="TinyMF", dataset="tiny", config_dict={**tiny, "run_dir": "r"})
    assert set(result) >= {"best_valid_score", "test_result"} and "recall@10" in result["test_result"]
    config, model, dataset, train, valid, test = load_data_and_model("r/model.pth")
    assert isinstance(model, TinyMF) and config["tiny_dim"] == 8
    state = torch.load("r/model.pth", weights_only=True)
    assert torch.equal(model.item_emb.weight, state["state_dict"]["item_emb.weight"])


def test_register_metric_in_place():
    import torch
    from recbole.evaluator import register as reg
    from recbole.evaluator.base_metric import TopkMetric
    from recbole.utils import EvaluatorType

    class HitsTwice(TopkMetric):
        metric_type = EvaluatorType.RANKING
        metric_need = ["rec.topk"]

        def calculate_metric(self, dataobject):
            pos_index, _ = self.used_info(dataobject)
            return self.topk_result("hitstwice", 2.0 * pos_index.cumsum(1))

    try:
        registry.register_metric(HitsTwice)
        from recbole.config import Config

        config = Config(model="BPR", dataset="ml-100k", config_dict={
            "state": "WARNING", "metrics": ["Recall", "HitsTwice"], "valid_metric": "recall@10"})
        assert "HitsTwice" in config["metrics"] and reg.metric_types["hitstwice"] == EvaluatorType.RANKING
    finally:
        for table in (reg.metrics_dict, reg.metric_information, reg.metric_types):
            table.pop("hitstwice", None)
    del torch


# Training hyper-parameters: a model's own; a dataset YAML must not set them for every model.
TRAINING_KEYS = {"learning_rate", "epochs", "patients_per_batch", "target_ddi", "train_batch_size", "weight_decay",
                 "dropout_prob", "embedding_size", "stopping_step", "learning_rate_scheduler", "reg_weight"}
# MMRec's overall.yaml values that its protocol datasets carry as framework defaults (every model YAML may override)
MMREC_FRAMEWORK_DEFAULTS = {"epochs", "stopping_step", "train_batch_size", "learning_rate", "learning_rate_scheduler"}


def test_model_yaml_wins_over_dataset_yaml_and_the_run_log_says_so():
    """synth-mm.yaml carries MMRec's stopping_step 20 and constant lr; MambaRec.yaml sets 10 and [0.96, 50]."""
    from recbole_ext.config import build_config
    from recbole_ext.quick_start import precedence_lines

    config, _ = build_config("MambaRec", "synth-mm", {"state": "ERROR"})
    assert config["stopping_step"] == 10 and config["learning_rate_scheduler"] == [0.96, 50]
    lines = precedence_lines(config)
    assert any(line.startswith("config precedence: stopping_step is 20 in synth-mm.yaml and 10 in MambaRec.yaml; "
                               "used 10: the model YAML wins") for line in lines), lines
    config, _ = build_config("MambaRec", "synth-mm", {"state": "ERROR", "stopping_step": 3})
    assert config["stopping_step"] == 3
    assert any("stopping_step" in line and "used 3 from the run's config files / command line" in line
               for line in precedence_lines(config))
    config, _ = build_config("BPR", "synth-mm", {"state": "ERROR"})  # no model YAML of ours: the dataset's value
    assert config["stopping_step"] == 20 and precedence_lines(config) == []


def test_bundled_dataset_yamls_leave_training_hyper_parameters_to_the_models():
    import yaml

    from recbole_ext.utils.paths import PROPERTIES_DIR

    for path in sorted((PROPERTIES_DIR / "dataset").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        allowed = MMREC_FRAMEWORK_DEFAULTS if data.get("task") == "mmrec" else set()
        assert not (set(data) & TRAINING_KEYS) - allowed, (path.name, sorted(set(data) & TRAINING_KEYS - allowed))
