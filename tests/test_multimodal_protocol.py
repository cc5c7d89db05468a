"""The MMRec protocol: evaluator vs hand-computed values (train-only masking), negative sampler, strict early
stopping, LR schedule, NaN handling, and BPR + LightGCN end to end through ``quick_start.run``."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType

from recbole_ext import registry
from recbole_ext.errors import UserError
from recbole_ext.training.multimodal import MMRecTrainer, TrainItemNegativeSampler
from tests.conftest import assert_same_metrics, reevaluated_test_result

# the scripted trainers below skip optimizer.step(), which torch reports when the LR scheduler steps
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")

ROOT = Path(__file__).resolve().parents[1]
MM_YAML = str(ROOT / "properties" / "dataset" / "synth-mm.yaml")

# user -> (train, valid, test) item ids, and the fixed score of every item (ids 0..5) for that user
SPLITS = {0: ([0, 1], [2], [3]), 1: ([3, 4], [5], [0, 1]), 2: ([5], [], [2]), 3: ([], [0], [4])}
SCORES = {0: [0.9, 0.95, 0.8, 0.7, 0.1, 0.2], 1: [0.1, 0.5, 0.6, 0.9, 0.8, 0.3],
          2: [0.5, 0.4, 0.0, 0.3, 0.2, 0.9], 3: [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]}


class FixedScores(GeneralRecommender):
    """Scores every item with the hand-written table above (by external token), whatever the internal ids."""

    input_type = InputType.PAIRWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        table = torch.full((dataset.user_num, dataset.item_num), -5.0)
        for u, row in SCORES.items():
            uid = dataset.token2id(dataset.uid_field, str(u))
            for i, s in enumerate(row):
                table[uid, dataset.token2id(dataset.iid_field, str(i))] = s
        self.register_buffer("table", table)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def calculate_loss(self, interaction):
        return (self.dummy ** 2).sum()

    def predict(self, interaction):
        return self.table[interaction[self.USER_ID], interaction[self.ITEM_ID]]

    def full_sort_predict(self, interaction):
        return self.table[interaction[self.USER_ID]].reshape(-1)


@pytest.fixture
def toy_protocol(tmp_path, monkeypatch):
    """(config, task, train, valid, test) on the hand-made dataset, through the real prepare + task code."""
    from recbole_ext.config import build_config
    from recbole_ext.data.prepare.mmrec import main_mmrec

    src = tmp_path / "src"
    src.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for u, parts in SPLITS.items():
        for label, items in enumerate(parts):
            lines += [f"{u}\t{i}\t5\t0\t{label}" for i in items]
    (src / "toy.inter").write_text("\n".join(lines) + "\n")
    np.save(src / "image_feat.npy", np.ones((6, 4), np.float32))
    np.save(src / "text_feat.npy", np.ones((6, 3), np.float32))
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main_mmrec(["--src", str(src), "--name", "toy"]) == 0
    if "FixedScores" not in registry.ext_models():
        registry.register_model(FixedScores)

    def make(**extra):
        values = {"topk": [1, 2, 3], "valid_metric": "recall@2", "state": "WARNING", "show_progress": False,
                  "eval_users_per_batch": 2, **extra}
        config, task = build_config("FixedScores", "toy", values, [MM_YAML])
        dataset = task.create_dataset(config)
        return (config, task, *task.data_preparation(config, dataset))

    return make


_OPEN_TRAINERS: list = []


@pytest.fixture(autouse=True)
def _close_tensorboard():
    """RecBole's Trainer opens a tensorboard writer in the (temporary) working directory: flush it in time."""
    yield
    while _OPEN_TRAINERS:
        _OPEN_TRAINERS.pop().tensorboard.close()


def _evaluate(config, train, data):
    model = FixedScores(config, train._dataset)
    trainer = MMRecTrainer(config, model)
    _OPEN_TRAINERS.append(trainer)
    return {k: float(v) for k, v in trainer.evaluate(data, load_best_model=False).items()}


L2, L3 = 1 / math.log2(3), 1 / math.log2(4)


