"""FAISS item index: exact search, masking by item id, IVF/HNSW metric, persistence and hash check."""
import json

import numpy as np
import pytest

from recbole_ext.errors import UserError
from recbole_ext.retrieval.index import History, ItemIndex, drop_seen

# Hand-checkable catalogue: row 0 = PAD, items 1..5 in 2-d. For the user (1, 0) the scores are
# item1: 5, item2: 4, item3: 3, item4: -1, item5: 0.5  ->  exact order 1, 2, 3, 5, 4.
ITEMS = np.array([[0, 0], [5, 0], [4, 1], [3, -2], [-1, 7], [0.5, 0.5]], dtype=np.float32)
USER = np.array([[1.0, 0.0]], dtype=np.float32)


def test_flat_search_is_exact_and_never_returns_pad():
    index = ItemIndex.build(ITEMS)
    scores, ids = index.search(USER, 5)
    assert ids.tolist() == [[1, 2, 3, 5, 4]]
    np.testing.assert_allclose(scores, [[5, 4, 3, 0.5, -1]])
    # Asking for more than the catalogue pads with -1 / -inf instead of returning PAD (id 0).
    scores, ids = index.search(USER, 7)
    assert ids.tolist() == [[1, 2, 3, 5, 4, -1, -1]]
    assert np.isneginf(scores[0, 5:]).all()


def test_seen_items_are_masked_by_id_including_the_top_ranked_one():
    index = ItemIndex.build(ITEMS)
    # The user has seen item 1 (ranked first) and item 5 (ranked fourth).
    history = History.from_pairs(rows=[0, 0], items=[1, 5], n_rows=1)
    scores, ids = index.search(USER, 3, history)
    assert ids.tolist() == [[2, 3, 4]]
    np.testing.assert_allclose(scores, [[4, 3, -1]])


def test_masking_uses_item_ids_when_faiss_rows_differ_from_ids():
    # Index rows hold items 40, 10, 30 (not 1..n): a rank- or row-based mask would drop the wrong item.
    vectors = np.array([[3, 0], [2, 0], [1, 0]], dtype=np.float32)
    index = ItemIndex.build(vectors, item_ids=[40, 10, 30])
    two_users = np.array([[1, 0], [1, 0]], dtype=np.float32)
    history = History.from_pairs(rows=[1, 0], items=[40, 10], n_rows=2)  # rows given out of order on purpose
    _, ids = index.search(two_users, 2, history)
    assert ids.tolist() == [[40, 30], [10, 30]]


def test_overfetch_uses_history_length_so_masking_never_starves_top_k():
    rng = np.random.default_rng(0)
    items = np.vstack([np.zeros((1, 8)), rng.standard_normal((200, 8))]).astype(np.float32)
    user = rng.standard_normal((1, 8)).astype(np.float32)
    exact = np.argsort(-(items[1:] @ user[0]), kind="stable") + 1
    seen = exact[:50]  # the user's 50 best items are all seen
    index = ItemIndex.build(items)
    _, ids = index.search(user, 10, History.from_pairs(np.zeros(50), seen, 1))
    assert ids[0].tolist() == exact[50:60].tolist()


def test_drop_seen_batched_rows_are_independent():
    scores = np.array([[9, 8, 7], [9, 8, 7]], dtype=np.float32)
    ids = np.array([[3, 1, 2], [3, 1, -1]])
    history = History.from_pairs([0], [1], 2)
    out_s, out_i = drop_seen(scores, ids, 2, history)
    assert out_i.tolist() == [[3, 2], [3, 1]]
    np.testing.assert_allclose(out_s, [[9, 7], [9, 8]])


@pytest.mark.parametrize("factory,param", [("IVF4,Flat", {"nprobe": 4}), ("HNSW8", {"ef_search": 64}),
                                           ("IVF4,PQ4x4", {"nprobe": 4})])
