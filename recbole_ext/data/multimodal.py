"""``MultimodalDataset``: a RecBole ``Dataset`` for MMRec-style multimodal data (Baby, Sports, Clothing, synth-mm).

It reads the folder written by ``prepare mmrec`` / ``prepare synthetic-mm`` (layout in
:mod:`recbole_ext.data.mmrec_format`), splits by the ``x_label`` column (0 train, 1 valid, 2 test) instead of RecBole's
ratio split, and exposes the model-facing contract (docs/CONTRACTS.md):

* ``mm_features``: ``{"image": FloatTensor [item_num, d_v], "text": FloatTensor [item_num, d_t]}``, row k = the item
  with RecBole internal id k, row 0 (``[PAD]``) all zeros. float32; one dense copy, shared by the split datasets
  (``Dataset.copy`` is shallow).
* ``mm_feature_hash``: ``{"image": sha256, "text": sha256}`` of the source ``.npy`` files, for cache keys (combine
  it with the item id order, e.g. ``field2id_token[iid_field]``, when caching anything indexed by internal id).

RecBole's own filtering (k-core, duplicates, value intervals) is skipped: the split is fixed by ``x_label`` and
filtering would change the benchmark. Loading never writes into the data root or the MMRec source folder: a
dataset that is not prepared yet is read from a conversion of its MMRec folder (``mmrec_src``, default
``<data root>/mmrec/<name>``) kept in the derived cache under a content hash of the source files
(:func:`mm_data_folder`); nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction

from recbole_ext.data.mmrec_format import (DEFAULT_FEATURE_FILES, FORMAT_VERSION, MANIFEST_NAME, MODALITIES,
                                           SPLIT_LABELS, check_finite_rows, open_feature_matrix, read_item_tokens,
                                           read_manifest)
from recbole_ext.data.prepare import ml100k_mm
from recbole_ext.errors import UserError
from recbole_ext.utils.hashing import json_sha256
from recbole_ext.utils.paths import bundled_elsewhere

logger = logging.getLogger(__name__)

SPLIT_FIELD = "x_label"
_COPY_CHUNK = 4096


def mmrec_source_folder(config) -> Path:
    """Where an unprepared MMRec dataset is looked for: ``mmrec_src`` or ``<data root>/mmrec/<name>``."""
    if config["mmrec_src"]:
        return Path(config["mmrec_src"]).expanduser()
    return Path(config["data_path"]).parent / "mmrec" / config["dataset"]


def missing_dataset_error(config) -> UserError:
    from recbole_ext.data.prepare.mmrec import MMREC_DATA_README, MMREC_DATA_URL

    name, folder, src = config["dataset"], Path(config["data_path"]), mmrec_source_folder(config)
    what = f"multimodal dataset '{name}' is not prepared: {folder} does not exist and there is no MMRec folder at {src}"
    bundled = bundled_elsewhere(name)
    if bundled:
        return UserError(what, fix=bundled)
    return UserError(
        what,
        fix=f"download the MMRec '{name}' folder ({name}.inter, image_feat.npy, text_feat.npy) from {MMREC_DATA_URL} "
            f"(linked from {MMREC_DATA_README}), then run `python run.py prepare mmrec --src <that folder> "
            f"--name {name}` or pass --mmrec_src=<that folder>")


def mm_data_folder(config) -> Path:
    """The folder a multimodal dataset is read from; loading never writes into the data root or the source folder.

    That is the prepared folder ``config['data_path']`` (written only by an explicit ``prepare mmrec``) when it
    exists, else a conversion of the MMRec source folder kept in the derived cache (:func:`converted_source_cache`).
    Never downloads.
    """
    folder = Path(config["data_path"])
    if folder.is_dir():
        if not (folder / MANIFEST_NAME).is_file():
            raise UserError(f"{folder} exists but is not a prepared multimodal dataset (no {MANIFEST_NAME})",
                            fix=f"re-create it with `python run.py prepare mmrec --src DIR --name {config['dataset']} "
                                f"--overwrite`")
        return folder
    src = mmrec_source_folder(config)
    if not src.is_dir():
        if is_derived_on_first_use(config["dataset"]):
            return ml100k_mm.cached_build()
        raise missing_dataset_error(config)
    return converted_source_cache(src, config["dataset"])


def is_derived_on_first_use(name: str) -> bool:
    """Datasets built on this machine from files that ship with a dependency (ml-100k-mm, from RecBole's ml-100k)
    when no prepared folder or MMRec source of that name exists."""
    return name == ml100k_mm.NAME


def converted_source_cache(src: Path, name: str) -> Path:
    """``<cache>/mmrec/<name>-<content hash>/``: the MMRec folder ``src`` converted as ``prepare mmrec`` would.

    The hash covers what the converter reads (the .inter file and the feature files, through the per-(path, size,
    mtime) memo, so a large file is hashed once), the dataset name (it names the files) and the format version, so a
    second load reuses the entry and a changed source gets a new one. The entry is written atomically.
    """
    from recbole_ext.data.prepare.mmrec import convert_mmrec_folder, find_inter_file
    from recbole_ext.utils.cache import cache_dir

    inter = find_inter_file(src, name)
    features = {m: src / DEFAULT_FEATURE_FILES[m] for m in MODALITIES}
    for modality, path in features.items():
        if not path.is_file():
            raise UserError(f"{modality} feature file {path} is missing",
                            fix=f"the MMRec folder {src} must hold {name}.inter, image_feat.npy and text_feat.npy")
    source_hashes = {"inter_sha256": _feature_sha256(inter),
                     "feature_sha256": {m: _feature_sha256(path) for m, path in features.items()}}
    identity = {"format_version": FORMAT_VERSION, "name": name, "inter_file": inter.name, **source_hashes}
    key = json_sha256(identity)
    entry = cache_dir("mmrec") / f"{name}-{key[:32]}"
    if (entry / MANIFEST_NAME).is_file():
        action = "reused"
    else:
        # overwrite: an entry without a manifest is damaged, and a run converting the same source concurrently
        # writes the same data, so replacing its entry is harmless
        provenance = convert_mmrec_folder(src, entry, name, overwrite=True)["provenance"]
        if {k: provenance[k] for k in source_hashes} != source_hashes:
            # converted from other bytes than the hash names: such an entry would be trusted by every later load
            shutil.rmtree(entry, ignore_errors=True)
            raise UserError(f"the MMRec folder {src} changed while it was being converted",
                            fix="run again once its files are complete")
        action = "converted now"
    logger.info(f"multimodal dataset '{name}' is read from {entry}, a cache of the MMRec folder {src} "
                f"(content hash {key[:16]}, {action})")
    return entry


def _feature_sha256(path: Path) -> str:
    """sha256 of a data file (a feature .npy, or the .inter file: RecBole's inter_feat), remembered per (path,
    size, mtime) so large files are hashed once."""
    from recbole_ext.utils.cache import cache_dir
    from recbole_ext.utils.hashing import file_sha256

    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir("file_sha256") / f"{key}.txt"
    if memo.is_file():
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    value = file_sha256(path)
    memo.write_text(value)
    return value


class MultimodalDataset(Dataset):
    """RecBole Dataset with an ``x_label`` split and aligned multimodal item features."""

    def __init__(self, config):
        """Reads ``config['data_path']`` (RecBole does too), which ``MultimodalTask`` sets to :func:`mm_data_folder`."""
        self.mm_folder = Path(config["data_path"])
        self.mm_manifest = read_manifest(self.mm_folder)
        super().__init__(config)

    # --- loading -----------------------------------------------------------------------------------------------

    def _data_filtering(self):
        """No filtering: MMRec's split is fixed by x_label (RecBole skips it for benchmark files likewise)."""

    def _data_processing(self):
        if self.iid_field is None or self.uid_field is None:
            raise UserError("multimodal datasets need USER_ID_FIELD and ITEM_ID_FIELD",
                            fix="keep the dataset YAML's user_id / item_id fields")
        if SPLIT_FIELD not in self.inter_feat:
            raise UserError(f"{self.mm_folder}/{self.dataset_name}.inter has no {SPLIT_FIELD} column loaded",
                            fix=f"add {SPLIT_FIELD} to load_col.inter (the dataset YAML does) or re-run prepare")
        super()._data_processing()
        self._check_split_labels()
        self._load_mm_features()
        # the .item file only registers every feature row's item in RecBole's id space; drop it so training
        # batches do not carry a pointless item-feature join
        self.item_feat = None
        self.feat_name_list = [f for f in self.feat_name_list if f != "item_feat"]

    def _check_split_labels(self):
        labels = self.inter_feat[SPLIT_FIELD].to_numpy()
        bad = ~np.isin(labels, list(SPLIT_LABELS))
        if bad.any():
            raise UserError(f"{self.mm_folder}/{self.dataset_name}.inter: {SPLIT_FIELD} must be 0, 1 or 2; found "
                            f"{sorted(set(labels[bad].tolist()))[:5]}", fix="re-run the prepare command")
        if not (labels == 0).any():
            raise UserError(f"{self.mm_folder}/{self.dataset_name}.inter has no training rows", fix="fix x_label")

    def _load_mm_features(self):
        item_list = self.mm_folder / self.mm_manifest["item_list"]
        tokens = read_item_tokens(item_list)
        row_of = {t: r for r, t in enumerate(tokens)}
        internal_tokens = self.field2id_token[self.iid_field][1:]
        rows = np.fromiter((row_of.get(t, -1) for t in internal_tokens), dtype=np.int64, count=len(internal_tokens))
        if (rows < 0).any():
            missing = internal_tokens[rows < 0][:5].tolist()
            raise UserError(f"items {missing} occur in {self.dataset_name}.inter but not in {item_list.name}, so "
                            f"they have no feature row", fix="re-run the prepare command with --overwrite")
        self._mm_rows, self._mm_tokens = rows, (tokens, internal_tokens)
        # a dict object shared by the split datasets (RecBole's copy() is shallow), so a release frees them all
        self._mm_cache, self.mm_feature_hash, self.mm_feature_files = {}, {}, {}
        for modality in MODALITIES:
            path = self.mm_folder / self.mm_manifest["features"][modality]["file"]
            self._mm_cache[modality] = self._read_mm_feature(modality)
            self.mm_feature_hash[modality] = _feature_sha256(path)
            self.mm_feature_files[modality] = str(path)
            expected = self.mm_manifest["features"][modality].get("sha256")
            if expected and expected != self.mm_feature_hash[modality]:
                self.logger.warning(f"{path} changed since it was prepared (sha256 differs from {MANIFEST_NAME})")

    def _read_mm_feature(self, modality: str) -> torch.Tensor:
        """One feature file as float32 rows aligned to RecBole's internal item ids (row 0 = PAD, zeros)."""
        tokens, internal_tokens = self._mm_tokens
        rows = self._mm_rows
        path = self.mm_folder / self.mm_manifest["features"][modality]["file"]
        source = open_feature_matrix(path, n_rows=len(tokens), modality=modality)
        aligned = np.zeros((len(internal_tokens) + 1, source.shape[1]), dtype=np.float32)
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, reported just below
            for start in range(0, len(rows), _COPY_CHUNK):  # chunked: never a second full-size temporary
                aligned[1 + start:1 + start + _COPY_CHUNK] = source[rows[start:start + _COPY_CHUNK]]
        # checked after the cast: float64 values beyond float32's range become inf here
        check_finite_rows(aligned[1:], path, tokens=internal_tokens)
        return torch.from_numpy(aligned)

    @property
    def mm_features(self) -> dict[str, torch.Tensor]:
        """``{modality: [item_num, d] float32}``; read again from disk after :meth:`release_mm_features`."""
        for modality in MODALITIES:
            if modality not in self._mm_cache:
                if _feature_sha256(Path(self.mm_feature_files[modality])) != self.mm_feature_hash[modality]:
                    raise UserError(f"{self.mm_feature_files[modality]} changed on disk while {self.dataset_name} "
                                    "was loaded", fix="restart the run so the dataset is loaded again")
                self._mm_cache[modality] = self._read_mm_feature(modality)
        return self._mm_cache

    def release_mm_features(self) -> None:
        """Drop the in-memory tables (a model that took them keeps its own reference). On Clothing the image
        table is 377 MB: keeping the dataset's copy next to a model's trained copy doubles it."""
        self._mm_cache.clear()

    # --- split -------------------------------------------------------------------------------------------------

    def build(self):
        """``[train, valid, test]`` by x_label; valid/test rows of users without training rows are dropped."""
        self._change_feat_format()
        self._drop_unused_col()
        labels = self.inter_feat[SPLIT_FIELD].numpy()
        users = self.inter_feat[self.uid_field].numpy()
        columns = {k: v for k, v in self.inter_feat.interaction.items() if k != SPLIT_FIELD}
        parts, self.mm_split_counts = [], {}
        train_users = np.zeros(self.user_num, dtype=bool)
        train_users[users[labels == 0]] = True
        for value, name in SPLIT_LABELS.items():
            keep = labels == value
            if value and self.config["filter_out_cold_start_users"] is not False:
                cold = keep & ~train_users[users]
                self.mm_split_counts[f"{name}_cold_start_rows_dropped"] = int(cold.sum())
                keep &= ~cold
            index = torch.from_numpy(np.flatnonzero(keep))
            parts.append(self.copy(Interaction({k: v[index] for k, v in columns.items()})))
            self.mm_split_counts[name] = int(len(index))
        dropped = sum(v for k, v in self.mm_split_counts.items() if k.endswith("dropped"))
        if dropped:
            self.logger.info(f"{self.dataset_name}: dropped {dropped} valid/test rows of cold-start users")
        return parts

    def __str__(self):
        info = super().__str__()
        dims = ", ".join(f"{m} ({self.item_num}, {entry['shape'][1]})"
                         for m, entry in self.mm_manifest["features"].items()) if hasattr(self, "_mm_cache") else ""
        return f"{info}\nMultimodal features: {dims}"