def test_test_metrics_mask_train_items_only(toy_protocol):
    config, task, train, valid, test = toy_protocol()
    r = _evaluate(config, train, test)
    # user 0: train {0,1} masked; valid item 2 stays in the ranking (2, 3, 5, 4) and pushes test item 3 to rank 2
    # user 1: ranking 2, 1, 5, 0 -> test items {0, 1} at ranks 4 and 2;  user 2: ranking 0, 1, 3, 4, 2 -> rank 5
    # user 3 has no training rows: cold-start, not evaluated
    expected = {
        "recall@1": 0.0, "recall@2": (1 + 0.5 + 0) / 3, "recall@3": (1 + 0.5 + 0) / 3,
        "ndcg@1": 0.0, "ndcg@2": (L2 + L2 / (1 + L2)) / 3, "ndcg@3": (L2 + L2 / (1 + L2)) / 3,
        "precision@1": 0.0, "precision@2": (0.5 + 0.5) / 3, "precision@3": (1 / 3 + 1 / 3) / 3,
        "map@1": 0.0, "map@2": (0.5 + 0.5 / 2) / 3, "map@3": (0.5 + 0.5 / 2) / 3,
    }
    assert set(r) == set(expected)
    for key, value in expected.items():
        assert r[key] == pytest.approx(round(value, 4), abs=1e-12), key


def test_valid_metrics_and_cold_start_filter(toy_protocol):
    config, task, train, valid, test = toy_protocol()
    assert sorted(valid.uid_list.tolist()) == sorted(valid._dataset.token2id("user_id", ["0", "1"]).tolist())
    r = _evaluate(config, train, valid)
    # user 0: valid item 2 at rank 1; user 1: ranking 2, 1, 5 -> valid item 5 at rank 3
    assert r["recall@1"] == 0.5 and r["recall@2"] == 0.5 and r["recall@3"] == 1.0
    assert r["ndcg@3"] == pytest.approx(round((1 + L3) / 2, 4))
    assert r["map@3"] == pytest.approx(round((1 + 1 / 3) / 2, 4))


def test_recbole_style_test_mask_is_an_option(toy_protocol):
    config, task, train, valid, test = toy_protocol(mmrec_test_mask="train_valid")
    r = _evaluate(config, train, test)
    # with valid items masked too, user 0's test item 3 rises to rank 1; user 1's ranking becomes 2, 1, 0
    assert r["recall@1"] == pytest.approx(round(1 / 3, 4))
    assert r["recall@3"] == pytest.approx(round((1 + 1 + 0) / 3, 4))
    assert task.protocol(config)["masking"]["test"].startswith("train+valid")


def test_history_of_test_loader_is_train_items(toy_protocol):
    config, task, train, valid, test = toy_protocol()
    ds = test._dataset
    u0 = int(ds.token2id("user_id", "0"))
    hist = sorted(ds.id2token("item_id", test.uid2history_item[u0]).tolist())
    assert hist == ["0", "1"]  # train only: the valid item "2" is not masked


def test_negative_sampler_draws_train_items_outside_user_history(toy_protocol):
    config, task, train, valid, test = toy_protocol()
    ds = train._dataset
    sampler = TrainItemNegativeSampler(ds)
    users = np.repeat(ds.token2id("user_id", ["0", "1", "2"]), 200)
    np.random.seed(0)
    neg = sampler.sample_by_user_ids(users, None, 2).numpy()
    assert neg.shape == (1200,)
    train_items = set(ds.inter_feat["item_id"].numpy().tolist())
    assert set(neg.tolist()) <= train_items
    pairs = set(zip(ds.inter_feat["user_id"].numpy().tolist(), ds.inter_feat["item_id"].numpy().tolist()))
    assert not any((u, i) in pairs for u, i in zip(np.tile(users, 2).tolist(), neg.tolist()))
    np.random.seed(0)
    assert (sampler.sample_by_user_ids(users, None, 2).numpy() == neg).all()
    # item "2" occurs only in valid/test: MMRec never samples it, RecBole's pool ("all") can
    assert int(ds.token2id("item_id", "2")) not in set(neg.tolist())
    wide = TrainItemNegativeSampler(ds, pool="all").sample_by_user_ids(users, None, 5).numpy()
    assert int(ds.token2id("item_id", "2")) in set(wide.tolist())


class _ScriptedTrainer(MMRecTrainer):
    """Validation scores and NaN epochs come from a script, to test the epoch loop alone."""

    def __init__(self, config, model, scores, nan_epoch=None):
        super().__init__(config, model)
        self.scores, self.nan_epoch, self.saved_epochs, self.lrs = list(scores), nan_epoch, [], []
        _OPEN_TRAINERS.append(self)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        if epoch_idx == self.nan_epoch:
            self._check_nan(torch.tensor(float("nan")))
        return 1.0

    def _valid_epoch(self, valid_data, show_progress=False):
        score = self.scores.pop(0)
        return score, {"recall@2": score}

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self.saved_epochs.append(epoch)