def test_approximate_indexes_use_inner_product_everywhere(factory, param):
    import faiss

    rng = np.random.default_rng(1)
    items = np.vstack([np.zeros((1, 8)), rng.standard_normal((300, 8))]).astype(np.float32)
    items[1:] *= rng.uniform(0.2, 3.0, size=(300, 1)).astype(np.float32)  # norms differ: L2 != IP ranking
    index = ItemIndex.build(items, factory, **param)
    sub = faiss.downcast_index(index.index)
    assert sub.metric_type == faiss.METRIC_INNER_PRODUCT
    if "IVF" in factory:
        assert faiss.extract_index_ivf(index.index).quantizer.metric_type == faiss.METRIC_INNER_PRODUCT
        assert faiss.extract_index_ivf(index.index).nprobe == 4
    else:
        assert sub.hnsw.efSearch == 64
    users = rng.standard_normal((20, 8)).astype(np.float32)
    exact_ids = ItemIndex.build(items).search(users, 5)[1]
    _, ids = index.search(users, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact_ids)])
    # With every list probed IVF-Flat and a wide HNSW beam are exact up to ties; PQ loses a little.
    assert recall >= (0.6 if "PQ" in factory else 0.95)
    # An L2 index would prefer small-norm items near the query; the IP results' top score equals the exact one.
    if "PQ" not in factory:
        np.testing.assert_allclose(_[:, 0], (users @ items.T).max(axis=1), rtol=1e-5)


def test_bad_index_settings_are_user_errors():
    with pytest.raises(UserError, match="not a valid FAISS index_factory"):
        ItemIndex.build(ITEMS, "NotAnIndex42")
    with pytest.raises(UserError, match="not an IVF index"):
        ItemIndex.build(ITEMS, "Flat", nprobe=3)
    with pytest.raises(UserError, match="no HNSW part"):
        ItemIndex.build(ITEMS, "Flat", ef_search=3)
    with pytest.raises(UserError, match="faiss_nprobe must be >= 1, got 0"):
        ItemIndex.build(ITEMS, "IVF2,Flat", nprobe=0)  # FAISS itself raised a RuntimeError inside search
    with pytest.raises(UserError, match="faiss_ef_search must be >= 1, got 0"):
        ItemIndex.build(ITEMS, "HNSW8", ef_search=0)  # FAISS itself returned one item for any k
    with pytest.raises(UserError, match="training faiss_index 'IVF16,Flat' on 5 item vectors of dimension"):
        ItemIndex.build(ITEMS, "IVF16,Flat")  # more lists than items
    for idmap in ("IDMap,Flat", "IDMap2,Flat"):  # FAISS's add() raised a RuntimeError traceback
        with pytest.raises(UserError, match="wraps an IDMap"):
            ItemIndex.build(ITEMS, idmap)
    with pytest.raises(UserError, match="would rank by cosine"):  # silently changed the ranking and the scores
        ItemIndex.build(ITEMS, "L2norm,Flat")
    bad = ITEMS.copy()
    bad[2, 0] = np.nan
    with pytest.raises(UserError, match="NaN"):
        ItemIndex.build(bad)


def test_persistence_round_trip_and_checkpoint_hash_mismatch(tmp_path):
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"weights v1")
    folder = tmp_path / "model.pth.faiss"
    ItemIndex.build(ITEMS, "HNSW8", ef_search=16).save(folder, checkpoint=ckpt, files={"extra.json": "[1]"})
    assert sorted(p.name for p in folder.iterdir()) == ["extra.json", "index.faiss", "item_ids.npy", "meta.json"]
    loaded, meta = ItemIndex.load(folder, checkpoint=ckpt)
    assert meta["factory"] == "HNSW8" and meta["ef_search"] == 16 and loaded.ef_search == 16
    assert loaded.search(USER, 2)[1].tolist() == [[1, 2]]
    ckpt.write_bytes(b"weights v2")
    with pytest.raises(UserError, match="built from another checkpoint"):
        ItemIndex.load(folder, checkpoint=ckpt)


def test_corrupt_index_folder_is_a_user_error(tmp_path):
    folder = tmp_path / "idx"
    ItemIndex.build(ITEMS).save(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        ItemIndex.load(folder)
    ItemIndex.build(ITEMS).save(folder)
    np.save(folder / "item_ids.npy", np.array([1, 2]))
    with pytest.raises(UserError, match="inconsistent"):
        ItemIndex.load(folder)
    (folder / "index.faiss").unlink()
    with pytest.raises(UserError, match="lacks index.faiss"):
        ItemIndex.load(folder)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["n_indexed"] == 5


def test_exact_index_over_a_million_items_suggests_the_benchmarked_ann_setting(caplog):
    import logging

    items = np.ones((1_000_001, 2), dtype=np.float32)
    with caplog.at_level(logging.INFO):
        index = ItemIndex.build(items)
    assert index.n_indexed == 1_000_000
    assert "faiss_index: IVF4096,Flat and faiss_nprobe: 64" in caplog.text
