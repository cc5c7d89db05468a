"""``prepare catalogue`` (recbole_ext/data/prepare/catalogue.py): a user's own tables to a multimodal dataset.

The encoders are replaced by fakes that record what they are given (a text's row is derived from its bytes, an
image's row is its mean colour read with Pillow), so a row can be traced back to the item it belongs to without a
model; one test runs the real encoders."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from recbole_ext import cli
from recbole_ext.data import features as feature_encoders
from recbole_ext.data.mmrec_format import read_manifest
from recbole_ext.data.prepare import catalogue

N_USERS = 12
N_ITEMS = 8  # I0..I7 in the items table; user u rates I((u + j) % 8) for j = 0..5, j = 5 with a 1
CORRUPT, NO_PATH, NO_TEXT, JPEG, SHORT_TEXT = "I5", "I6", "I7", "I3", "I2"
UNKNOWN = "G"  # interacted by U0..U5, not in the items table


def colour(k: int) -> tuple[int, int, int]:
    return (20 * k + 5, 250 - 25 * k, (37 * k) % 256)


def write_catalogue(folder: Path, sep: str = ",", time=lambda u, j: str(1000 + 10 * u + j)) -> dict[str, Path]:
    """inter.csv, items.csv and images/: the fixture every test starts from (see the constants above)."""
    images = folder / "images"
    images.mkdir(parents=True)
    rows = []
    for u in range(N_USERS):
        for j in range(6):
            rows.append((f"U{u}", f"I{(u + j) % N_ITEMS}", time(u, j), "1" if j == 5 else "5"))
        if u < 6:
            rows.append((f"U{u}", UNKNOWN, time(u, 7), "4"))
    rows.append(("U0", "I_rare", time(0, 8), "5"))  # the only interaction of I_rare: the item 5-core drops it
    rows += [("U_short", "I0", time(20, 0), "5"), ("U_short", "I1", time(20, 1), "5")]  # the user 5-core drops it
    rows.append(rows[7])  # U1's first row again, same time: MMRec's duplicate rule drops it
    inter = pd.DataFrame(rows, columns=["uid", "iid", "when", "stars"])
    inter.to_csv(folder / "inter.csv", sep=sep, index=False)

    items = []
    for k in range(N_ITEMS):
        item = f"I{k}"
        if item == CORRUPT:
            (images / "I5.jpg").write_bytes(b"this is not an image")
            path = "images/I5.jpg"
        elif item == NO_PATH:
            path = ""
        else:
            path = f"images/{item}.{'jpg' if item == JPEG else 'png'}"
            Image.new("RGB", (8, 8), colour(k)).save(folder / path)
        title = "" if item == NO_TEXT else f"Title {k}"
        description = "" if item in (NO_TEXT, SHORT_TEXT) else f"Description of {k}"
        items.append((item, title, description, path))
    items.append(("I1", "A second row for I1", "ignored", "images/I0.png"))  # repeated id: the first row counts
    items.append(("I9", "Never bought", "", ""))
    pd.DataFrame(items, columns=["iid", "title", "description", "image"]).to_csv(folder / "items.csv", sep=sep,
                                                                                  index=False)
    return {"inter": folder / "inter.csv", "items": folder / "items.csv"}


def fake_text_row(text: str) -> np.ndarray:
    return (np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], dtype=np.uint32) / 2**32).astype(np.float32)


def fake_image_row(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1)) / 255


@pytest.fixture
def encoders(monkeypatch):
    """Fake encoders with the API's signatures; ``calls`` records their inputs."""
    calls = {"texts": [], "images": []}

    def encode_texts(texts, *, batch_size=64, device="cpu", cache_dir=None, progress=None):
        calls["texts"].append(list(texts))
        return np.stack([fake_text_row(t) for t in texts]) if len(texts) else np.zeros((0, 4), np.float32)

    def encode_images(paths, *, batch_size=32, device="cpu", cache_dir=None, progress=None, encoder=None):
        calls["images"].append(list(paths))
        rows, ok, failures = np.zeros((len(paths), 3), np.float32), np.zeros(len(paths), bool), []
        for row, path in enumerate(paths):
            if path is None:
                continue
            try:
                rows[row], ok[row] = fake_image_row(path), True
            except Exception as exc:  # Pillow's own message, as the real encoder reports it
                failures.append((row, str(path), str(exc)))
        return feature_encoders.ImageFeatures(rows, ok, failures)

    monkeypatch.setattr(feature_encoders, "encode_texts", encode_texts)
    monkeypatch.setattr(feature_encoders, "encode_images", encode_images)
    monkeypatch.setattr(feature_encoders, "text_encoder_info", lambda: {"name": "fake-text"})
    monkeypatch.setattr(feature_encoders, "image_encoder_info", lambda encoder=None: {"name": "fake-image"})
    return calls


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    return tmp_path / "root"


