"""Multimodal data: MMRec folder conversion (every malformed input), atomic writes, synthetic generator,
MultimodalDataset feature alignment and the never-download rule."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import pytest

from recbole_ext.data import mmrec_format
from recbole_ext.data.prepare.mmrec import convert_mmrec_folder, main_mmrec
from recbole_ext.data.prepare.synthetic_mm import SyntheticMMSpec, generate
from recbole_ext.data.prepare.synthetic_mm import main as synthetic_main
from recbole_ext.errors import UserError
from recbole_ext.utils.hashing import file_sha256

HEADER = "userID\titemID\trating\ttimestamp\tx_label"


def write_mmrec(folder: Path, name="toy", rows=None, image=None, text=None, header=HEADER) -> Path:
    """A small valid MMRec folder: 4 users, 6 items; arguments replace parts with malformed ones."""
    folder.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2), (1, 3, 0), (1, 4, 0), (1, 5, 1), (1, 0, 2),
                (2, 5, 0), (2, 1, 0), (2, 2, 2), (3, 4, 0), (3, 0, 0), (3, 5, 1)]
    lines = [header] + [f"{u}\t{i}\t5.0\t{1000 + k}\t{x}" for k, (u, i, x) in enumerate(rows)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    np.save(folder / "image_feat.npy", rng.random((6, 8)).astype(np.float32) if image is None else image)
    np.save(folder / "text_feat.npy", rng.standard_normal((6, 5)).astype(np.float32) if text is None else text)
    return folder


def convert(tmp_path, **kwargs):
    src = write_mmrec(tmp_path / "src", **kwargs)
    return convert_mmrec_folder(src, tmp_path / "out" / "toy", "toy")


def test_valid_folder_converts_with_manifest(tmp_path):
    manifest = convert(tmp_path)
    out = tmp_path / "out" / "toy"
    assert sorted(p.name for p in out.iterdir()) == ["image_feat.npy", "mm_features.json", "text_feat.npy",
                                                     "toy.inter", "toy.item"]
    header = (out / "toy.inter").read_text().splitlines()[0].split("\t")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float", "x_label:float"]
    assert (out / "toy.item").read_text().split() == ["item_id:token"] + [str(i) for i in range(6)]
    assert manifest["n_items"] == 6 and manifest["splits"]["n_train"] == 8
    assert manifest["features"]["image"]["sha256"] == file_sha256(out / "image_feat.npy")
    np.testing.assert_array_equal(np.load(out / "text_feat.npy"), np.load(tmp_path / "src" / "text_feat.npy"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(header="userID\titemID\trating\ttimestamp"), "lacks required column(s) x_label"),
    (dict(rows=[(0, 0, 0), (0, 1, 3), (1, 5, 0)]), "x_label must be 0 (train), 1 (valid) or 2 (test); found [3]"),
    (dict(rows=[(0, 0, 0), (0, 1, 0.5), (1, 5, 0)]), "column x_label must hold integers; line 3"),
    (dict(rows=[(0, 0, 0), (0, -1, 0), (1, 5, 0)]), "negative itemID at line 3"),
    (dict(rows=[(0, 0, 0), (0, 6, 1), (1, 5, 2)]), "has 6 rows but toy.inter uses item ids 0..6 (7 items)"),
    (dict(image=np.ones((7, 8), np.float32)), "has 7 rows but toy.inter uses item ids 0..5 (6 items)"),
    (dict(text=np.ones((6, 5), np.int64)), "has dtype int64; expected float16/float32/float64"),
    (dict(image=np.ones(6, np.float32)), "expected a 2-D array"),
    (dict(rows=[(0, 0, 1), (1, 5, 2)]), "has no training rows"),
    (dict(rows=[(0, 0, 0), (0, 1, 0), (1, 5, 0)]), "has no validation rows (x_label 1)"),  # trained, scored nothing
    (dict(rows=[(0, 0, 0), (0, 1, 1), (1, 5, 0)]), "has no test rows (x_label 2)"),
    (dict(rows=[(0, 0, 0), (0, 10**20, 0), (1, 5, 0)]), "column itemID must hold integers; line 3"),  # was "negative"
    (dict(image=np.where(np.arange(6)[:, None] == 4, 1e300, np.ones((6, 8)))),  # float64, inf once read as float32
     "1 row(s) contain inf (or values beyond float32's range): row 4"),
])
def test_malformed_mmrec_inputs_are_named(tmp_path, kwargs, message):
    with pytest.raises(UserError) as err:
        convert(tmp_path, **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "inf")])
def test_non_finite_feature_rows_are_named(tmp_path, bad, word):
    image = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    image[3, 2] = bad
    image[5, 0] = bad
    with pytest.raises(UserError) as err:
        convert(tmp_path, image=image)
    assert f"2 row(s) contain {word}" in str(err.value) and ": row 3, row 5" in str(err.value)
    assert "image_feat.npy" in str(err.value)


def test_pickled_object_array_is_refused(tmp_path):
    src = write_mmrec(tmp_path / "src")
    np.save(src / "text_feat.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="not a plain numeric .npy array"):
        convert_mmrec_folder(src, tmp_path / "out" / "toy", "toy")


def test_npz_archive_under_an_npy_name_is_refused(tmp_path):
    src = write_mmrec(tmp_path / "src")
    with open(src / "image_feat.npy", "wb") as fh:  # AttributeError 'NpzFile' object has no attribute 'ndim'
        np.savez(fh, a=np.ones((6, 8), np.float32))
    with pytest.raises(UserError, match="is an .npz archive, not an .npy array"):
        convert_mmrec_folder(src, tmp_path / "out" / "toy", "toy")


def test_missing_source_names_where_mmrec_publishes(tmp_path):
    with pytest.raises(UserError) as err:
        convert_mmrec_folder(tmp_path / "nowhere", tmp_path / "out" / "toy", "toy")
    assert "drive.google.com" in str(err.value)


def test_prepare_is_atomic_on_failure(tmp_path, monkeypatch):
    """A failure after files were written leaves neither the target nor a temporary folder behind; an existing
    dataset survives a failed --overwrite untouched."""
    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main_mmrec(["--src", str(src), "--name", "toy"]) == 0
    before = {p.name: file_sha256(p) for p in (tmp_path / "root" / "toy").iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mmrec_format.json, "dumps", boom)  # fails after the .inter/.item/.npy files are written
    with pytest.raises(OSError):
        main_mmrec(["--src", str(src), "--name", "fresh"])
    with pytest.raises(OSError):
        main_mmrec(["--src", str(src), "--name", "toy", "--overwrite"])
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["toy"]
    assert {p.name: file_sha256(p) for p in (tmp_path / "root" / "toy").iterdir()} == before


def test_prepare_refuses_to_overwrite_without_flag(tmp_path, monkeypatch):
    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    assert main_mmrec(["--src", str(src), "--name", "toy"]) == 0
    with pytest.raises(UserError, match="already exists"):
        main_mmrec(["--src", str(src), "--name", "toy"])


# --- synthetic generator ------------------------------------------------------------------------------------------

SMALL = SyntheticMMSpec(users=60, items=40, interactions=600, seed=3)


def test_synthetic_is_deterministic_per_seed():
    inter_a, feat_a = generate(SMALL)
    inter_b, feat_b = generate(SMALL)
    inter_c, _ = generate(SyntheticMMSpec(users=60, items=40, interactions=600, seed=4))
    assert inter_a.equals(inter_b)
    for m in ("image", "text"):
        np.testing.assert_array_equal(feat_a[m], feat_b[m])
    assert not inter_a[["userID", "itemID"]].equals(inter_c[["userID", "itemID"]])


def test_synthetic_draw_in_user_blocks_does_not_change_the_data(monkeypatch):
    from recbole_ext.data.prepare import synthetic_mm

    inter_a, feat_a = generate(SMALL)  # one block
    monkeypatch.setattr(synthetic_mm, "_BLOCK_CELLS", 7 * SMALL.items)  # blocks of 7 users (memory at any scale)
    inter_b, feat_b = generate(SMALL)
    assert inter_a.equals(inter_b)
    for m in ("image", "text"):
        np.testing.assert_array_equal(feat_a[m], feat_b[m])


def test_synthetic_shape_split_and_feature_properties():
    inter, feats = generate(SMALL)
    assert 570 <= len(inter) <= 600  # per-user counts are capped at half the catalogue
    assert inter.duplicated(["userID", "itemID"]).sum() == 0
    assert feats["image"].shape == (40, 4096) and feats["text"].shape == (40, 384)
    assert feats["image"].dtype == np.float32 and (feats["image"] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(feats["text"], axis=1), 1.0, rtol=1e-5)
    for _, g in inter.groupby("userID"):
        n, counts = len(g), np.bincount(g["x_label"], minlength=3)
        assert n >= 5
        vt = 2 if n < 10 else n // 5
        assert counts.tolist() == [n - vt, 1 if n < 10 else vt // 2, 1 if n < 10 else vt - vt // 2]


def test_synthetic_cli_writes_identical_files_for_same_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    args = ["--users", "60", "--items", "40", "--interactions", "600", "--seed", "3"]
    assert synthetic_main(["--name", "a"] + args) == 0
    assert synthetic_main(["--name", "b"] + args + ["--feature-dtype", "float16"]) == 0
    assert synthetic_main(["--name", "c"] + args) == 0
    for a_file, c_file in (("a.inter", "c.inter"), ("a.item", "c.item"), ("image_feat.npy",) * 2,
                           ("text_feat.npy",) * 2):  # same seed, same options: byte-identical files
        assert file_sha256(tmp_path / "a" / a_file) == file_sha256(tmp_path / "c" / c_file), a_file
    a_inter = (tmp_path / "a" / "a.inter").read_text()
    assert a_inter == (tmp_path / "b" / "b.inter").read_text()
    for modality in ("image", "text"):  # float16 holds the same features, rounded
        half = np.load(tmp_path / "b" / f"{modality}_feat.npy")
        assert half.dtype == np.float16
        np.testing.assert_array_equal(half, np.load(tmp_path / "a" / f"{modality}_feat.npy").astype(np.float16))
    manifest = json.loads((tmp_path / "a" / "mm_features.json").read_text())
    assert manifest["provenance"]["command"].endswith("--seed 3")
    assert "CC0" in (tmp_path / "a" / "README.md").read_text()


def test_synthetic_rejects_too_few_interactions():
    with pytest.raises(UserError, match="below 5 per user"):
        generate(SyntheticMMSpec(users=100, items=40, interactions=100))


def test_bundled_synth_mm_matches_its_manifest(repo_root):
    folder = repo_root / "dataset_atomic" / "synth-mm"
    manifest = mmrec_format.read_manifest(folder)
    for entry in manifest["features"].values():
        assert file_sha256(folder / entry["file"]) == entry["sha256"]
    lines = (folder / "synth-mm.inter").read_text().splitlines()
    assert len(lines) - 1 == manifest["splits"]["n_interactions"]


# --- MultimodalDataset -------------------------------------------------------------------------------------------------


def _mm_config(tmp_path, monkeypatch, dataset="toy", **extra):
    from recbole_ext.config import build_config

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    values = {"task": "mmrec", "topk": [1, 2, 3], "valid_metric": "recall@2", "state": "WARNING",
              "show_progress": False, **extra}
    files = [str(Path(__file__).resolve().parents[1] / "properties" / "dataset" / "synth-mm.yaml")]
    return build_config("BPR", dataset, values, files)


def test_dataset_features_are_aligned_to_internal_ids(tmp_path, monkeypatch):
    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    main_mmrec(["--src", str(src), "--name", "toy"])
    config, task = _mm_config(tmp_path, monkeypatch)
    ds = task.create_dataset(config)
    image, text = np.load(src / "image_feat.npy"), np.load(src / "text_feat.npy")
    tokens = ds.field2id_token["item_id"]
    for modality, source in (("image", image), ("text", text)):
        feats = ds.mm_features[modality]
        assert str(feats.dtype) == "torch.float32"
        assert feats.shape == (ds.item_num, source.shape[1])
        assert not feats[0].any()
        for k in range(1, ds.item_num):
            np.testing.assert_array_equal(feats[k].numpy(), source[int(tokens[k])])
        assert ds.mm_feature_hash[modality] == file_sha256(tmp_path / "root" / "toy" / f"{modality}_feat.npy")
    train, valid, test = ds.build()
    assert train.mm_features is ds.mm_features  # one dict shared by the splits, not copied
    assert (len(train), len(valid), len(test)) == (8, 3, 3)  # every user has training rows: x_label decides


def test_model_takes_the_features_and_the_dataset_reloads_them_on_demand(tmp_path, monkeypatch):
    from recbole_ext.models.multimodal.mgcn import MGCN

    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    monkeypatch.setenv("RECBOLE_EXT_CACHE", str(tmp_path / "cache"))
    main_mmrec(["--src", str(src), "--name", "toy"])
    config, task = _mm_config(tmp_path, monkeypatch)
    ds = task.create_dataset(config)
    train = ds.build()[0]
    before = {m: t.clone() for m, t in ds.mm_features.items()}
    model = MGCN({**{k: config[k] for k in ("USER_ID_FIELD", "ITEM_ID_FIELD", "NEG_PREFIX", "device")},
                  "knn_k": 2}, train)
    assert ds._mm_cache == {}  # released for every split: the model's trainable copy is the only one in memory
    assert torch.equal(model.table("image").detach(), before["image"])
    for modality, values in before.items():  # a second model (grid search) gets the same tables from disk
        assert torch.equal(ds.mm_features[modality], values)
    ds.release_mm_features()
    image = np.load(tmp_path / "root" / "toy" / "image_feat.npy")
    np.save(tmp_path / "root" / "toy" / "image_feat.npy", image + 1)
    with pytest.raises(UserError, match="changed on disk"):
        ds.mm_features


def test_dataset_registers_items_without_interactions(tmp_path, monkeypatch):
    rows = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 3, 0), (1, 0, 2), (1, 5, 0)]  # item 4 has no interaction
    src = write_mmrec(tmp_path / "src", rows=rows)
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    main_mmrec(["--src", str(src), "--name", "toy"])
    config, task = _mm_config(tmp_path, monkeypatch)
    ds = task.create_dataset(config)
    assert ds.item_num == 7 and "4" in list(ds.field2id_token["item_id"])


def test_dataset_rejects_nan_feature_row_at_load(tmp_path, monkeypatch):
    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    main_mmrec(["--src", str(src), "--name", "toy"])
    text = np.load(tmp_path / "root" / "toy" / "text_feat.npy")
    text[2, 1] = np.nan
    np.save(tmp_path / "root" / "toy" / "text_feat.npy", text)
    config, task = _mm_config(tmp_path, monkeypatch)
    with pytest.raises(UserError, match=r"contain NaN: row \d+ \(item 2\)"):
        task.create_dataset(config)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_float64_overflowing_float32_is_caught(tmp_path, monkeypatch):
    """Refused by prepare (a parametrised case above); a prepared file replaced afterwards is caught on loading."""
    image = np.random.default_rng(0).random((6, 8))
    image[4, 0] = 1e300  # finite in float64, inf once cast to float32
    src = write_mmrec(tmp_path / "src")
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    main_mmrec(["--src", str(src), "--name", "toy"])
    np.save(tmp_path / "root" / "toy" / "image_feat.npy", image)
    config, task = _mm_config(tmp_path, monkeypatch)
    with pytest.raises(UserError, match=r"contain inf \(or values beyond float32's range\): row \d+ \(item 4\)"):
        task.create_dataset(config)


def test_unprepared_dataset_is_read_from_a_cache_of_mmrec_src(tmp_path, monkeypatch, caplog):
    import logging

    src = write_mmrec(tmp_path / "mmrec_copy" / "toy")
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    with caplog.at_level(logging.INFO, logger="recbole_ext.data.multimodal"):
        ds = task.create_dataset(config)
    assert not (tmp_path / "root" / "toy").exists()  # the prepared folder stays `prepare mmrec`'s output only
    entry = Path(config["data_path"])
    assert entry.parent == tmp_path / ".cache" / "mmrec" and entry.name.startswith("toy-")
    assert (entry / "mm_features.json").is_file() and ds.mm_folder == entry
    assert ds.mm_features["image"].shape == (7, 8)
    assert [r.getMessage() for r in caplog.records] == [
        f"multimodal dataset 'toy' is read from {entry}, a cache of the MMRec folder {src} "
        f"(content hash {entry.name[4:20]}, converted now)"]


def _tree_state(folder: Path) -> dict:
    """Every file and folder under ``folder`` with what a write would change (size, mtime, inode)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("prepared", [False, True], ids=["from-mmrec-folder", "prepared"])
