"""RecBole's general recommenders under the MMRec protocol (recbole_ext/training/mmrec_zoo.py): every one runs an
epoch or is refused in one line; models see training interactions only; Pop's metrics equal an independent
computation; the special trainers are refused under torchrun."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from recbole_ext.errors import UserError
from recbole_ext.training import mmrec_zoo

ROOT = Path(__file__).resolve().parents[1]
MM_YAML = str(ROOT / "properties" / "dataset" / "synth-mm.yaml")
ALL = mmrec_zoo.general_recommenders()
# small sizes, passed only to the models whose RecBole YAML has the key (ConvNCF's CNN needs its 64-d default)
TINY = {"embedding_size": 8, "latent_dimension": 8, "hidden_dimension": 16, "mlp_hidden_size": [16],
        "num_clusters": 4}


def _tiny_options(name: str) -> dict:
    import recbole

    path = Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml"
    keys = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return {k: v for k, v in TINY.items() if k in keys and name != "ConvNCF"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from recbole_ext.data.prepare.synthetic_mm import main

    root = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECBOLE_EXT_DATA", str(root))
        assert main(["--name", "zoomm", "--users", "80", "--items", "50", "--interactions", "800",
                     "--seed", "1"]) == 0
    return root


@pytest.fixture
def zoo(data_root, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(data_root))
    return {"state": "WARNING", "show_progress": False, "epochs": 1, "train_batch_size": 256,
            "runs_root": str(tmp_path / "runs")}


def test_the_package_is_enumerated():
    """pkgutil finds RecBole 1.2.1's general recommenders, the special-trainer and non-gradient ones included."""
    assert {"BPR", "Pop", "ItemKNN", "EASE", "NCEPLRec", "MultiVAE", "RecVAE", "NCL", "DiffRec", "LDiffRec",
            "NeuMF", "ConvNCF", "SimpleX", "DGCF", "GCMC", "LINE", "NNCF"} <= set(ALL)
    kinds = {name: mmrec_zoo.kind_of(cls) for name, cls in ALL.items()}
    assert kinds["Pop"] == kinds["NCEPLRec"] == kinds["EASE"] == "non_gradient"
    assert kinds["MultiVAE"] == kinds["RecVAE"] == kinds["ENMF"] == kinds["CDAE"] == "user_batch"
    assert kinds["NeuMF"] == kinds["DMF"] == "pointwise" and kinds["BPR"] == kinds["NCL"] == "pairwise"


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_general_recommender_runs_an_epoch(zoo, name):
    from recbole_ext.quick_start import run

    assert mmrec_zoo.refusal(ALL[name]) is None
    result = run(name, "zoomm", config_dict={**zoo, **_tiny_options(name)}, config_files=[MM_YAML])
    assert result.task == "mmrec" and len(result.history) == 1
    assert 0.0 <= result.test_result["recall@20"] <= 1.0 and result.best_valid_result
    assert result.checkpoint  # written and read back (weights_only) for the test: sparse matrices included


@pytest.mark.parametrize("name", ["FM", "KGAT"])
def test_other_recbole_models_are_refused_in_one_line(zoo, name):
    from recbole_ext.quick_start import run

    with pytest.raises(UserError, match=f"model {name} cannot run under the MMRec protocol") as err:
        run(name, "zoomm", config_dict=zoo, config_files=[MM_YAML])
    assert "\n" not in str(err.value)


def test_non_gradient_models_train_once_whatever_epochs_says(zoo):
    from recbole_ext.quick_start import run

    result = run("ItemKNN", "zoomm", config_dict={**zoo, "epochs": 5}, config_files=[MM_YAML])
    assert len(result.history) == 1


def _prepared(zoo, model: str, **extra):
    from recbole_ext.config import build_config

    config, task = build_config(model, "zoomm", {**zoo, **_tiny_options(model), **extra}, [MM_YAML])
    dataset = task.create_dataset(config)
    train, valid, test = task.data_preparation(config, dataset)
    return config, task, train, valid, test