COLUMNS = ["--user-column", "uid", "--item-column", "iid", "--time-column", "when", "--rating-column", "stars"]


def prepare(files: dict[str, Path], *extra: str, name: str = "shop") -> int:
    return cli.main(["prepare", "catalogue", "--interactions", str(files["inter"]), "--items", str(files["items"]),
                     "--text-columns", "title,description", "--image-column", "image", "--name", name, *COLUMNS,
                     *extra])


def load(folder: Path, name: str = "shop"):
    inter = pd.read_csv(folder / f"{name}.inter", sep="\t")
    items = pd.read_csv(folder / "i_id_mapping.tsv", sep="\t", dtype={"original_item_id": str})
    users = pd.read_csv(folder / "u_id_mapping.tsv", sep="\t", dtype={"original_user_id": str})
    item_of = dict(zip(items["itemID"], items["original_item_id"]))
    user_of = dict(zip(users["userID"], users["original_user_id"]))
    pairs = sorted(zip(inter["user_id:token"].map(user_of), inter["item_id:token"].map(item_of)))
    return inter, item_of, pairs, np.load(folder / "image_feat.npy"), np.load(folder / "text_feat.npy")


def test_columns_threshold_kcore_and_id_maps_line_up_with_feature_rows(tmp_path, root, encoders, capsys):
    files = write_catalogue(tmp_path / "in")
    assert prepare(files, "--min-rating", "3") == 0
    inter, item_of, pairs, image, text = load(root / "shop")
    # by hand: ratings >= 3 keep j = 0..4 and G; I_rare and U_short fall to the 5-core; the repeated row goes
    expected = sorted({(f"U{u}", f"I{(u + j) % N_ITEMS}") for u in range(N_USERS) for j in range(5)}
                      | {(f"U{u}", UNKNOWN) for u in range(6)})
    assert pairs == expected
    assert sorted(item_of.values()) == sorted([f"I{k}" for k in range(N_ITEMS)] + [UNKNOWN])
    for row, item in item_of.items():  # row r of each matrix is the item the map gives MMRec id r
        if item not in (CORRUPT, NO_PATH, UNKNOWN):
            k = int(item[1:])
            suffix = "jpg" if item == JPEG else "png"
            np.testing.assert_array_equal(image[row], fake_image_row(tmp_path / "in" / "images" / f"{item}.{suffix}"))
            assert abs(image[row] * 255 - np.array(colour(k))).max() < 3  # the colour drawn for that item
        if item not in (NO_TEXT, UNKNOWN):
            k = int(item[1:])
            wanted = f"Title {k}" if item == SHORT_TEXT else f"Title {k} Description of {k}"
            np.testing.assert_array_equal(text[row], fake_text_row(wanted))
    assert sorted(encoders["texts"][0]) == sorted(  # empty texts are never encoded; the repeated I1 row is unused
        [f"Title {k} Description of {k}" for k in range(N_ITEMS) if f"I{k}" not in (NO_TEXT, SHORT_TEXT)] + ["Title 2"])
    manifest = read_manifest(root / "shop")
    counts = manifest["provenance"]["preprocessing"]["counts"]
    assert counts["items_table_repeated_ids"] == 1 and counts["items_table_rows_unused"] == 1  # I1's second row; I9
    assert counts["text_cells_missing_description"] == 3 and counts["text_cells_missing_title"] == 1  # I2, I7, I9; I7
    steps = {s["step"]: s for s in manifest["provenance"]["preprocessing"]["steps"]}
    assert steps["min_rating"]["dropped_interactions"] == N_USERS and steps["drop_duplicates"]["dropped_interactions"] == 1
    assert manifest["provenance"]["options"]["min_rating"] == 3.0
    assert manifest["provenance"]["inputs"]["interactions"]["sha256"] == hashlib.sha256(
        files["inter"].read_bytes()).hexdigest()
    assert "stars" not in inter.columns and inter["rating:float"].min() >= 3
    out = capsys.readouterr().out
    assert "run: python run.py --model=MambaRec --dataset=shop" in out and "9 items" in out


