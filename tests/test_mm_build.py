"""The shared preprocessing chain of the multimodal preparers (recbole_ext/data/prepare/mm_build.py), each step
checked against an independent computation written here in plain Python."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from recbole_ext.data.mmrec_format import read_manifest
from recbole_ext.data.prepare import mm_build as mb
from recbole_ext.errors import UserError


def random_table(seed=0, n=3000, users=300, items=120):
    rng = np.random.default_rng(seed)
    u = rng.zipf(1.6, n) % users
    i = rng.zipf(1.4, n) % items
    t = rng.integers(1_300_000_000, 1_400_000_000, n).astype(float)
    return mb.InteractionTable.from_tokens([f"U{x}" for x in u], [f"I{x:04d}" for x in i], rating=rng.integers(1, 6, n),
                                           timestamp=t)


def brute_kcore(rows, k_user, k_item):
    """The k-core by repeated counting over a Python list of (user, item) pairs."""
    rows = list(rows)
    while True:
        cu = Counter(u for u, _ in rows)
        ci = Counter(i for _, i in rows)
        kept = [(u, i) for u, i in rows if cu[u] >= k_user and ci[i] >= k_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def tokens_of(table):
    return list(zip(table.user_tokens[table.user], table.item_tokens[table.item]))


def test_kcore_matches_repeated_counting_and_every_survivor_qualifies():
    table = random_table()
    log = mb.PrepLog()
    out = mb.kcore_filter(table, log, min_user=5, min_item=5)
    assert tokens_of(out) == brute_kcore(tokens_of(table), 5, 5)
    assert np.bincount(out.user)[np.unique(out.user)].min() >= 5
    assert np.bincount(out.item)[np.unique(out.item)].min() >= 5
    assert log.steps[-1]["dropped_interactions"] == len(table) - len(out) > 0
    assert log.steps[-1]["rounds"] >= 2  # this data needs more than one pass: a single pass would fail the equality


def test_kcore_that_empties_the_table_is_one_user_error():
    table = mb.InteractionTable.from_tokens(["a", "b"], ["x", "y"])
    with pytest.raises(UserError, match="no interaction is left after the 5-core"):
        mb.kcore_filter(table, mb.PrepLog())


def test_reindex_numbers_in_first_appearance_order_like_pandas_unique():
    table = random_table(1)
    table = table.take(np.random.default_rng(0).permutation(len(table)))  # codes no longer in appearance order
    table = mb.kcore_filter(table, mb.PrepLog(), 3, 3)
    out = mb.reindex(table)
    pairs = tokens_of(table)
    expected_users = list(pd.unique(pd.Series([u for u, _ in pairs])))
    expected_items = list(pd.unique(pd.Series([i for _, i in pairs])))
    assert list(out.user_tokens) == expected_users and list(out.item_tokens) == expected_items
    assert tokens_of(out) == pairs  # same rows, same order
    assert out.user.max() + 1 == len(expected_users) and out.item.max() + 1 == len(expected_items)


def test_duplicate_policies():
    t = mb.InteractionTable.from_tokens(["a", "a", "a", "b"], ["x", "x", "x", "x"], timestamp=[5, 5, 3, 1])
    by_time = mb.drop_duplicates(t, mb.PrepLog(), "timestamp")
    assert by_time.timestamp.tolist() == [5, 3, 1]  # MMRec: the exact repeat (a, x, 5) goes, the first is kept
    by_pair = mb.drop_duplicates(t, mb.PrepLog(), "pair")
    assert by_pair.timestamp.tolist() == [3, 1]  # one row per pair, the earliest
    assert len(mb.drop_duplicates(t, mb.PrepLog(), "none")) == 4


def test_min_rating_keeps_rows_at_or_above_the_threshold():
    t = mb.InteractionTable.from_tokens(list("abcd"), list("wxyz"), rating=[1, 4, 5, 3.5])
    log = mb.PrepLog()
    out = mb.filter_min_rating(t, 4, log)
    assert out.rating.tolist() == [4, 5] and log.steps[0]["dropped_interactions"] == 2
    with pytest.raises(UserError, match="no rating column"):
        mb.filter_min_rating(mb.InteractionTable.from_tokens(["a"], ["x"]), 4, mb.PrepLog())


def test_mmrec_split_follows_the_per_user_rule_and_the_seed():
    table = mb.reindex(mb.kcore_filter(random_table(2, n=6000), mb.PrepLog(), 5, 5))
    labels = mb.assign_split(table, "mmrec", seed=7)
    for user in np.unique(table.user):
        got = Counter(labels[table.user == user].tolist())
        n = sum(got.values())
        if n < 10:
            expected = {0: n - 2, 1: 1, 2: 1}
        else:
            vt = int(n * 0.2)
            expected = {0: n - vt, 1: vt // 2, 2: vt - vt // 2}
        assert {k: got.get(k, 0) for k in (0, 1, 2)} == expected, (user, n)
    assert (mb.assign_split(table, "mmrec", seed=7) == labels).all()
    assert (mb.assign_split(table, "mmrec", seed=8) != labels).any()


def test_leave_last_out_sends_each_users_latest_row_to_test():
    t = mb.InteractionTable.from_tokens(["a"] * 4 + ["b"] * 3 + ["c"] * 2, list("pqrspqrpq"),
                                        timestamp=[4, 1, 3, 2, 9, 9, 1, 5, 6])
    labels = mb.assign_split(t, "leave-last-out")
    # a: latest is t=4 (row 0), then t=3 (row 2); b: the tie at 9 goes by file order, so row 5 is last;
    # c has two rows: too short to split, both train
    assert labels.tolist() == [2, 0, 1, 0, 1, 2, 0, 0, 0]


def test_global_time_cuts_the_timeline_at_quantiles():
    t = mb.InteractionTable.from_tokens(["a"] * 10, list("abcdefghij"), timestamp=np.arange(10.0)[::-1])
    labels = mb.assign_split(t, "global-time", ratios=(0.6, 0.2, 0.2))
    cuts = np.quantile(np.arange(10.0), [0.6, 0.8])
    expected = [0 if x < cuts[0] else 1 if x < cuts[1] else 2 for x in np.arange(10.0)[::-1]]
    assert labels.tolist() == expected and set(expected) == {0, 1, 2}


def test_split_needs_timestamps_and_all_three_parts():
    no_time = mb.InteractionTable.from_tokens(["a"] * 3, list("xyz"))
    with pytest.raises(UserError, match="needs timestamps"):
        mb.assign_split(no_time, "leave-last-out")
    with pytest.raises(UserError, match="left no validation"):
        mb.assign_split(mb.InteractionTable.from_tokens(["a", "a"], ["x", "y"]), "mmrec")


def test_fill_missing_rows_uses_the_mean_of_present_rows():
    m = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 6.0]])
    filled, n = mb.fill_missing_rows(m, np.array([True, False, True]))
    assert n == 1 and filled[1].tolist() == [2.0, 4.0] and filled[0].tolist() == [1.0, 2.0]


def _prepared(tmp_path, image_rows=None):
    table = mb.reindex(mb.kcore_filter(random_table(3), mb.PrepLog(), 5, 5))
    labels = mb.assign_split(table, "mmrec", seed=1)
    n = len(table.item_tokens)
    image = np.arange(n * 4, dtype=np.float32).reshape(n, 4) if image_rows is None else image_rows
    text = np.stack([np.full(3, int(tok[1:]), dtype=np.float32) for tok in table.item_tokens])
    log = mb.PrepLog()
    log.count("empty_texts", 2)
    src = tmp_path / "raw.csv"
    src.write_text("raw input\n")
    manifest = mb.write_prepared(tmp_path / "out", "shop", table, labels, {"image": image, "text": text}, log=log,
                                 options={"min_user": 5}, inputs={"interactions": src}, source="test")
    return table, labels, manifest


def test_written_folder_lines_up_ids_rows_and_manifest(tmp_path):
    table, labels, manifest = _prepared(tmp_path)
    out = tmp_path / "out"
    inter = pd.read_csv(out / "shop.inter", sep="\t")
    assert inter["x_label:float"].tolist() == labels.tolist()
    assert inter["item_id:token"].tolist() == table.item.tolist()
    imap = pd.read_csv(out / "i_id_mapping.tsv", sep="\t", dtype=str)
    text = np.load(out / "text_feat.npy")
    # row r of text_feat belongs to the item whose MMRec id is r; the fake text feature encodes the original id
    for original, row in zip(imap["original_item_id"], imap["itemID"].astype(int)):
        assert text[row, 0] == int(original[1:])
    umap = pd.read_csv(out / "u_id_mapping.tsv", sep="\t", dtype=str)
    assert list(umap["original_user_id"]) == list(table.user_tokens)
    stored = read_manifest(out)
    assert stored["provenance"]["preprocessing"]["counts"]["empty_texts"] == 2
    assert stored["provenance"]["inputs"]["interactions"]["sha256"] == manifest["provenance"]["inputs"]["interactions"]["sha256"]
    assert json.loads((out / "mm_features.json").read_text())["id_maps"]["item"] == "i_id_mapping.tsv"


def test_feature_rows_must_match_the_items_and_nothing_is_written_otherwise(tmp_path):
    with pytest.raises(ValueError, match="image features have shape"):
        _prepared(tmp_path, image_rows=np.zeros((3, 4), dtype=np.float32))
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="NaN"):
        table = mb.reindex(mb.kcore_filter(random_table(3), mb.PrepLog(), 5, 5))
        bad = np.zeros((len(table.item_tokens), 4), dtype=np.float32)
        bad[1, 2] = np.nan
        _prepared(tmp_path, image_rows=bad)
    assert not (tmp_path / "out").exists()