def test_models_see_only_training_interactions(zoo):
    """Matrices built at construction, Pop's counts and the user-batch models' inputs hold the training split."""
    from recbole.model.general_recommender import EASE, ItemKNN, MultiVAE, Pop

    config, task, train, valid, test = _prepared(zoo, "Pop")
    ds = train._dataset
    users, items = ds.inter_feat["user_id"].numpy(), ds.inter_feat["item_id"].numpy()
    n_train = len(set(zip(users.tolist(), items.tolist())))
    assert n_train < n_train + len(valid._dataset) + len(test._dataset)
    pop = Pop(config, ds)
    for batch in train:  # no sampled negatives: every row is a training interaction
        assert "label" not in batch and "neg_item_id" not in batch
        pop.calculate_loss(batch)
    assert pop.item_cnt[:, 0].numpy().tolist() == np.bincount(items, minlength=ds.item_num).tolist()

    for cls in (ItemKNN, EASE):
        config, task, train, valid, test = _prepared(zoo, cls.__name__)
        assert cls(config, train._dataset).interaction_matrix.nnz == n_train
    config, task, train, valid, test = _prepared(zoo, "MultiVAE")
    assert int(MultiVAE(config, train._dataset).history_item_id.ne(0).sum()) == n_train


def test_ncl_clusters_must_fit_the_data(zoo):
    with pytest.raises(UserError, match="num_clusters") as err:
        _prepared(zoo, "NCL", num_clusters=1000)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["Pop", "ItemKNN", "MultiVAE", "RecVAE", "NCL", "RaCT"])
def test_special_trainers_are_refused_under_torchrun(monkeypatch, name):
    from recbole_ext.training.multimodal import MMRecTrainer
    from recbole_ext.utils import distributed

    assert mmrec_zoo.trainer_class({}, ALL[name], MMRecTrainer) is not None  # one process: runs
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(UserError, match=f"model {name} cannot run under torchrun") as err:
        mmrec_zoo.trainer_class({}, ALL[name], MMRecTrainer)
    assert "\n" not in str(err.value)
    assert mmrec_zoo.trainer_class({}, ALL["BPR"], MMRecTrainer) is MMRecTrainer
    assert issubclass(mmrec_zoo.trainer_class({}, ALL["NeuMF"], MMRecTrainer), MMRecTrainer)


def test_recbole_trainers_keep_their_own_steps():
    """RecBole's trainer logic runs behind the MMRec epoch loop: NCL's E-step, RecVAE's alternating optimisers,
    TraditionalTrainer's single epoch."""
    from recbole.trainer import NCLTrainer, RecVAETrainer, TraditionalTrainer

    from recbole_ext.training.multimodal import MMRecTrainer

    for name, recbole_trainer in (("NCL", NCLTrainer), ("RecVAE", RecVAETrainer), ("Pop", TraditionalTrainer),
                                  ("NCEPLRec", TraditionalTrainer)):
        cls = mmrec_zoo.trainer_class({}, ALL[name], MMRecTrainer)
        mro = cls.__mro__
        assert mro.index(MMRecTrainer) < mro.index(recbole_trainer), name
        assert cls.fit is MMRecTrainer.fit
    assert mmrec_zoo.trainer_class({}, ALL["RecVAE"], MMRecTrainer)._train_epoch is RecVAETrainer._train_epoch


def test_ncl_runs_its_e_step_and_recvae_decays_both_optimisers(zoo, monkeypatch):
    from recbole.model.general_recommender import NCL

    from recbole_ext.quick_start import run

    calls = []
    original = NCL.e_step
    monkeypatch.setattr(NCL, "e_step", lambda self: calls.append(1) or original(self))
    run("NCL", "zoomm", config_dict={**zoo, **_tiny_options("NCL"), "epochs": 3, "m_step": 2},
        config_files=[MM_YAML])
    assert len(calls) == 2  # before epochs 0 and 2

    from recbole_ext.training.multimodal import MMRecTrainer

    config, task, train, valid, test = _prepared(zoo, "RecVAE", learning_rate_scheduler=[0.5, 1], epochs=2)
    cls = mmrec_zoo.trainer_class(config, ALL["RecVAE"], MMRecTrainer)
    trainer = cls(config, ALL["RecVAE"](config, train._dataset))
    trainer.fit(train, valid, saved=False)
    trainer.tensorboard.close()
    for opt in (trainer.optimizer_encoder, trainer.optimizer_decoder):
        assert opt.param_groups[0]["lr"] == pytest.approx(config["learning_rate"] * 0.25)


