"""Streaming readers of the raw Amazon review files (McAuley et al.'s 2014 and 2018 releases).

What the files look like, and how each is read:

* **Reviews** (``reviews_<Cat>[_5].json.gz`` 2014, ``<Cat>[_5].json.gz`` 2018): one JSON object per line with
  ``reviewerID``, ``asin``, ``overall`` (rating) and ``unixReviewTime`` (plus text fields we never keep). A line
  that is not strict JSON is tried as a Python literal (``ast.literal_eval``, never ``eval``), so the loose 2014
  style works too. Only four values per line are kept: the user and item as int codes through a token -> code
  dict, the rating and the time in array-backed columns; a 10 GB file costs its distinct ids plus 32 bytes a
  review, never a Python object per review.
* **Ratings only** (``ratings_<Cat>.csv``): ``user,item,rating,timestamp`` without header (2014; 2018's
  ``<Cat>.csv`` is ``item,user,rating,timestamp``): read in pandas chunks; the column order is detected from which
  column holds ASIN-shaped ids, or given.
* **Meta** (``meta_<Cat>.json.gz``): 2014 lines are Python literals (single quotes, ``categories`` a list of
  category paths), 2018 lines strict JSON (``category`` one flat path, ``description`` a list of strings). Only
  the records of wanted items are parsed: a regular expression finds the ``asin`` value first, and a line whose
  ASIN is not wanted is skipped unparsed (most of a category's meta file).
* **Image features** (``image_features_<Cat>.b``, 2014): back-to-back records of a 10-byte ASCII ASIN and 4096
  little-endian float32 values, read in blocks of records as a numpy structured array.

Gzip is recognised by its magic bytes, not the file name. Every failure is a one-line ``UserError`` naming the file
and, for a text file, the line.
"""
from __future__ import annotations

import ast
import contextlib
import gzip
import json
import math
import os
import re
import sys
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.prepare.mm_build import InteractionTable
from recbole_ext.errors import UserError
from recbole_ext.utils.console import is_terminal

GZIP_MAGIC = b"\x1f\x8b"
ASIN_BYTES = 10
IMAGE_DIM = 4096
IMAGE_RECORD = np.dtype([("asin", f"S{ASIN_BYTES}"), ("feature", "<f4", (IMAGE_DIM,))])  # packed: 16,394 bytes
RATINGS_FORMATS = ("auto", "user-item", "item-user")
# ASINs are 10 characters: 'B' + 9 letters/digits, or an ISBN-10 for books; reviewer ids start with 'A' and are
# longer, so the share of ASIN-shaped values tells the columns of a ratings CSV apart.
_ASIN_SHAPE = re.compile(r"^(?:B[0-9A-Z]{9}|[0-9]{9}[0-9X])$")
# The "asin": "X" pair of a meta line in either quoting; a string value cannot hold this pattern unescaped in
# strict JSON, and a false hit in loose text only costs a full parse, since the parsed record's own asin decides.
_META_ASIN = re.compile(rb"""["']asin["']\s*:\s*["']([^"'\\]+)["']""")
_PROGRESS_EVERY = 1 << 16  # lines between two updates of the progress bar


def require_file(path: str | Path, what: str, fix: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file",
                        fix=fix)
    return path


@contextlib.contextmanager
def open_lines(path: Path, desc: str):
    """Yield an iterator of the file's lines as bytes, gunzipped when the file starts with gzip's magic bytes, and
    a progress bar over the compressed bytes read when stderr is a terminal."""
    raw = open(path, "rb")
    try:
        gzipped = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        bar = None
        if is_terminal(sys.stderr):
            from tqdm import tqdm  # comes with RecBole
            bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                       file=sys.stderr, leave=False)

        def lines():
            done = 0
            for lineno, line in enumerate(stream, 1):
                if bar is not None and lineno % _PROGRESS_EVERY == 0:
                    position = raw.tell()
                    bar.update(position - done)
                    done = position
                yield line

        try:
            yield lines()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise UserError(f"{path} cannot be read to the end: {exc}",
                            fix="the file is damaged or truncated; download it again") from None
        finally:
            if bar is not None:
                bar.close()
    finally:
        raw.close()


def parse_record(line: bytes, path: Path, lineno: int, what: str) -> dict:
    """One JSON object, or (2014's loose style) one Python dict literal; anything else names the line."""
    try:
        record = json.loads(line)
    except ValueError:
        try:
            record = ast.literal_eval(line.decode("utf-8").strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError, TypeError):
            record = None
    if not isinstance(record, dict):
        shown = line[:60].decode("utf-8", "backslashreplace").strip()
        raise UserError(f"line {lineno} of {path} is not a JSON {what} record: {shown!r}",
                        fix=f"pass the Amazon {what} file (one JSON object per line, gzip or plain)")
    return record