def test_a_run_writes_nothing_into_the_data_root_or_the_source(tmp_path, monkeypatch, prepared):
    from recbole_ext.quick_start import run

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    src = write_mmrec(tmp_path / "root" / "mmrec" / "toy")  # the default source location, inside the data root
    if prepared:
        main_mmrec(["--src", str(src), "--name", "toy"])
    before = _tree_state(tmp_path / "root")
    values = {"state": "WARNING", "show_progress": False, "epochs": 1, "topk": [1, 2], "valid_metric": "recall@2",
              "runs_root": str(tmp_path / "runs")}
    for _ in range(2):  # the first load may convert into the cache, the second reads it
        run("BPR", "toy", config_dict=values, config_files=[str(Path(__file__).resolve().parents[1] / "properties" /
                                                                 "dataset" / "synth-mm.yaml")])
    assert _tree_state(tmp_path / "root") == before


def test_a_second_load_reuses_the_cached_conversion(tmp_path, monkeypatch):
    import recbole_ext.data.prepare.mmrec as prepare_mmrec

    conversions = []
    convert = prepare_mmrec.convert_mmrec_folder
    monkeypatch.setattr(prepare_mmrec, "convert_mmrec_folder", lambda *a, **k: conversions.append(a) or convert(*a, **k))
    src = write_mmrec(tmp_path / "mmrec_copy" / "toy")
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    task.create_dataset(config)
    entry = Path(config["data_path"])
    state = _tree_state(entry)
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    ds = task.create_dataset(config)
    assert len(conversions) == 1 and Path(config["data_path"]) == entry
    assert _tree_state(entry) == state and ds.mm_features["text"].shape == (7, 5)