def test_missing_modalities_are_counted_and_given_the_mean_row(tmp_path, root, encoders, capsys):
    files = write_catalogue(tmp_path / "in")
    assert prepare(files) == 0
    _, item_of, _, image, text = load(root / "shop")
    row = {item: r for r, item in item_of.items()}
    image_missing = [row[CORRUPT], row[NO_PATH], row[UNKNOWN]]
    image_ok = [r for r in row.values() if r not in image_missing]
    for r in image_missing:
        np.testing.assert_allclose(image[r], image[image_ok].mean(axis=0), rtol=1e-6)
    text_ok = [r for item, r in row.items() if item not in (NO_TEXT, UNKNOWN)]
    for r in (row[NO_TEXT], row[UNKNOWN]):
        np.testing.assert_allclose(text[r], text[text_ok].mean(axis=0), rtol=1e-6)
    prep = read_manifest(root / "shop")["provenance"]["preprocessing"]
    counts = prep["counts"]
    assert counts["images_unreadable"] == 1 and counts["image_rows_filled_with_mean"] == 3
    assert counts["items_without_image_path"] == 2 and counts["items_not_in_items_table"] == 1
    assert counts["items_without_text"] == 2 and counts["text_rows_filled_with_mean"] == 2
    (failure,) = next(s for s in prep["steps"] if s["step"] == "encode_images")["unreadable"]
    assert failure[0] == CORRUPT and failure[1].endswith("I5.jpg")
    out = capsys.readouterr().out
    assert f"unreadable image of item {CORRUPT}" in out
    assert "given the mean row: text 2 items (empty text), image 3 items (2 without an image path, 1 unreadable)" in out


def test_items_missing_from_the_items_table_can_be_dropped_before_the_kcore(tmp_path, root, encoders):
    files = write_catalogue(tmp_path / "in")
    assert prepare(files, "--drop-unknown-items") == 0
    _, item_of, pairs, _, _ = load(root / "shop")
    assert UNKNOWN not in item_of.values() and all(item != UNKNOWN for _, item in pairs)
    prep = read_manifest(root / "shop")["provenance"]["preprocessing"]
    drop = next(s for s in prep["steps"] if s["step"] == "drop_unknown_items")
    assert drop["dropped_interactions"] == 7 and prep["counts"]["interacted_items_not_in_items_table"] == 2  # G, I_rare
    assert prep["counts"]["items_not_in_items_table"] == 0


def split_of(folder: Path) -> pd.DataFrame:
    """The written interactions with original ids, time and x_label."""
    inter = pd.read_csv(folder / "shop.inter", sep="\t")
    items = pd.read_csv(folder / "i_id_mapping.tsv", sep="\t", dtype=str)
    users = pd.read_csv(folder / "u_id_mapping.tsv", sep="\t", dtype=str)
    return pd.DataFrame({"user": inter["user_id:token"].astype(str).map(dict(zip(users["userID"],
                                                                                 users["original_user_id"]))),
                         "item": inter["item_id:token"].astype(str).map(dict(zip(items["itemID"],
                                                                                 items["original_item_id"]))),
                         "time": inter["timestamp:float"], "label": inter["x_label:float"].astype(int)})