class TokenCodes:
    """Original id -> int code, in order of first appearance (the order pandas' factorize would give)."""

    def __init__(self):
        self.codes: dict[str, int] = {}

    def code(self, token: str) -> int:
        found = self.codes.get(token)
        if found is None:
            found = self.codes[token] = len(self.codes)
        return found

    def codes_of(self, tokens: pd.Series) -> np.ndarray:
        """Codes of a chunk of tokens: one dict look-up per distinct token, not per row."""
        uniques = pd.unique(tokens)
        mapped = np.fromiter((self.code(t) for t in uniques), dtype=np.int64, count=len(uniques))
        return mapped[pd.Index(uniques).get_indexer(tokens)]

    def tokens(self) -> np.ndarray:
        return np.array(list(self.codes), dtype=object)  # a dict keeps insertion order = code order


@dataclass
class ReadStats:
    """What a reader saw and dropped (the preparer copies it into the manifest's step log)."""

    kind: str = "reviews"
    lines: int = 0
    missing_id_or_time: int = 0  # MMRec drops rows without user, item or timestamp
    missing_rating: int = 0
    detail: dict = field(default_factory=dict)


def _as_number(value, path: Path, lineno: int, key: str) -> float:
    """A rating or time as float: numbers and numeric strings; None for a missing or empty value."""
    if value is None or value == "":
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"line {lineno} of {path}: {key} is {value!r}, not a number",
                        fix="pass an unmodified Amazon reviews file") from None
    return number


def read_reviews(path: Path, ratings_format: str = "auto") -> tuple[InteractionTable, ReadStats]:
    """Stream a reviews JSON-lines file or a ratings CSV into an InteractionTable (rows in file order).

    Rows without a user, item or timestamp are dropped (MMRec's ``dropna``), and so are rows without a rating
    (MMRec keeps them with an empty rating, which its own reader ignores; the .inter format here needs a number).
    """
    with open_lines(path, "reviews") as lines:
        lineno, first = next(((n, line) for n, line in enumerate(lines, 1) if line.strip()), (0, b""))
    if not first:
        raise UserError(f"{path} holds no review", fix="pass the Amazon reviews file (JSON lines) or ratings CSV")
    if first.lstrip().startswith(b"{"):
        return _read_review_json(path)
    if first.count(b",") == 3:
        return _read_ratings_csv(path, ratings_format)
    shown = first[:60].decode("utf-8", "backslashreplace").strip()
    raise UserError(f"line {lineno} of {path} is neither a JSON review record nor a ratings CSV row: {shown!r}",
                    fix="pass the Amazon reviews file (one JSON object per line) or a ratings CSV "
                        "(user,item,rating,timestamp), gzip or plain")


def _read_review_json(path: Path) -> tuple[InteractionTable, ReadStats]:
    users, items = TokenCodes(), TokenCodes()
    user_col, item_col, rating_col, time_col = array("q"), array("q"), array("d"), array("d")
    stats = ReadStats(kind="reviews-json")
    isnan = math.isnan
    with open_lines(path, "reviews") as lines:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            stats.lines += 1
            record = parse_record(line, path, lineno, "review")
            user, item = record.get("reviewerID"), record.get("asin")
            when = _as_number(record.get("unixReviewTime"), path, lineno, "unixReviewTime")
            if user is None or item is None or user == "" or item == "" or isnan(when):
                stats.missing_id_or_time += 1
                continue
            rating = _as_number(record.get("overall"), path, lineno, "overall")
            if isnan(rating):
                stats.missing_rating += 1
                continue
            user_col.append(users.code(user if type(user) is str else str(user)))
            item_col.append(items.code(item if type(item) is str else str(item)))
            rating_col.append(rating)
            time_col.append(when)
    # views of the arrays' own buffers (writable, never resized again): no second copy of the columns
    table = InteractionTable(np.frombuffer(user_col, dtype=np.int64), np.frombuffer(item_col, dtype=np.int64),
                             users.tokens(), items.tokens(), np.frombuffer(rating_col, dtype=np.float64),
                             np.frombuffer(time_col, dtype=np.float64))
    return table, stats


def _detect_ratings_order(path: Path, sample: pd.DataFrame) -> str:
    shares = [sample[c].astype(str).str.match(_ASIN_SHAPE).mean() for c in (0, 1)]
    if abs(shares[0] - shares[1]) < 0.5:
        raise UserError(f"cannot tell the user column from the item column of {path} (ASIN-shaped ids: "
                        f"{shares[0]:.0%} of column 1, {shares[1]:.0%} of column 2)",
                        fix="pass --ratings-format user-item (2014: user,item,rating,timestamp) or item-user "
                            "(2018: item,user,rating,timestamp)")
    return "item-user" if shares[0] > shares[1] else "user-item"