@pytest.mark.parametrize("changed", ["toy.inter", "image_feat.npy", "text_feat.npy"])
def test_a_changed_source_file_gets_a_new_cache_entry(tmp_path, monkeypatch, changed):
    import os

    src = write_mmrec(tmp_path / "mmrec_copy" / "toy")
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    task.create_dataset(config)
    first = Path(config["data_path"])
    first_state = _tree_state(first)
    path = src / changed
    if changed.endswith(".npy"):
        np.save(path, np.load(path) + 1)  # same shape and size: only the content hash can tell
    else:
        path.write_text(path.read_text().replace("5.0", "4.0"))
    # the hash memo is keyed by (path, size, mtime): make sure the rewrite is not within one timestamp tick
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    ds = task.create_dataset(config)
    second = Path(config["data_path"])
    assert second != first and second.parent == first.parent
    assert _tree_state(first) == first_state  # the old entry is left as it was
    if changed == "text_feat.npy":
        token = ds.field2id_token["item_id"][1]
        np.testing.assert_array_equal(ds.mm_features["text"][1].numpy(), np.load(path)[int(token)])
    elif changed == "toy.inter":  # the dataset YAML loads no rating column: the new entry's file shows it
        assert {line.split("\t")[2] for line in (second / "toy.inter").read_text().splitlines()[1:]} == {"4.0"}


