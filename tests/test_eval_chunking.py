"""Full-sort evaluation under the MMRec protocol scores users in blocks: the largest score block any full-ranking path
builds stays within the chunk setting (``eval_users_per_batch`` users, or ``eval_batch_size`` score cells), and the
metrics do not depend on it. Covered: a RecBole built-in (BPR), a recbole-ext multimodal model (VBPR), dense
scoring and the FAISS retrieval evaluation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from recbole.utils import get_model, init_seed

from recbole_ext.retrieval.evaluation import with_faiss_eval

MM_YAML = str(Path(__file__).resolve().parents[1] / "properties" / "dataset" / "synth-mm.yaml")
N_USERS, N_ITEMS = 60, 40


@pytest.fixture(scope="module")
def tiny_mm(tmp_path_factory):
    from recbole_ext.data.prepare.synthetic_mm import main

    root = tmp_path_factory.mktemp("chunking")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECBOLE_EXT_DATA", str(root / "data"))
        assert main(["--name", "chunkmm", "--users", str(N_USERS), "--items", str(N_ITEMS),
                     "--interactions", "600", "--seed", "3"]) == 0
    return root


def _evaluate(root, monkeypatch, model_name, retrieval, **chunking):
    """(test metrics, largest score block of full_sort_predict, of the evaluation batch, the setting in cells)."""
    from recbole_ext.config import build_config

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(root / "data"))
    monkeypatch.chdir(root)  # RecBole's trainer opens a tensorboard folder in the working directory
    values = {"state": "WARNING", "show_progress": False, "retrieval": retrieval, "seed": 7,
              "topk": [5, 10], "valid_metric": "recall@10", **chunking}
    config, task = build_config(model_name, "chunkmm", values, [MM_YAML])
    dataset = task.create_dataset(config)
    train, _, test = task.data_preparation(config, dataset)
    init_seed(config["seed"], True)
    model_class = get_model(model_name)
    model = model_class(config, train._dataset)
    model.eval()
    blocks = {"predict": 0, "batch": 0}
    original_predict = model.full_sort_predict

    def recording_predict(interaction):
        scores = original_predict(interaction)
        blocks["predict"] = max(blocks["predict"], scores.numel())
        return scores

    model.full_sort_predict = recording_predict
    trainer_class = task.trainer_class(config, model_class)
    if retrieval == "faiss":
        trainer_class = with_faiss_eval(trainer_class)
    trainer = trainer_class(config, model)
    original_batch = trainer._full_sort_batch_eval

    def recording_batch(batched_data):
        out = original_batch(batched_data)
        blocks["batch"] = max(blocks["batch"], out[1].numel())
        return out

    trainer._full_sort_batch_eval = recording_batch
    try:
        result = trainer.evaluate(test, load_best_model=False)
    finally:
        trainer.tensorboard.close()
    n_items = train._dataset.item_num
    users = config["eval_users_per_batch"] or max(config["eval_batch_size"] // n_items, 1)
    return {k: float(v) for k, v in result.items()}, blocks, users * n_items, n_items


@pytest.mark.parametrize("model_name, retrieval", [("BPR", "dense"), ("VBPR", "dense"), ("BPR", "faiss")])
def test_score_block_follows_the_chunk_setting_and_metrics_do_not(tiny_mm, monkeypatch, model_name, retrieval):
    one, one_blocks, one_cells, n_items = _evaluate(tiny_mm, monkeypatch, model_name, retrieval,
                                                    eval_users_per_batch=1)
    assert one_cells == n_items
    # eval_batch_size in score cells: 5 users' rows per block
    cells, cell_blocks, cell_limit, _ = _evaluate(tiny_mm, monkeypatch, model_name, retrieval,
                                                  eval_users_per_batch=None, eval_batch_size=5 * n_items + 3)
    assert cell_limit == 5 * n_items
    every, every_blocks, _, _ = _evaluate(tiny_mm, monkeypatch, model_name, retrieval,
                                          eval_users_per_batch=10 * N_USERS)
    for blocks, limit in ((one_blocks, one_cells), (cell_blocks, cell_limit)):
        assert 0 < blocks["batch"] <= limit
        assert blocks["predict"] <= limit  # 0 when the FAISS path answered without dense scoring
    assert every_blocks["batch"] > cell_limit  # all users at once really is a bigger block
    assert one == cells == every
    assert one and all(torch.isfinite(torch.tensor(v)) for v in one.values())