def _read_ratings_csv(path: Path, ratings_format: str) -> tuple[InteractionTable, ReadStats]:
    if ratings_format not in RATINGS_FORMATS:
        raise UserError(f"unknown ratings format {ratings_format!r}", fix=f"use one of {', '.join(RATINGS_FORMATS)}")
    users, items = TokenCodes(), TokenCodes()
    user_parts, item_parts, rating_parts, time_parts = [], [], [], []
    stats = ReadStats(kind="ratings-csv")
    order = None if ratings_format == "auto" else ratings_format
    fix = "a ratings file has four comma-separated fields per line: user,item,rating,timestamp (or item,user,...)"
    try:
        chunks = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, chunksize=1 << 20,
                             compression="gzip" if _is_gzip(path) else None, on_bad_lines="error",
                             skip_blank_lines=True, engine="c")
        line_base = 0
        for chunk in chunks:
            if chunk.shape[1] != 4:
                raise UserError(f"{path} has {chunk.shape[1]} fields per line, not 4; it is neither a JSON reviews "
                                "file nor a ratings CSV", fix=fix)
            if line_base == 0 and not _numeric(chunk.iloc[0, 2]) and not _numeric(chunk.iloc[0, 3]):
                chunk = chunk.iloc[1:]  # a header line
                line_base = 1
            if order is None:
                order = _detect_ratings_order(path, chunk.head(10_000))
                stats.detail["ratings_format"] = order
            user_at, item_at = (0, 1) if order == "user-item" else (1, 0)
            rating = pd.to_numeric(chunk[2], errors="coerce").to_numpy(np.float64)
            when = pd.to_numeric(chunk[3], errors="coerce").to_numpy(np.float64)
            for values, column in ((rating, 2), (when, 3)):
                bad = np.isnan(values) & (chunk[column].to_numpy() != "")
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise UserError(f"line {line_base + row + 1} of {path}: field {column + 1} is "
                                    f"{chunk.iloc[row, column]!r}, not a number", fix=fix)
            user, item = chunk[user_at].to_numpy(), chunk[item_at].to_numpy()
            has_ids = (user != "") & (item != "") & ~np.isnan(when)
            stats.missing_id_or_time += int((~has_ids).sum())
            keep = has_ids & ~np.isnan(rating)
            stats.missing_rating += int((has_ids & np.isnan(rating)).sum())
            stats.lines += len(chunk)
            line_base += len(chunk)
            user_parts.append(users.codes_of(pd.Series(user[keep])))
            item_parts.append(items.codes_of(pd.Series(item[keep])))
            rating_parts.append(rating[keep])
            time_parts.append(when[keep])
    except pd.errors.ParserError as exc:
        raise UserError(f"{path} is neither a JSON reviews file nor a ratings CSV: {exc}".strip(), fix=fix) from None
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise UserError(f"{path} cannot be read as text: {exc}", fix=fix) from None
    if not user_parts:
        raise UserError(f"{path} holds no rating", fix=fix)
    table = InteractionTable(np.concatenate(user_parts), np.concatenate(item_parts), users.tokens(), items.tokens(),
                             np.concatenate(rating_parts), np.concatenate(time_parts))
    return table, stats


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def iter_meta(path: Path, wanted: dict[str, int]):
    """Yield ``(code, record)`` for each meta line whose asin is a key of ``wanted``, in file order (a repeated
    asin is yielded again: the caller keeps the first). Lines of other items are not parsed."""
    with open_lines(path, "meta") as lines:
        for lineno, line in enumerate(lines, 1):
            hits = [m.group(1) for m in _META_ASIN.finditer(line)]
            if not any(h.decode("ascii", "replace") in wanted for h in hits):
                continue
            record = parse_record(line, path, lineno, "meta")
            asin = record.get("asin")
            code = wanted.get(asin) if isinstance(asin, str) else None
            if code is not None:
                yield code, record