def write_split_example(folder: Path) -> dict[str, Path]:
    """Two users, four items, ISO times given out of order: U0 at hours 3, 1, 4, 2; U1 at hours 8, 5, 7, 6."""
    folder.mkdir(parents=True)
    hours = {("U0", "A"): 3, ("U0", "B"): 1, ("U0", "C"): 4, ("U0", "D"): 2,
             ("U1", "A"): 8, ("U1", "B"): 5, ("U1", "C"): 7, ("U1", "D"): 6}
    rows = [(u, i, f"2024-03-01T{h:02d}:30:00+01:00") for (u, i), h in hours.items()]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(folder / "inter.tsv", sep="\t", index=False)
    for item in "ABCD":
        Image.new("RGB", (4, 4), (ord(item), 0, 0)).save(folder / f"{item}.png")
    pd.DataFrame({"item_id": list("ABCD"), "title": [f"item {c}" for c in "ABCD"],
                  "image": [f"{c}.png" for c in "ABCD"]}).to_csv(folder / "items.tsv", sep="\t", index=False)
    return {"inter": folder / "inter.tsv", "items": folder / "items.tsv"}


def prepare_split(files, method: str, *extra: str) -> int:
    return cli.main(["prepare", "catalogue", "--interactions", str(files["inter"]), "--items", str(files["items"]),
                     "--text-columns", "title", "--image-column", "image", "--name", "shop", "--min-user", "1",
                     "--min-item", "1", "--split", method, "--overwrite", *extra])


def test_iso_times_become_utc_seconds_and_the_three_splits_label_as_worked_out_by_hand(tmp_path, root, encoders):
    files = write_split_example(tmp_path / "in")
    assert prepare_split(files, "leave-last-out") == 0
    table = split_of(root / "shop").set_index(["user", "item"])
    # 2024-03-01T03:30+01:00 is 02:30 UTC: 1709251200 (midnight UTC) + 2.5 h
    assert table.loc[("U0", "A"), "time"] == 1709251200 + 2.5 * 3600
    assert table["label"].to_dict() == {("U0", "A"): 1, ("U0", "B"): 0, ("U0", "C"): 2, ("U0", "D"): 0,
                                        ("U1", "A"): 2, ("U1", "B"): 0, ("U1", "C"): 1, ("U1", "D"): 0}
    # global-time: the hours 1..8 cut at the 80% and 90% quantiles (6.6, 7.3): hours 1..6 train, 7 valid, 8 test
    assert prepare_split(files, "global-time") == 0
    table = split_of(root / "shop").set_index(["user", "item"])
    assert table["label"].to_dict() == {("U0", "A"): 0, ("U0", "B"): 0, ("U0", "C"): 0, ("U0", "D"): 0,
                                        ("U1", "A"): 2, ("U1", "B"): 0, ("U1", "C"): 1, ("U1", "D"): 0}
    # mmrec: a user with fewer than 10 interactions gives one to valid and one to test, chosen by the seed
    labels = {}
    for seed in ("1", "2", "3"):
        assert prepare_split(files, "mmrec", "--seed", seed) == 0
        table = split_of(root / "shop")
        assert (table.groupby("user")["label"].apply(sorted) == pd.Series({"U0": [0, 0, 1, 2], "U1": [0, 0, 1, 2]})).all()
        labels[seed] = table.set_index(["user", "item"])["label"].to_dict()
    assert prepare_split(files, "mmrec", "--seed", "1") == 0
    assert split_of(root / "shop").set_index(["user", "item"])["label"].to_dict() == labels["1"]
    assert len({tuple(sorted(v.items())) for v in labels.values()}) > 1


