"""ml-100k-mm: built from RecBole's own ml-100k; rows, ids, texts and genre vectors checked against the source files
read here independently (plain csv), and the first run that names it builds it into the derived cache."""
from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

import recbole_ext.data.features as features
from recbole_ext.data.prepare import ml100k_mm


def read_source():
    folder = ml100k_mm.recbole_ml100k_folder()
    with open(folder / "ml-100k.inter", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    with open(folder / "ml-100k.item", newline="") as fh:
        items = {r[0]: r for r in list(csv.reader(fh, delimiter="\t"))[1:]}
    return rows, items


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The dataset built with a recording text encoder (the real one is exercised by the end-to-end test)."""
    seen = {}

    def fake_encode(texts, **kwargs):
        seen["texts"] = list(texts)
        return np.stack([np.full(384, i, dtype=np.float32) for i in range(len(texts))])

    patch = pytest.MonkeyPatch()
    patch.setattr(features, "encode_texts", fake_encode)
    patch.setattr(features, "text_encoder_info", lambda: {"name": "recording fake"})
    out = tmp_path_factory.mktemp("ml") / "ml-100k-mm"
    try:
        manifest = ml100k_mm.build(out)
    finally:
        patch.undo()
    return out, manifest, seen["texts"]


def test_interactions_are_the_5_core_of_recboles_ml100k(built):
    out, manifest, _ = built
    rows, _ = read_source()
    item_counts = Counter(r[1] for r in rows)
    user_counts = Counter(r[0] for r in rows)
    assert min(user_counts.values()) >= 5  # ml-100k's users all qualify, so one pass on items is the whole 5-core
    expected = sorted((u, i, float(r), float(t)) for u, i, r, t in rows if item_counts[i] >= 5)
    inter = pd.read_csv(out / "ml-100k-mm.inter", sep="\t")
    umap = pd.read_csv(out / "u_id_mapping.tsv", sep="\t", dtype=str).set_index("userID")["original_user_id"]
    imap = pd.read_csv(out / "i_id_mapping.tsv", sep="\t", dtype=str).set_index("itemID")["original_item_id"]
    got = sorted(zip(umap.loc[inter["user_id:token"].astype(str)], imap.loc[inter["item_id:token"].astype(str)],
                     inter["rating:float"], inter["timestamp:float"]))
    assert got == expected
    assert manifest["n_items"] == len({i for i, c in item_counts.items() if c >= 5})


def test_feature_rows_belong_to_their_movies(built):
    out, _, texts = built
    _, items = read_source()
    imap = pd.read_csv(out / "i_id_mapping.tsv", sep="\t", dtype=str)
    genres = np.load(out / "image_feat.npy")
    text = np.load(out / "text_feat.npy")
    assert genres.shape == (len(imap), 19) and text.shape == (len(imap), 384)
    for original, row in zip(imap["original_item_id"], imap["itemID"].astype(int)):
        _, title, year, classes = items[original]
        expected = [ml100k_mm.GENRES.index(g) for g in classes.split()]
        assert np.flatnonzero(genres[row]).tolist() == sorted(expected), original
        assert text[row, 0] == row  # the fake encoder's row r encodes the r-th sentence: rows stay in item order
        assert texts[row].startswith(f"{title} ({year}).") and all(g in texts[row] for g in classes.split())
    toy_story = int(imap.loc[imap["original_item_id"] == "1", "itemID"].iloc[0])
    assert texts[toy_story] == "Toy Story (1995). Genres: Animation, Children's, Comedy."


def test_split_is_mmrecs_per_user_rule_and_recorded(built):
    out, manifest, _ = built
    inter = pd.read_csv(out / "ml-100k-mm.inter", sep="\t")
    for _, labels in inter.groupby("user_id:token")["x_label:float"]:
        n, counts = len(labels), Counter(labels)
        vt = int(n * 0.2) if n >= 10 else 2
        assert (counts[0], counts[1], counts[2]) == (n - vt, vt // 2 if n >= 10 else 1, vt - (vt // 2 if n >= 10 else 1))
    stored = json.loads((out / "mm_features.json").read_text())
    steps = {s["step"]: s for s in stored["provenance"]["preprocessing"]["steps"]}
    assert steps["kcore"]["dropped_interactions"] == 100000 - len(inter)
    assert stored["provenance"]["options"]["seed"] == ml100k_mm.SPLIT_SEED


def test_first_run_builds_it_into_the_cache_with_the_real_encoder(tmp_path, monkeypatch):
    """`--dataset=ml-100k-mm` with no prepared folder: built once (real all-MiniLM-L6-v2, offline), then reused."""
    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import recbole_ext

    result = recbole_ext.run(model="BPR", dataset="ml-100k-mm",
                             config_dict={"epochs": 1, "runs_root": str(tmp_path / "runs")}, saved=False)
    assert result.test_result["recall@20"] > 0
    entries = list((tmp_path / "cache" / "derived").iterdir())
    assert len(entries) == 1 and (entries[0] / "mm_features.json").is_file()
    text = np.load(entries[0] / "text_feat.npy")
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-3)  # a real sentence embedding, unit-norm
    monkeypatch.setattr(ml100k_mm, "build", lambda *a, **k: pytest.fail("rebuilt although the cache holds it"))
    assert ml100k_mm.cached_build() == entries[0]


def test_processes_that_need_it_at_once_build_it_once(tmp_path, monkeypatch):
    """A leaderboard's workers reach `--dataset=ml-100k-mm` together: one builds the cache entry, the others wait for
    it and read it (before the lock, the second builder failed with 'already exists' and its trial was lost)."""
    import threading
    import time

    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ml100k_mm, "cache_key", lambda: "0" * 64)
    calls = []

    def slow_build(target, *args, **kwargs):
        calls.append(target)
        time.sleep(0.3)  # both callers are past the first manifest check before either finishes
        target.mkdir(parents=True)
        (target / ml100k_mm.MANIFEST_NAME).write_text("{}")

    monkeypatch.setattr(ml100k_mm, "build", slow_build)
    got = []
    workers = [threading.Thread(target=lambda: got.append(ml100k_mm.cached_build())) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1 and len(got) == 3 and len(set(got)) == 1