def _filled(value) -> str:
    """MMRec fills a missing title, brand or description with ' ' (its CSV round trip also turns '' into a
    missing value); a list (2018's description) is joined with spaces."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value if v is not None)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return " "
    text = str(value)
    return text if text else " "


def category_path(record: dict) -> list[str]:
    """The category words MMRec adds: 2014's ``categories[0]`` (the first category path), or 2018's flat
    ``category`` list; a flat 2014-style list of strings counts as one path; none when absent or empty."""
    categories = record.get("categories")
    if isinstance(categories, list) and categories:
        first = categories[0]
        path = first if isinstance(first, list) else categories
    else:
        path = record.get("category")
    if not isinstance(path, list):
        return []
    return [str(c) for c in path if c is not None]


def item_sentence(record: dict) -> str:
    """MMRec's 3feat-encoder.ipynb: title + ' ' + brand + ' ' + each category word followed by ' ', then the
    description; missing fields are ' '; newlines become spaces."""
    sentence = _filled(record.get("title")) + " " + _filled(record.get("brand")) + " "
    sentence += "".join(c + " " for c in category_path(record))
    sentence += _filled(record.get("description"))
    return sentence.replace("\n", " ")


@dataclass
class ImageRecords:
    """Rows of the .b file matched to wanted items."""

    features: np.ndarray      # float32 [n_items, 4096]: the last matching record per item (MMRec's dict), or first
    found: np.ndarray         # bool [n_items]
    mean_all_records: np.ndarray  # float64 [4096]: mean over every matched record, repeats included (MMRec)
    records: int = 0          # records in the file
    matched_records: int = 0  # records whose asin is a wanted item (repeats included)
    repeated_items: int = 0   # wanted items with more than one record


def read_image_features(path: Path, wanted: dict[str, int], n_items: int, keep: str = "last",
                        block_records: int = 256) -> ImageRecords:
    """Stream an Amazon 2014 ``image_features_<Cat>.b`` file, keeping the records of wanted items.

    ``keep``: which record of an item listed twice gives its row: ``last`` (MMRec fills a dict record by record)
    or ``first``.
    """
    size = path.stat().st_size
    if size % IMAGE_RECORD.itemsize:
        raise UserError(f"{path} is {size} bytes, not a whole number of records of {IMAGE_RECORD.itemsize} bytes "
                        f"(a {ASIN_BYTES}-byte ASIN + {IMAGE_DIM} float32)",
                        fix="pass an unmodified Amazon 2014 image_features_<Category>.b file")
    features = np.zeros((n_items, IMAGE_DIM), dtype=np.float32)
    found = np.zeros(n_items, dtype=bool)
    seen = np.zeros(n_items, dtype=np.int64)
    total = np.zeros(IMAGE_DIM, dtype=np.float64)
    out = ImageRecords(features, found, total)
    with open(path, "rb") as handle:
        while True:
            block = handle.read(IMAGE_RECORD.itemsize * block_records)
            if not block:
                break
            records = np.frombuffer(block, dtype=IMAGE_RECORD)
            rows, codes = [], []
            for offset, raw_asin in enumerate(records["asin"]):
                try:
                    asin = raw_asin.decode("ascii")
                except UnicodeDecodeError:
                    raise UserError(f"{path}: record {out.records + offset + 1} does not start with an ASCII ASIN "
                                    f"({raw_asin!r})", fix="pass an unmodified Amazon 2014 image_features_<Category>.b "
                                                           "file") from None
                code = wanted.get(asin)
                if code is not None:
                    rows.append(offset)
                    codes.append(code)
            if rows:
                matched = records["feature"][rows]
                finite = np.isfinite(matched).all(axis=1)
                if not finite.all():
                    bad = rows[int(np.flatnonzero(~finite)[0])]
                    raise UserError(f"{path}: record {out.records + bad + 1} (ASIN "
                                    f"{records['asin'][bad].decode('ascii')}) holds NaN or infinite values",
                                    fix="pass an unmodified Amazon 2014 image_features_<Category>.b file")
                total += matched.sum(axis=0, dtype=np.float64)
                codes = np.asarray(codes, dtype=np.int64)
                for row, code in zip(matched, codes):  # in file order, so "last" keeps the last record
                    if keep == "last" or not found[code]:
                        features[code] = row
                    found[code] = True
                np.add.at(seen, codes, 1)
                out.matched_records += len(rows)
            out.records += len(records)
    out.repeated_items = int((seen > 1).sum())
    if out.matched_records:
        out.mean_all_records = total / out.matched_records
    return out


def find_image_files(folder: Path, asins: np.ndarray, extensions: tuple[str, ...]) -> list[Path | None]:
    """``<asin>.<ext>`` in ``folder`` for each asin (None where there is none); with several extensions for one
    asin the earliest in ``extensions`` wins, so the choice does not depend on the listing order."""
    rank = {ext: i for i, ext in enumerate(extensions)}
    best: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, dot, ext = entry.name.rpartition(".")
            order = rank.get(ext.lower()) if dot else None
            if order is None or not entry.is_file():
                continue
            if stem not in best or order < best[stem][0]:
                best[stem] = (order, Path(entry.path))
    return [best[a][1] if a in best else None for a in asins]
