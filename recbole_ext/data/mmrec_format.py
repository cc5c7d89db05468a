"""On-disk format of a multimodal dataset folder, and every check on it.

A prepared folder ``<dataset_root>/<name>/`` holds::

    <name>.inter        RecBole atomic file: user_id:token item_id:token [rating:float] [timestamp:float] x_label:float
    <name>.item         item_id:token, one line per feature row, IN FEATURE-ROW ORDER (the item-token list)
    image_feat.npy      float [n_items, d_image]; row r belongs to the item on line r of <name>.item
    text_feat.npy       float [n_items, d_text];  same row order
    mm_features.json    manifest: feature files, shapes, dtypes, sha256, provenance, split counts

Why an item-token list instead of "row = internal id": RecBole assigns internal ids at load time in order of first
appearance (``pd.factorize``), so no file can be written in internal-id order. The loader re-indexes the rows
through ``field2id_token`` (``MultimodalDataset``), and the ``.item`` file also makes RecBole give an id to items that
appear in no interaction, so every feature row is ranked, as in MMRec.

Only numpy and pandas here: preparation and validation must work without RecBole.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.errors import UserError

MANIFEST_NAME = "mm_features.json"
FORMAT_VERSION = 1
MODALITIES = ("image", "text")
DEFAULT_FEATURE_FILES = {"image": "image_feat.npy", "text": "text_feat.npy"}
SPLIT_LABELS = {0: "train", 1: "valid", 2: "test"}
_ROWS_NAMED = 5  # how many offending rows an error message lists


def _name_rows(rows: np.ndarray, tokens: np.ndarray | None) -> str:
    shown = rows[:_ROWS_NAMED]
    if tokens is not None:
        parts = [f"row {r} (item {tokens[r]})" for r in shown]
    else:
        parts = [f"row {r}" for r in shown]
    more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    return ", ".join(parts) + more


def open_feature_matrix(path: Path, n_rows: int | None = None, modality: str = "feature") -> np.ndarray:
    """Memory-map a feature ``.npy`` and check it: 2-D, floating dtype, row count, no NaN/inf row.

    Returns the read-only memory map (no copy). Raises UserError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{modality} feature file {path} is missing", fix="re-run the prepare command")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if not isinstance(arr, np.ndarray):  # an .npz archive under an .npy name loads as a mapping of arrays
            raise UserError(f"{path} is an .npz archive, not an .npy array",
                            fix="save the feature matrix itself with numpy.save")
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise UserError(f"{path} is not a plain numeric .npy array ({exc})",
                        fix="save the features with numpy.save of a float array") from None
    except UserError:
        raise
    except Exception as exc:  # truncated or not an .npy file at all
        raise UserError(f"{path} cannot be read as .npy: {exc}", fix="re-create the file with numpy.save") from None
    if arr.ndim != 2:
        raise UserError(f"{path} has shape {arr.shape}; expected a 2-D array [n_items, dim]",
                        fix="store one row per item")
    if arr.dtype.kind != "f":
        raise UserError(f"{path} has dtype {arr.dtype}; expected float16/float32/float64 features",
                        fix="convert with arr.astype('float32') before saving")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise UserError(f"{path} has {arr.shape[0]} rows but the dataset has {n_rows} items "
                        f"(one feature row per item id 0..{n_rows - 1} is required)",
                        fix="use the feature file that belongs to this interaction file")
    if arr.shape[1] == 0:
        raise UserError(f"{path} has zero columns", fix="store a non-empty feature vector per item")
    return arr


def check_finite_rows(arr: np.ndarray, path: Path, tokens: np.ndarray | None = None, chunk: int = 4096) -> None:
    """Raise UserError naming the rows that hold NaN or inf (chunked, so a memory map is never copied whole).
    Checked as float32, the dtype every model reads: float64 values beyond its range would become inf there."""
    nan_rows, inf_rows = [], []
    for start in range(0, arr.shape[0], chunk):
        with np.errstate(over="ignore"):
            block = np.asarray(arr[start:start + chunk], dtype=np.float32)
        nan_rows.append(np.flatnonzero(np.isnan(block).any(axis=1)) + start)
        inf_rows.append(np.flatnonzero(np.isinf(block).any(axis=1)) + start)
    nan_rows, inf_rows = np.concatenate(nan_rows), np.concatenate(inf_rows)
    if len(nan_rows):
        raise UserError(f"{path}: {len(nan_rows)} row(s) contain NaN: {_name_rows(nan_rows, tokens)}",
                        fix="fill or recompute those items' features (MMRec fills missing images with the mean row)")
    if len(inf_rows):
        raise UserError(f"{path}: {len(inf_rows)} row(s) contain inf (or values beyond float32's range): "
                        f"{_name_rows(inf_rows, tokens)}", fix="recompute those items' features")


