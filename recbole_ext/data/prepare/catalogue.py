"""``prepare catalogue``: a user's own interactions and item table (CSV, TSV or Parquet) to a multimodal dataset.

Inputs: an interactions table (one row per user-item event: user id, item id, a timestamp unless
``--time-column none``, an optional rating) and an items table (item id, the text columns, a column of image file
paths). Output: the folder ``prepare mmrec`` writes and every multimodal model reads (``<name>.inter`` with MMRec's
``x_label`` split, ``<name>.item``, ``image_feat.npy``, ``text_feat.npy``, ``mm_features.json``), plus
``u_id_mapping.tsv`` / ``i_id_mapping.tsv`` (original id <-> MMRec id).

The chain is the shared one of :mod:`recbole_ext.data.prepare.mm_build` (rating threshold, duplicates, k-core,
reindex, split, atomic write); this module reads and checks the tables and builds one text and one image feature
row per item that survives the k-core:

* text: the text columns of the item's row joined with ' ', encoded by ``features.encode_texts``;
* image: the file named in the image column (relative to ``--image-root``, by default the items file's folder),
  encoded by ``features.encode_images``.

An item lacking a modality (no row in the items table, an empty text, no image path, an unreadable image) gets the
mean row of the items that have it, MMRec's rule for missing images, and is counted in the manifest and the
summary. Both modalities are required: the MMRec format and every multimodal model read an image and a text
matrix, and a made-up image matrix would train models on nothing without saying so, so a table without an image
column is refused.

Every check on the inputs runs before the encoders (the slow part), and the folder appears only complete
(``write_prepared`` writes it through ``atomic_dir``), so a refused input leaves nothing behind.
"""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data import features as feature_encoders
from recbole_ext.data.mmrec_format import MANIFEST_NAME
from recbole_ext.data.prepare import mm_build
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.io import refuse_existing
from recbole_ext.utils.paths import check_dataset_name, dataset_root, shown_path

PARQUET_SUFFIXES = (".parquet", ".pq")
TAB_SUFFIXES = (".tsv", ".tab")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")  # pandas reads these by suffix
PARQUET_ENGINES = ("pyarrow", "fastparquet")  # the engines pandas.read_parquet can use
NO_COLUMN = "none"  # --time-column none: the interactions have no time
FAILURES_SHOWN = 3  # unreadable images named on the console; all are counted
FAILURES_KEPT = 20  # ... and named in the manifest's step log


@dataclass
class CatalogueSpec:
    """Every option of ``prepare catalogue``; stored as-is in the manifest's provenance."""

    interactions: str
    items: str
    name: str
    text_columns: list[str]
    image_column: str | None
    image_root: str | None = None  # None: the items file's folder
    image_encoder: str | None = None  # None: features' default CNN
    user_column: str = "user_id"
    item_column: str = "item_id"
    time_column: str | None = "timestamp"  # None: no timestamps
    rating_column: str | None = None
    min_rating: float | None = None
    item_id_column: str | None = None  # None: the same name as item_column
    sep: str | None = None  # None: by the file's suffix
    split: str = "mmrec"
    seed: int = 2023
    min_user: int = 5
    min_item: int = 5
    dedupe: str = "timestamp"
    drop_unknown_items: bool = False
    device: str = "cpu"


@dataclass
class ReadTable:
    """A table read with every needed column as stripped strings ('' where a cell is empty or missing)."""

    path: Path
    frame: pd.DataFrame
    text_file: bool  # CSV/TSV: rows are named by line; Parquet: by row number

    def where(self, row: int) -> str:
        return f"line {row + 2}" if self.text_file else f"row {row + 1}"  # line 1 of a text file is its header


@dataclass
class ItemTable:
    """The items table reduced to one row per item id: its text and its image path ('' when none)."""

    text: pd.Series  # index: item id
    image: pd.Series  # index: item id
    counts: dict[str, int] = field(default_factory=dict)