def replace_cell(path: Path, column: str, value: str) -> None:
    """Line 5 of a CSV fixture (data row 4) gets ``value`` in ``column``."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[3, column] = value
    frame.to_csv(path, index=False)


def empty_text_column(files: dict[str, Path]) -> None:
    frame = pd.read_csv(files["items"], dtype=str, keep_default_na=False)
    frame["blank"] = ""
    frame.to_csv(files["items"], index=False)


def parquet_without_engine(files: dict[str, Path], monkeypatch) -> None:
    files["inter"] = files["inter"].with_suffix(".parquet")
    files["inter"].write_bytes(b"PAR1")
    monkeypatch.setattr(catalogue, "parquet_available", lambda: False)  # whether or not pyarrow is installed


# case: (change to the fixture, extra options, the error line's pattern)
BAD_INPUTS = {
    "missing file": (lambda f, mp: f.update(inter=f["inter"].with_name("nope.csv")), [],
                     "interactions file .*nope.csv does not exist"),
    "missing column": (None, ["--user-column", "customer"],
                       "has no column 'customer'; its columns are: 'uid', 'iid', 'when', 'stars'"),
    "threshold leaves nothing": (None, ["--min-rating", "6"],
                                 r"no interaction is left after the rating threshold \(rating >= 6.0\)"),
    "kcore leaves nothing": (None, ["--min-user", "50"], "no interaction is left after the 50-core"),
    "every text empty": (lambda f, mp: empty_text_column(f), ["--text-columns", "blank"],
                         "every one of the 9 items left has an empty text"),
    "ids do not match": (None, ["--item-id-column", "title"],
                         "none of the 9 items left is in the items table \\(interaction item ids look like 'I0', "
                         "items table ids like 'Title 0'\\)"),
    "no image column": (None, ["--image-column", "none"], "no --image-column"),
    "image root wrong": (None, ["--image-root", "/nonexistent"], "none of the 7 image paths of the items exists"),
    "parquet without pyarrow": (parquet_without_engine, [], "reading Parquet needs pyarrow.*pip install pyarrow"),
    "bad timestamp": (lambda f, mp: replace_cell(f["inter"], "when", "yesterday"), [],
                      "must hold numbers or ISO-8601 dates.* line 5 has 'yesterday'"),
    "empty user id": (lambda f, mp: replace_cell(f["inter"], "uid", ""), [],
                      r"1 row\(s\) have an empty user id in column 'uid' \(first at line 5\)"),
    "bad rating": (lambda f, mp: replace_cell(f["inter"], "stars", "five"), [],
                   r"column 'stars' \(rating\) must hold numbers; line 5 has 'five'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_give_one_line_and_write_nothing(case, tmp_path, root, encoders, monkeypatch, capsys):
    files = write_catalogue(tmp_path / "in")
    change, extra, pattern = BAD_INPUTS[case]
    if change is not None:
        change(files, monkeypatch)
    assert prepare(files, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(pattern, err), err
    assert not root.exists() or not any(root.iterdir())  # no dataset, not even a temporary folder
    assert encoders["texts"] == [] and encoders["images"] == []  # refused before the slow part


def test_all_images_unreadable_is_refused_after_encoding_and_writes_nothing(tmp_path, root, encoders, capsys):
    files = write_catalogue(tmp_path / "in")
    for path in (tmp_path / "in" / "images").iterdir():
        path.write_bytes(b"broken")
    assert prepare(files) == 2
    assert "no item image could be read (7 unreadable, 2 without a path)" in capsys.readouterr().err
    assert not root.exists() or not any(root.iterdir())


def test_parquet_tables_are_read_like_csv(tmp_path, root, encoders):
    pytest.importorskip("pyarrow")
    files = write_catalogue(tmp_path / "in")
    for key in ("inter", "items"):
        frame = pd.read_csv(files[key], dtype=str, keep_default_na=False)
        files[key] = files[key].with_suffix(".parquet")
        frame.to_parquet(files[key])
    assert prepare(files, name="pq") == 0
    write_catalogue(tmp_path / "csv")
    assert prepare({"inter": tmp_path / "csv" / "inter.csv", "items": tmp_path / "csv" / "items.csv"}) == 0
    assert load(root / "pq", "pq")[2] == load(root / "shop")[2]


def test_the_prepared_folder_trains(tmp_path, root, encoders, quiet, one_thread):
    from recbole_ext.quick_start import run

    files = write_catalogue(tmp_path / "in")
    assert prepare(files) == 0
    result = run("BPR", "shop", config_dict={**quiet, "topk": [2], "valid_metric": "recall@2",
                                              "runs_root": str(tmp_path / "runs")})
    assert result.task == "mmrec" and set(result.test_result) >= {"recall@2", "ndcg@2"}
    assert json.loads((root / "shop" / "mm_features.json").read_text())["n_items"] == 9


def test_an_existing_dataset_is_refused_before_any_work_and_replaced_with_overwrite(tmp_path, root, encoders, capsys):
    files = write_catalogue(tmp_path / "in")
    (root / "shop").mkdir(parents=True)
    (root / "shop" / "mine.txt").write_text("keep me")
    assert prepare(files) == 2
    assert "already exists" in capsys.readouterr().err and encoders["images"] == []
    assert [p.name for p in (root / "shop").iterdir()] == ["mine.txt"]
    assert prepare(files, "--overwrite") == 0
    assert not (root / "shop" / "mine.txt").exists() and (root / "shop" / "shop.inter").is_file()


def test_real_encoders_give_each_item_the_rows_of_its_own_text_and_image(tmp_path, root, one_thread):
    """The one test with the shipped models (offline): a row of the written matrices is the encoding of its item."""
    files = write_split_example(tmp_path / "in")
    assert prepare_split(files, "leave-last-out") == 0
    _, item_of, _, image, text = load(root / "shop")
    order = [item_of[r] for r in range(len(item_of))]
    assert sorted(order) == list("ABCD") and image.shape == (4, 1280) and text.shape == (4, 384)
    own_text = feature_encoders.encode_texts([f"item {c}" for c in order], cache_dir=False)
    own_image = feature_encoders.encode_images([tmp_path / "in" / f"{c}.png" for c in order], cache_dir=False)
    np.testing.assert_allclose(text, own_text, atol=1e-5)
    np.testing.assert_allclose(image, own_image.features, atol=1e-5)
    assert np.abs(image[0] - image[1]).max() > 1e-3  # the four colours give four different rows
    encoders = read_manifest(root / "shop")["provenance"]["encoders"]
    assert encoders["text"] == feature_encoders.text_encoder_info()
    assert encoders["image"] == feature_encoders.image_encoder_info()


def test_other_delimiters_and_compressed_tables_read_the_same(tmp_path, root, encoders, capsys):
    files = write_catalogue(tmp_path / "csv")
    assert prepare(files) == 0
    first = load(root / "shop")
    other = write_catalogue(tmp_path / "semicolon", sep=";")
    assert prepare(other, "--sep", ";", "--overwrite") == 0
    assert load(root / "shop")[2] == first[2]
    items = pd.read_csv(files["items"], dtype=str, keep_default_na=False)
    items.to_csv(tmp_path / "csv" / "items.tsv.gz", sep="\t", index=False)  # tab by the suffix under .gz
    assert prepare({**files, "items": tmp_path / "csv" / "items.tsv.gz"}, "--overwrite") == 0
    again = load(root / "shop")
    assert again[2] == first[2] and np.array_equal(again[4], first[4]) and np.array_equal(again[3], first[3])
    capsys.readouterr()
    assert prepare(other, "--overwrite") == 2  # a semicolon file read with commas: one column named 'uid;iid;...'
    assert "the file seems to use another delimiter: pass --sep" in capsys.readouterr().err


def test_image_urls_are_never_downloaded_and_count_as_unreadable(tmp_path, root, encoders):
    files = write_catalogue(tmp_path / "in")
    items = pd.read_csv(files["items"], dtype=str, keep_default_na=False)
    items.loc[items["iid"] == "I4", "image"] = "https://example.com/I4.jpg"
    items.to_csv(files["items"], index=False)
    assert prepare(files) == 0
    (paths,) = encoders["images"]
    assert not any("://" in str(p) for p in paths if p is not None)
    prep = read_manifest(root / "shop")["provenance"]["preprocessing"]
    assert prep["counts"]["images_unreadable"] == 2 and prep["counts"]["image_rows_filled_with_mean"] == 4
    unreadable = next(s for s in prep["steps"] if s["step"] == "encode_images")["unreadable"]
    assert sorted(u[0] for u in unreadable) == ["I4", "I5"]
    assert "never downloads" in next(u[2] for u in unreadable if u[0] == "I4")