def _integer_column(df: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | (values % 1 != 0) | (values.abs() >= 2**62)  # beyond int64 the cast wrapped around
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
        raise UserError(f"{path}: column {column} must hold integers; line {line} has {df[column].iloc[line - 2]!r}",
                        fix="ids and x_label are 0-based integers")
    return values.to_numpy().astype(np.int64)


def read_mmrec_inter(path: Path) -> pd.DataFrame:
    """Read and validate an MMRec interaction file (TSV: userID itemID [rating] [timestamp] x_label).

    Returns a frame with int64 ``userID``, ``itemID``, ``x_label`` and, when present, float ``rating`` and
    ``timestamp``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"interaction file {path} is missing",
                        fix="point --src at an MMRec data folder holding <name>.inter")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise UserError(f"{path} is not a readable tab-separated file: {exc}", fix="MMRec .inter files are TSV") from None
    missing = [c for c in ("userID", "itemID", "x_label") if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks required column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}",
                        fix="the header must be: userID itemID rating timestamp x_label (tab-separated)")
    if len(df) == 0:
        raise UserError(f"{path} has no interactions", fix="use a non-empty interaction file")
    out = pd.DataFrame({c: _integer_column(df, c, path) for c in ("userID", "itemID", "x_label")})
    for c in ("userID", "itemID"):
        if (out[c] < 0).any():
            line = int(np.flatnonzero(out[c].to_numpy() < 0)[0]) + 2
            raise UserError(f"{path}: negative {c} at line {line}", fix="MMRec ids are 0-based non-negative integers")
    labels = out["x_label"].to_numpy()
    bad = ~np.isin(labels, list(SPLIT_LABELS))
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 2
        values = sorted(set(labels[bad].tolist()))[:_ROWS_NAMED]
        raise UserError(f"{path}: x_label must be 0 (train), 1 (valid) or 2 (test); found {values} (first at line {line})",
                        fix="fix the split labels")
    for label, split in ((0, "training"), (1, "validation"), (2, "test")):  # a run needs all three
        if not (labels == label).any():
            raise UserError(f"{path} has no {split} rows (x_label {label})", fix="fix the split labels")
    for c in ("rating", "timestamp"):
        if c in df.columns:
            values = pd.to_numeric(df[c], errors="coerce")
            if values.isna().any():
                line = int(np.flatnonzero(values.isna().to_numpy())[0]) + 2
                raise UserError(f"{path}: column {c} must be numeric; line {line} has {df[c].iloc[line - 2]!r}",
                                fix="MMRec ignores these columns, but they must parse")
            out[c] = values.to_numpy(dtype=np.float64)
    return out


def split_report(inter: pd.DataFrame, user="userID", item="itemID") -> dict:
    """Counts per split, cold-start users and duplicate pairs: logged at prepare time, kept in the manifest."""
    labels = inter["x_label"].to_numpy()
    train_users = set(inter.loc[labels == 0, user].tolist())
    report = {"n_users": int(inter[user].nunique()), "n_interactions": int(len(inter))}
    for value, name in SPLIT_LABELS.items():
        part = inter[labels == value]
        report[f"n_{name}"] = int(len(part))
        if value:
            report[f"cold_start_users_{name}"] = int((~part[user].drop_duplicates().isin(train_users)).sum())
    report["duplicate_pairs_within_split"] = int(inter.duplicated(subset=[user, item, "x_label"]).sum())
    return report


def write_mm_folder(tmp: Path, name: str, inter: pd.DataFrame, n_items: int, features: dict[str, np.ndarray],
                    provenance: dict, feature_dtype: str | None = None) -> dict:
    """Write the atomic files, features and manifest of one dataset into ``tmp`` (the caller's atomic_dir).

    ``inter`` has columns userID, itemID, x_label (+ optional rating, timestamp); item tokens are the MMRec
    item ids 0..n_items-1, so the .item file lists them in feature-row order.
    """
    from recbole_ext.utils.hashing import file_sha256

    tmp = Path(tmp)
    columns = {"user_id:token": inter["userID"], "item_id:token": inter["itemID"]}
    for c in ("rating", "timestamp"):
        if c in inter.columns:
            columns[f"{c}:float"] = inter[c]
    columns["x_label:float"] = inter["x_label"]
    pd.DataFrame(columns).to_csv(tmp / f"{name}.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": np.arange(n_items)}).to_csv(tmp / f"{name}.item", sep="\t", index=False)
    manifest = {"format_version": FORMAT_VERSION, "item_list": f"{name}.item", "n_items": int(n_items),
                "features": {}, "splits": split_report(inter), "provenance": provenance}
    for modality, arr in features.items():
        file_name = DEFAULT_FEATURE_FILES[modality]
        out = np.asarray(arr) if feature_dtype is None else np.asarray(arr, dtype=feature_dtype)
        np.save(tmp / file_name, out, allow_pickle=False)
        manifest["features"][modality] = {"file": file_name, "shape": list(out.shape), "dtype": str(out.dtype),
                                          "sha256": file_sha256(tmp / file_name)}
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing: {folder} is not a prepared multimodal dataset",
                        fix="create it with `python run.py prepare mmrec --src DIR --name NAME`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})", fix="re-run the prepare command with --overwrite") from None
    if manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("features"), dict):
        raise UserError(f"{path} has an unknown format (format_version {manifest.get('format_version')!r})",
                        fix="re-run the prepare command with --overwrite")
    missing = [m for m in MODALITIES if m not in manifest["features"]]
    if missing:
        raise UserError(f"{path} declares no {', '.join(missing)} features", fix="re-run the prepare command")
    return manifest


def read_item_tokens(path: Path) -> np.ndarray:
    """The item-token list (feature-row order) as strings; unique, non-empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"item list {path} is missing", fix="re-run the prepare command with --overwrite")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if list(df.columns[:1]) != ["item_id:token"]:
        raise UserError(f"{path} must start with the column item_id:token", fix="re-run the prepare command")
    tokens = df["item_id:token"].to_numpy(dtype=object)
    dup = pd.Series(tokens).duplicated().to_numpy()
    if dup.any():
        raise UserError(f"{path}: item token {tokens[dup][0]!r} is listed twice", fix="each item gets one feature row")
    return tokens