def _table_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    last = suffixes[-1] if suffixes else ""
    if last in PARQUET_SUFFIXES:
        return "parquet"
    return "tsv" if last in TAB_SUFFIXES else "csv"


def parquet_available() -> bool:
    return any(importlib.util.find_spec(engine) for engine in PARQUET_ENGINES)


def _separator(path: Path, sep: str | None) -> str:
    if sep is None:
        return "\t" if _table_format(path) == "tsv" else ","
    return "\t" if sep in ("\\t", "tab", "TAB") else sep  # a shell passes --sep '\t' as backslash-t


def _missing_columns_error(path: Path, missing: list[str], available: list[str], flags: dict[str, str]) -> UserError:
    shown = ", ".join(repr(str(c)) for c in available)
    named = "; ".join(f"{flags[c]} NAME" for c in missing if c in flags)
    fix = f"name the right columns with {named}" if named else "name the right columns"
    if len(available) == 1 and any(d in str(available[0]) for d in ",;\t|"):  # one column: the delimiter is wrong
        fix += "; the file seems to use another delimiter: pass --sep"
    return UserError(f"{path} has no column {', '.join(repr(c) for c in missing)}; its columns are: {shown}", fix=fix)


def read_table(path: str | Path, columns: list[str], role: str, flags: dict[str, str],
               sep: str | None = None) -> ReadTable:
    """Read ``columns`` of a CSV / TSV / Parquet table as stripped strings; a missing file, an unreadable table or
    a missing column is a UserError naming the file (and, for a column, the columns it has)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{role} file {path} does not exist", fix=f"pass the path of your {role} table")
    if _table_format(path) == "parquet":
        if not parquet_available():
            raise UserError(f"{path} is a Parquet file, and reading Parquet needs pyarrow, which is not installed",
                            fix="pip install pyarrow (or save the table as CSV)")
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # not Parquet, truncated, ...: the engine's own message says which
            raise UserError(f"{path} cannot be read as Parquet: {exc}", fix="check the file") from None
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise _missing_columns_error(path, missing, list(frame.columns), flags)
        frame = pd.DataFrame({c: frame[c].astype("string").fillna("").astype(object) for c in columns})
        text_file = False
    else:
        options = dict(sep=_separator(path, sep), encoding="utf-8-sig", skipinitialspace=True)  # -sig: Excel's BOM
        try:
            header = list(pd.read_csv(path, nrows=0, **options).columns)
            missing = [c for c in columns if c not in header]
            if missing:
                raise _missing_columns_error(path, missing, header, flags)
            frame = pd.read_csv(path, usecols=list(dict.fromkeys(columns)), dtype=str, keep_default_na=False,
                                **options)
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                            fix="save the table as UTF-8") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise UserError(f"{path} cannot be read as a table: {' '.join(str(exc).split())}",
                            fix="check the delimiter (--sep) and the quoting") from None
        text_file = True
    frame = pd.DataFrame({c: frame[c].astype(str).str.strip() for c in dict.fromkeys(columns)})
    return ReadTable(path, frame, text_file)


def _first_bad(table: ReadTable, bad: np.ndarray, column: str) -> str:
    row = int(np.flatnonzero(bad)[0])
    return f"{table.where(row)} has {table.frame[column].iloc[row]!r}"


def _ids(table: ReadTable, column: str, what: str) -> np.ndarray:
    values = table.frame[column].to_numpy(dtype=object)
    empty = values == ""
    if empty.any():
        raise UserError(f"{table.path}: {int(empty.sum())} row(s) have an empty {what} id in column {column!r} "
                        f"(first at {table.where(int(np.flatnonzero(empty)[0]))})", fix="fill or remove those rows")
    return values


def _numbers(table: ReadTable, column: str, what: str) -> np.ndarray:
    values = pd.to_numeric(table.frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise UserError(f"{table.path}: column {column!r} ({what}) must hold numbers; {_first_bad(table, bad, column)}",
                        fix="fix or remove that row")
    return values


def parse_timestamps(table: ReadTable, column: str) -> np.ndarray:
    """Seconds as float64: numbers are kept as they are (any unit: only their order matters to the splits);
    otherwise every cell must be an ISO-8601 date or date-time (a time without an offset is read as UTC)."""
    raw = table.frame[column]
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    if np.isfinite(numbers).all():
        return numbers
    dates = pd.to_datetime(raw, format="ISO8601", utc=True, errors="coerce")
    bad = dates.isna().to_numpy()
    if bad.any():
        raise UserError(f"{table.path}: column {column!r} (timestamp) must hold numbers or ISO-8601 dates, all of "
                        f"one kind; {_first_bad(table, bad, column)}",
                        fix="e.g. 1700000000 or 2024-01-05T10:00:00Z; --time-column none if there are no times")
    return (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def interaction_flags(spec: CatalogueSpec) -> dict[str, str]:
    return {spec.user_column: "--user-column", spec.item_column: "--item-column",
            **({spec.time_column: "--time-column (or --time-column none)"} if spec.time_column else {}),
            **({spec.rating_column: "--rating-column"} if spec.rating_column else {})}


def read_interactions(spec: CatalogueSpec) -> mm_build.InteractionTable:
    """The interactions table as an ``InteractionTable`` (ids as found, stripped; time in seconds)."""
    named = [spec.user_column, spec.item_column, spec.time_column, spec.rating_column]
    columns = [c for c in named if c]
    if len(set(columns)) != len(columns):
        raise UserError(f"the user, item, time and rating columns must differ (got {', '.join(columns)})",
                        fix="name each column once")
    table = read_table(spec.interactions, columns, "interactions", interaction_flags(spec), spec.sep)
    if len(table.frame) == 0:
        raise UserError(f"{table.path} holds no interaction", fix="pass a table with one row per interaction")
    users = _ids(table, spec.user_column, "user")
    items = _ids(table, spec.item_column, "item")
    timestamp = parse_timestamps(table, spec.time_column) if spec.time_column else None
    rating = _numbers(table, spec.rating_column, "rating") if spec.rating_column else None
    return mm_build.InteractionTable.from_tokens(users, items, rating=rating, timestamp=timestamp)


def read_items(spec: CatalogueSpec) -> ItemTable:
    """One text and one image path per item id of the items table (its first row where an id repeats)."""
    id_column = spec.item_id_column or spec.item_column
    columns = [id_column, *spec.text_columns, spec.image_column]
    flags = {id_column: "--item-id-column", spec.image_column: "--image-column",
             **{c: "--text-columns" for c in spec.text_columns}}
    table = read_table(spec.items, columns, "items", flags, spec.sep)
    frame = table.frame
    counts = {"items_table_rows": len(frame),
              **{f"text_cells_missing_{c}": int((frame[c] == "").sum()) for c in spec.text_columns}}
    no_id = frame[id_column] == ""
    counts["items_table_rows_without_id"] = int(no_id.sum())  # cannot be matched to any interaction
    frame = frame[~no_id]
    repeated = frame[id_column].duplicated(keep="first")
    counts["items_table_repeated_ids"] = int(repeated.sum())
    frame = frame[~repeated]
    ids = pd.Index(frame[id_column], name=id_column)  # not set_index: the id column may also be a text column
    text = frame[spec.text_columns[0]]
    for column in spec.text_columns[1:]:
        text = text.str.cat(frame[column], sep=" ")
    return ItemTable(pd.Series(text.str.strip().to_numpy(), index=ids),
                     pd.Series(frame[spec.image_column].to_numpy(), index=ids), counts)


def _image_paths(cells: np.ndarray, root: Path) -> tuple[list[Path | None], list[tuple[int, str, str]]]:
    """Each cell as a path under ``root`` (an absolute path as it is); '' -> None; a URL -> None and a failure
    (nothing is downloaded)."""
    paths: list[Path | None] = []
    urls = []
    for row, cell in enumerate(cells):
        if not cell:
            paths.append(None)
        elif "://" in cell:
            paths.append(None)
            urls.append((row, cell, "a URL: prepare never downloads; download the images and give their paths"))
        else:
            paths.append(root / cell)
    return paths, urls


def _first(index: pd.Index) -> str:
    return str(index[0]) if len(index) else ""


def _text_and_image_rows(spec: CatalogueSpec, item_tokens: np.ndarray, items: ItemTable, log: mm_build.PrepLog):
    """Per reindexed item (row r = item r): its text and its image path cell ('' for none)."""
    known = pd.Index(items.text.index)
    in_table = known.get_indexer(pd.Index(item_tokens)) >= 0
    texts = items.text.reindex(item_tokens).fillna("").to_numpy(dtype=object)
    cells = items.image.reindex(item_tokens).fillna("").to_numpy(dtype=object)
    if not in_table.any():  # every text and image would be the mean of nothing: the id columns do not match
        raise UserError(f"none of the {len(item_tokens)} items left is in the items table (interaction item ids look "
                        f"like {item_tokens[0]!r}, items table ids like {_first(known)!r})",
                        fix="--item-id-column must name the items table's column of the interactions' item ids")
    log.count("items_not_in_items_table", int((~in_table).sum()))
    log.count("items_table_rows_unused", int(len(known) - in_table.sum()))
    log.count("items_without_text", int((texts == "").sum()))
    log.count("items_without_image_path", int((cells == "").sum()))
    return texts, cells


def image_root(spec: CatalogueSpec) -> Path:
    return Path(spec.image_root).expanduser() if spec.image_root else Path(spec.items).expanduser().parent


def encode_item_images(spec: CatalogueSpec, table: mm_build.InteractionTable, cells: np.ndarray,
                       log: mm_build.PrepLog) -> np.ndarray:
    """The image matrix, rows without a readable image filled with the mean image row; the unreadable images are
    counted and the first ones named in the step log (item id, path, reason)."""
    root = image_root(spec)
    paths, url_failures = _image_paths(cells, root)
    named = [p for p in paths if p is not None]
    if not named:
        raise UserError(f"none of the {len(cells)} items left has an image path in column {spec.image_column!r}",
                        fix="--image-column must name the items table's column of image file paths")
    if not any(p.is_file() for p in named):  # a wrong --image-root, found before the encoder is loaded
        raise UserError(f"none of the {len(named)} image paths of the items exists (e.g. {named[0]})",
                        fix=f"--image-root must be the folder the paths in column {spec.image_column!r} are "
                            f"relative to (now {root})")
    encoded = feature_encoders.encode_images(paths, device=spec.device, encoder=spec.image_encoder)
    failures = sorted([tuple(f) for f in encoded.failures] + url_failures)
    log.count("images_unreadable", len(failures))
    if not encoded.ok.any():
        row, path, reason = failures[0]
        raise UserError(f"no item image could be read ({len(failures)} unreadable, {int((cells == '').sum())} "
                        f"without a path); the first: {path}: {reason}", fix="check the image files")
    image, filled = mm_build.fill_missing_rows(encoded.features, encoded.ok)
    log.count("image_rows_filled_with_mean", filled)
    log.record("encode_images", table, unreadable=[[str(table.item_tokens[row]), str(path), str(reason)]
                                                   for row, path, reason in failures[:FAILURES_KEPT]])
    return image


def encode_item_texts(spec: CatalogueSpec, texts: np.ndarray, log: mm_build.PrepLog) -> np.ndarray:
    """The text matrix; items with an empty text get the mean text row (they are not encoded: the encoding of ''
    is one arbitrary point, the mean is MMRec's rule for a missing modality)."""
    present = texts != ""
    encoded = feature_encoders.encode_texts(list(texts[present]), device=spec.device)
    matrix = np.zeros((len(texts), encoded.shape[1]), dtype=np.float32)
    matrix[present] = encoded
    text, filled = mm_build.fill_missing_rows(matrix, present)
    log.count("text_rows_filled_with_mean", filled)
    return text


def prepare_catalogue(spec: CatalogueSpec, target: str | Path | None = None, overwrite: bool = False) -> dict:
    """Read, check, filter, split and encode the catalogue, then write the dataset folder ``target`` (default
    ``<dataset root>/<name>``); returns the manifest (its ``provenance.preprocessing`` holds every count)."""
    check_dataset_name(spec.name, "shop")
    if not spec.text_columns:
        raise UserError("no text column given", fix="pass --text-columns title,description (the columns of the "
                                                    "items table whose text describes an item)")
    if not spec.image_column:
        raise UserError("no --image-column: the multimodal format and every multimodal model need an image feature "
                        "row per item", fix="pass --image-column NAME, the items table's column of image paths "
                                            "(items without a readable image get the mean image row)")
    target = Path(target) if target is not None else dataset_root() / spec.name
    refuse_existing(target, overwrite)  # before the long work, not after it
    log = mm_build.PrepLog()
    table = read_interactions(spec)
    log.record("read", table)
    items = read_items(spec)
    for name, value in items.counts.items():
        log.count(name, value)
    known = pd.Index(items.text.index).get_indexer(table.item_tokens) >= 0
    log.count("interacted_items_not_in_items_table", int((~known).sum()))
    if spec.drop_unknown_items:
        keep = known[table.item]
        before = len(table)
        table = table.take(keep)
        log.record("drop_unknown_items", table, dropped=int((~keep).sum()))
        if len(table) == 0:
            raise UserError(f"no interaction's item is in the items table ({before} interactions; interaction item "
                            f"ids look like {table.item_tokens[0]!r}, items table ids like "
                            f"{_first(items.text.index)!r})",
                            fix="--item-id-column must name the items table's column of the interactions' item ids")
    table = mm_build.filter_min_rating(table, spec.min_rating, log)
    table = mm_build.drop_duplicates(table, log, policy=spec.dedupe)
    table = mm_build.kcore_filter(table, log, min_user=spec.min_user, min_item=spec.min_item)
    table = mm_build.reindex(table)
    x_label = mm_build.assign_split(table, method=spec.split, seed=spec.seed, log=log)
    texts, cells = _text_and_image_rows(spec, table.item_tokens, items, log)
    if (texts == "").all():
        raise UserError(f"every one of the {len(texts)} items left has an empty text (columns "
                        f"{', '.join(spec.text_columns)})", fix="--text-columns must name columns that hold the "
                                                                "items' titles or descriptions")
    image = encode_item_images(spec, table, cells, log)
    text = encode_item_texts(spec, texts, log)
    encoders = {"image": feature_encoders.image_encoder_info(spec.image_encoder),
                "text": feature_encoders.text_encoder_info()}
    inputs = {"interactions": Path(spec.interactions), "items": Path(spec.items), "images": image_root(spec)}
    options = asdict(spec)
    manifest = mm_build.write_prepared(target, spec.name, table, x_label, {"image": image, "text": text}, log=log,
                                       options=options, inputs=inputs, source="catalogue", encoders=encoders,
                                       overwrite=overwrite)
    return manifest


def summary_lines(manifest: dict, target: Path, name: str) -> list[str]:
    """What ``prepare catalogue`` prints: each filter, each count of missing data, the result and the run line."""
    prep = manifest["provenance"]["preprocessing"]
    counts, options = prep["counts"], manifest["provenance"]["options"]
    lines = []
    steps = {step["step"]: step for step in prep["steps"]}
    for step in prep["steps"]:
        if step["step"] == "encode_images":
            continue
        what = {"read": "read", "drop_unknown_items": "items not in the items table",
                "min_rating": f"rating >= {step.get('min_rating')}", "drop_duplicates": f"duplicates ({step.get('policy')})",
                "kcore": f"{step.get('min_user')}-core users / {step.get('min_item')}-core items"}.get(step["step"],
                                                                                                        step["step"])
        dropped = f", dropped {step['dropped_interactions']}" if step["step"] != "read" else ""
        lines.append(f"{what}: {step['interactions']} interactions, {step['users']} users, {step['items']} items"
                     f"{dropped}")
    table_notes = [f"{counts[key]} {what}" for key, what in (
        ("items_table_repeated_ids", "repeated ids (the first row used)"),
        ("items_table_rows_without_id", "rows without an id"),
        ("items_table_rows_unused", "items in no kept interaction (ignored)")) if counts[key]]
    empty_cells = [f"{key[len('text_cells_missing_'):]} {value}" for key, value in counts.items()
                   if key.startswith("text_cells_missing_") and value]
    if empty_cells:
        table_notes.append(f"empty text cells: {', '.join(empty_cells)}")
    lines.append(f"items table: {counts['items_table_rows']} rows" + "".join(f"; {n}" for n in table_notes))
    if counts["items_not_in_items_table"]:
        lines.append(f"{counts['items_not_in_items_table']} kept items are not in the items table: no text, no image")
    image_reasons = [f"{counts[key]} {what}" for key, what in (("items_without_image_path", "without an image path"),
                                                               ("images_unreadable", "unreadable")) if counts[key]]
    lines.append(f"given the mean row: text {counts['text_rows_filled_with_mean']} items (empty text), image "
                 f"{counts['image_rows_filled_with_mean']} items" + (f" ({', '.join(image_reasons)})"
                                                                      if image_reasons else ""))
    for item, path, reason in steps["encode_images"]["unreadable"][:FAILURES_SHOWN]:
        lines.append(f"  unreadable image of item {item}: {path}: {reason}")
    extra = counts["images_unreadable"] - FAILURES_SHOWN
    if extra > 0:
        lines.append(f"  ... and {extra} more unreadable images (the first {FAILURES_KEPT} are named in "
                     f"{MANIFEST_NAME})")
    split = manifest["splits"]
    short = counts.get("users_too_short_to_split")
    lines.append(f"split {options['split']}" + (f" (seed {options['seed']})" if options["split"] == "mmrec" else "")
                 + f": train {split['n_train']}, valid {split['n_valid']}, test {split['n_test']}"
                 + (f"; {short} users with < {mm_build.MIN_SPLIT_INTERACTIONS} interactions kept in train"
                    if short else ""))
    dims = ", ".join(f"{m} {manifest['features'][m]['shape'][1]}-d" for m in ("image", "text"))
    lines.append(f"prepared {shown_path(target)}: {split['n_users']} users, {manifest['n_items']} items, "
                 f"{split['n_interactions']} interactions; features {dims}")
    lines.append(f"run: python run.py --model=MambaRec --dataset={name}")
    return lines


def _column_list(text: str) -> list[str]:
    return list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))