def test_a_source_changed_during_conversion_leaves_no_cache_entry(tmp_path, monkeypatch):
    import recbole_ext.data.prepare.mmrec as prepare_mmrec

    src = write_mmrec(tmp_path / "mmrec_copy" / "toy")
    convert = prepare_mmrec.convert_mmrec_folder

    def convert_after_a_change(*args, **kwargs):  # the source is rewritten after its hash named the entry
        np.save(src / "text_feat.npy", np.load(src / "text_feat.npy") + 1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(prepare_mmrec, "convert_mmrec_folder", convert_after_a_change)
    config, task = _mm_config(tmp_path, monkeypatch, mmrec_src=str(src))
    with pytest.raises(UserError, match="changed while it was being converted"):
        task.create_dataset(config)
    assert list((tmp_path / ".cache" / "mmrec").iterdir()) == []


def test_unprepared_baby_never_downloads(tmp_path, monkeypatch):
    from recbole.data.dataset import Dataset

    def no_download(self):
        raise AssertionError("RecBole tried to download")

    monkeypatch.setattr(Dataset, "_download", no_download)
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "root"))
    from recbole_ext.config import build_config

    with pytest.raises(UserError) as err:
        build_config("BPR", "baby", {"state": "WARNING"})
    text = str(err.value)
    assert "drive.google.com" in text and "prepare mmrec --src <that folder> --name baby" in text


def test_a_prepared_dataset_without_a_yaml_is_detected_under_data_path(tmp_path, monkeypatch):
    """`prepare ... --out DIR` then `--data_path=DIR`: the run finds the MMRec folder there and runs the mmrec task
    (detection used to look only under the dataset root, and the run fell back to the general task)."""
    import recbole_ext

    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "elsewhere"))
    assert synthetic_main(["--name", "toy-mm", "--users", "60", "--items", "80", "--interactions", "600"]) == 0
    monkeypatch.delenv("RECBOLE_EXT_DATA")
    result = recbole_ext.run("BPR", "toy-mm", {"epochs": 1, "data_path": str(tmp_path / "elsewhere"),
                                               "runs_root": str(tmp_path / "runs")}, saved=False)
    assert result.task == "mmrec" and result.config["valid_metric"] == "recall@20"