def test_pair_scored_models_are_evaluated_in_training_sized_chunks(zoo):
    """NeuMF has no full_sort_predict: its evaluation batch of users x items pairs goes through predict in chunks
    of train_batch_size pairs (not eval_batch_size score cells at once), with the same metrics."""
    from recbole_ext.training.multimodal import MMRecTrainer

    config, task, train, valid, test = _prepared(zoo, "NeuMF")
    model = ALL["NeuMF"](config, train._dataset)
    chunked = mmrec_zoo.trainer_class(config, ALL["NeuMF"], MMRecTrainer)(config, model)
    whole = MMRecTrainer(config, model)
    calls = []
    original = model.predict
    model.predict = lambda inter: calls.append(len(inter)) or original(inter)
    got = chunked.evaluate(test, load_best_model=False)
    assert calls and max(calls) <= config["train_batch_size"] < len(test.uid_list) * train._dataset.item_num
    assert got == whole.evaluate(test, load_best_model=False)
    for trainer in (chunked, whole):
        trainer.tensorboard.close()


# ---- Pop, exactly -------------------------------------------------------------------------------------------

# item k is trained by users 0 .. 6-k (counts 7, 6, ..., 1, all different); item 7 only occurs in valid/test
TRAIN = {u: list(range(0, 7 - u)) for u in range(7)}
VALID = {u: [7 - u] for u in range(1, 7)}
TEST = {0: [7], 1: [7], 2: [6, 7], 3: [7], 4: [5, 7], 5: [7], 6: [3, 7]}


def _pop_expected(k: int) -> tuple[float, float]:
    """MMRec's Recall@k (hits / test items) and NDCG@k (DCG / ideal DCG of min(test items, k) hits), averaged over
    the test users, with popularity counted from TRAIN only, full ranking, the user's TRAIN items masked."""
    counts = np.zeros(8)
    for items in TRAIN.values():
        counts[items] += 1
    recalls, ndcgs = [], []
    for u, positives in TEST.items():
        candidates = [i for i in np.argsort(-counts, kind="stable") if i not in TRAIN[u]]
        top = candidates[:k]
        hits = [1.0 if i in positives else 0.0 for i in top]
        recalls.append(sum(hits) / len(positives))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(positives), k)))
        ndcgs.append(dcg / idcg)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def test_pop_metrics_equal_an_independent_computation(tmp_path, monkeypatch, one_thread):
    from recbole_ext.data.prepare.mmrec import main_mmrec
    from recbole_ext.quick_start import run

    src = tmp_path / "src"
    src.mkdir()
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for label, split in enumerate((TRAIN, VALID, TEST)):
        lines += [f"{u}\t{i}\t5\t0\t{label}" for u, items in split.items() for i in items]
    (src / "popmm.inter").write_text("\n".join(lines) + "\n")
    np.save(src / "image_feat.npy", np.ones((8, 4), np.float32))
    np.save(src / "text_feat.npy", np.ones((8, 3), np.float32))
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main_mmrec(["--src", str(src), "--name", "popmm"]) == 0
    # one batch holding every training row: each popular item repeats within it
    result = run("Pop", "popmm", config_dict={"state": "WARNING", "show_progress": False, "topk": [1, 2, 3, 5],
                                               "valid_metric": "recall@2", "metrics": ["Recall", "NDCG"],
                                               "train_batch_size": 64, "runs_root": str(tmp_path / "runs")},
                 config_files=[MM_YAML])
    for k in (1, 2, 3, 5):
        recall, ndcg = _pop_expected(k)
        assert result.test_result[f"recall@{k}"] == pytest.approx(round(recall, 4), abs=1e-12), k
        assert result.test_result[f"ndcg@{k}"] == pytest.approx(round(ndcg, 4), abs=1e-12), k
    assert _pop_expected(2) != _pop_expected(3)  # the cut-offs discriminate