def _optional_column(text: str | None) -> str | None:
    return None if text is None or text.strip().lower() in (NO_COLUMN, "") else text.strip()


def main(argv: list[str]) -> int:
    parser = CommandParser(
        prog="run.py prepare catalogue",
        description="Build a multimodal dataset from your own interactions and items tables (CSV, TSV or Parquet "
                    "by suffix): text features from the text columns, image features from the image files, MMRec's "
                    "preprocessing (duplicates, k-core, reindex, split). Items without text or without a readable "
                    "image get the mean feature row; every such item is counted. See docs/data.md.")
    inputs = parser.add_argument_group("inputs")
    inputs.add_argument("--interactions", required=True, metavar="FILE",
                        help="table of interactions, one row per user-item event (.csv, .tsv, .parquet)")
    inputs.add_argument("--items", required=True, metavar="FILE", help="table of items: id, text columns, image path")
    inputs.add_argument("--text-columns", required=True, metavar="COLS",
                        help="comma-separated columns of the items table whose text, joined with ' ', is encoded")
    inputs.add_argument("--image-column", metavar="COL",
                        help="column of the items table holding each item's image path (required: the format needs "
                             "an image modality)")
    inputs.add_argument("--image-root", metavar="DIR",
                        help="folder the image paths are relative to (default: the items file's folder)")
    inputs.add_argument("--image-encoder", metavar="FILE",
                        help="a TorchScript CNN mapping [B,3,224,224] to [B,D] (default: EfficientNet-Lite0)")
    inputs.add_argument("--sep", help="column delimiter of CSV/TSV files (default: ',' for .csv, tab for .tsv)")
    columns = parser.add_argument_group("columns")
    columns.add_argument("--user-column", metavar="COL", default="user_id", help="user id column of the interactions")
    columns.add_argument("--item-column", metavar="COL", default="item_id", help="item id column of the interactions")
    columns.add_argument("--time-column", metavar="COL", default="timestamp",
                         help="time column (numbers, or ISO-8601 dates read as UTC); 'none' when there is none")
    columns.add_argument("--rating-column", metavar="COL", help="rating column, kept in the .inter file (default: none)")
    columns.add_argument("--item-id-column", metavar="COL",
                         help="item id column of the items table (default: the --item-column name)")
    steps = parser.add_argument_group("preprocessing")
    steps.add_argument("--min-rating", type=float, metavar="X", help="keep interactions rated at least this (needs "
                                                        "--rating-column; default: keep all)")
    steps.add_argument("--dedupe", choices=mm_build.DEDUPE_POLICIES, default="timestamp",
                       help="timestamp: drop rows repeating (user, item, time) (MMRec); pair: one row per "
                            "(user, item), the earliest; none")
    steps.add_argument("--drop-unknown-items", action="store_true",
                       help="drop interactions whose item is not in the items table (before the k-core); by "
                            "default they are kept and get the mean text and image rows")
    steps.add_argument("--min-user", type=int, metavar="N", default=5, help="k-core: interactions a user needs")
    steps.add_argument("--min-item", type=int, metavar="N", default=5, help="k-core: interactions an item needs")
    steps.add_argument("--split", choices=mm_build.SPLIT_METHODS, default="mmrec",
                       help="mmrec: MMRec's per-user random split (80/10/10; a user with < 10 interactions gives one to "
                            "valid and one to test); leave-last-out: each user's last "
                            "interaction to test, the one before to valid; global-time: the timeline cut at its "
                            "80%% and 90%% quantiles")
    steps.add_argument("--seed", type=int, metavar="N", default=2023, help="seed of the mmrec split")
    output = parser.add_argument_group("output")
    output.add_argument("--name", required=True, help="dataset name, a folder under the dataset root (e.g. shop)")
    output.add_argument("--device", default="cpu", help="device of the feature encoders (cpu, cuda, ...)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    args = parser.parse_args(argv)
    spec = CatalogueSpec(
        interactions=args.interactions, items=args.items, name=args.name, text_columns=_column_list(args.text_columns),
        image_column=_optional_column(args.image_column), image_root=args.image_root,
        image_encoder=args.image_encoder, user_column=args.user_column, item_column=args.item_column,
        time_column=_optional_column(args.time_column), rating_column=_optional_column(args.rating_column),
        min_rating=args.min_rating, item_id_column=_optional_column(args.item_id_column), sep=args.sep,
        split=args.split, seed=args.seed, min_user=args.min_user, min_item=args.min_item, dedupe=args.dedupe,
        drop_unknown_items=args.drop_unknown_items, device=args.device)
    target = dataset_root() / check_dataset_name(spec.name, "shop")
    manifest = prepare_catalogue(spec, target, overwrite=args.overwrite)
    print("\n".join(summary_lines(manifest, target, spec.name)))
    return 0
