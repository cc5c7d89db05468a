from __future__ import annotations

import os
import pickle

import pytest
import torch

from recbole_ext import checkpoint
from recbole_ext.errors import UserError
from recbole_ext.quick_start import load_run, run
from tests.conftest import assert_same_metrics, reevaluated_test_result


@pytest.fixture(scope="module")
def bpr_run(tmp_path_factory, tiny_data):
    folder = tmp_path_factory.mktemp("bpr")
    return run("BPR", "tiny", {"show_progress": False, "state": "WARNING", "epochs": 1, "data_path": str(tiny_data),
                               "run_dir": str(folder / "run")})


def test_round_trip_gives_identical_scores(bpr_run):
    config, model, dataset, train, valid, test = load_run(bpr_run.checkpoint)
    state = torch.load(bpr_run.checkpoint, weights_only=True)
    assert state["format"] == checkpoint.FORMAT
    assert state["id_maps"]["item"] == [str(t) for t in dataset.field2id_token["item_id"]]
    users = torch.arange(1, 6)
    from recbole.data.interaction import Interaction

    scores = model.full_sort_predict(Interaction({"user_id": users})).view(5, -1)
    expected = state["state_dict"]["user_embedding.weight"][users] @ state["state_dict"]["item_embedding.weight"].T
    assert torch.allclose(scores, expected)
    assert config["epochs"] == 1


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"format": checkpoint.FORMAT, "payload": _Boom()}, evil)
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.load(evil)
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    with pytest.raises(UserError, match="refusing to load"):
        checkpoint.load_weights(torch.nn.Linear(2, 2), evil)  # the memory-mapped path unpickles as safely
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Boom()))
    for read in (checkpoint.load, lambda path: checkpoint.load(path, mmap=True)):
        with pytest.raises(UserError):
            read(raw)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_load_weights_reads_the_weights_only(bpr_run):
    config, model, *_ = load_run(bpr_run.checkpoint)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    checkpoint.load_weights(model, bpr_run.checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_foreign_and_missing_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "recbole.pth")
    with pytest.raises(UserError, match="not a recbole-ext checkpoint"):
        checkpoint.load(tmp_path / "recbole.pth")
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError):
        checkpoint.load(tmp_path / "junk.pth")


def test_changed_dataset_is_detected(bpr_run, tmp_path):
    state = torch.load(bpr_run.checkpoint, weights_only=True)
    state["id_maps"]["item"] = list(reversed(state["id_maps"]["item"]))
    torch.save(state, tmp_path / "tampered.pth")
    with pytest.raises(UserError, match="item ids"):
        load_run(tmp_path / "tampered.pth")


def test_weights_of_another_shape_name_the_parameter(bpr_run, tmp_path):
    state = torch.load(bpr_run.checkpoint, weights_only=True)
    key = next(iter(state["state_dict"]))
    state["state_dict"][key] = state["state_dict"][key][:, :3]
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(UserError, match=rf"do not fit model BPR: size mismatch for {key}"):  # torch's 2nd line
        load_run(tmp_path / "narrow.pth")


def test_lightgcn_end_to_end(tmp_path, tiny):
    result = run("LightGCN", "tiny", {**tiny, "epochs": 3, "run_dir": str(tmp_path / "lg")})
    assert len(result.history) == 3 and result.history[0]["valid"]["recall@10"] >= 0
    assert result.test_result["recall@10"] > 0.15  # random ranking of 80 items gives ~0.12
    config, model, *_ = load_run(result.checkpoint)
    assert type(model).__name__ == "LightGCN"


def test_context_aware_family_end_to_end(tmp_path, tiny_data, quiet):
    result = run("FM", "tiny", {**quiet, "data_path": str(tiny_data), "threshold": {"rating": 3}, "epochs": 2, "load_col": None,
                                "run_dir": str(tmp_path / "fm")})
    assert set(result.test_result) == {"auc", "logloss"}
    assert_same_metrics(reevaluated_test_result(result), result.test_result)  # the checkpoint gives those numbers
    assert len(result.history) == 2