@pytest.mark.parametrize("ties, saved, stopped_after", [("no_improvement", [0, 1], 3), ("improve", [0, 1, 2, 3, 4], 6)])
def test_early_stopping_tie_rule(toy_protocol, ties, saved, stopped_after):
    config, task, train, valid, test = toy_protocol(stopping_step=1, epochs=50, early_stop_ties=ties)
    trainer = _ScriptedTrainer(config, FixedScores(config, train._dataset), [0.1, 0.2, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1])
    best, _ = trainer.fit(train, valid)
    assert best == 0.2 and trainer.saved_epochs == saved
    assert len(trainer.lrs) == stopped_after + 1


def test_lr_schedule_steps_once_per_epoch(toy_protocol):
    config, task, train, valid, test = toy_protocol(learning_rate_scheduler=[0.5, 2], epochs=4, learning_rate=0.001)
    trainer = _ScriptedTrainer(config, FixedScores(config, train._dataset), [0.1, 0.2, 0.3, 0.4])
    trainer.fit(train, valid)
    assert trainer.lrs == pytest.approx([0.001 * 0.5 ** (e / 2) for e in range(4)])


@pytest.mark.parametrize("schedule", [[0.0, 50], [-1.0, 50], [0.96, 0], [0.96]])
def test_lr_schedule_must_decay_by_a_positive_factor(toy_protocol, schedule):
    config, task, train, valid, test = toy_protocol(learning_rate_scheduler=schedule, epochs=1)
    with pytest.raises(UserError, match="learning_rate_scheduler must be"):
        _ScriptedTrainer(config, FixedScores(config, train._dataset), [0.1])


def test_nan_loss_stops_and_keeps_best(toy_protocol):
    config, task, train, valid, test = toy_protocol(epochs=10)
    trainer = _ScriptedTrainer(config, FixedScores(config, train._dataset), [0.3, 0.2, 0.1], nan_epoch=2)
    best, result = trainer.fit(train, valid)
    assert trainer.stopped_on_nan and best == 0.3 and trainer.saved_epochs == [0]
    early = _ScriptedTrainer(config, FixedScores(config, train._dataset), [0.3], nan_epoch=0)
    with pytest.raises(UserError, match="NaN in epoch 0"):
        early.fit(train, valid)


def test_non_general_models_are_refused():
    from recbole.model.sequential_recommender.gru4rec import GRU4Rec

    from recbole_ext.training.multimodal import MultimodalTask

    with pytest.raises(UserError, match="cannot run under the MMRec protocol"):
        MultimodalTask().check_model(GRU4Rec)


@pytest.fixture
def tiny_synth(tmp_path, monkeypatch):
    from recbole_ext.data.prepare.synthetic_mm import main

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main(["--name", "tinymm", "--users", "80", "--items", "50", "--interactions", "800", "--seed", "1"]) == 0
    return {"state": "WARNING", "show_progress": False, "epochs": 2, "train_batch_size": 256,
            "runs_root": str(tmp_path / "runs")}


@pytest.mark.parametrize("model", ["BPR", "LightGCN"])
def test_builtin_models_run_through_the_protocol(tiny_synth, model):
    from recbole_ext.quick_start import run

    result = run(model, "tinymm", config_dict=tiny_synth, config_files=[MM_YAML])
    assert result.task == "mmrec"
    assert result.protocol["masking"] == {"valid": "train items", "test": "train items"}
    assert set(result.test_result) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map")
                                       for k in (5, 10, 20, 50)}
    assert len(result.history) == 2 and all(h["valid"] for h in result.history)
    assert result.best_valid_score == result.best_valid_result["recall@20"]
    assert_same_metrics(reevaluated_test_result(result), result.test_result)  # the saved model's numbers


def test_model_yaml_overrides_dataset_yaml_like_mmrec(tmp_path, monkeypatch):
    """MMRec loads the model YAML after the dataset YAML (MambaRec's stopping_step 10 beats overall's 20); so does
    every task here (registry.property_files)."""
    from recbole_ext.config import build_config
    from recbole_ext.data.prepare.synthetic_mm import main

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main(["--name", "synth-mm", "--users", "30", "--items", "20", "--interactions", "300"]) == 0
    config, _ = build_config("BPR", "synth-mm", {"state": "WARNING"})
    assert config["stopping_step"] == 20 and config["learning_rate_scheduler"] == [1.0, 50]  # dataset YAML
    config, _ = build_config("MambaRec", "synth-mm", {"state": "WARNING"})  # properties/model/MambaRec.yaml
    assert config["stopping_step"] == 10 and config["learning_rate_scheduler"] == [0.96, 50]
    config, _ = build_config("MambaRec", "synth-mm", {"state": "WARNING", "stopping_step": 3})
    assert config["stopping_step"] == 3  # the user still wins
