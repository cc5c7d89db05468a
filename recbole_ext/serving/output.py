"""``recommend --out FILE``: every result as rows in one file, the format chosen by the suffix.

``.csv`` and ``.jsonl`` need nothing beyond the standard library; ``.parquet`` needs pyarrow (or fastparquet)
through pandas, which recbole-ext does not depend on: without it the error says what to install. The file is
written atomically, so a failed or interrupted write leaves any earlier file as it was.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file

FORMATS = (".csv", ".jsonl", ".parquet")
PARQUET_ENGINES = ("pyarrow", "fastparquet")


def output_format(path) -> str:
    """The suffix of ``path`` if it is a format we write; a UserError otherwise (checked before any work)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"--out {path}: unknown format {suffix or '(no suffix)'}",
                        fix=f"end the file name with {', '.join(FORMATS)}")
    if suffix == ".parquet" and not any(importlib.util.find_spec(e) for e in PARQUET_ENGINES):
        raise UserError(f"--out {path}: writing parquet needs pyarrow, which is not installed",
                        fix="pip install pyarrow, or write .csv / .jsonl")
    return suffix


def write_rows(path, rows: list[dict], columns: list[str]) -> None:
    """Write ``rows`` (dicts holding ``columns``) to ``path`` in the format of its suffix, atomically."""
    path = Path(path)
    suffix = output_format(path)
    if suffix == ".parquet":
        import pandas as pd

        frame = pd.DataFrame(rows, columns=columns)
        with atomic_file(path, "wb") as fh:
            frame.to_parquet(fh, index=False)
        return
    with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
        if suffix == ".csv":
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        else:
            for row in rows:
                fh.write(json.dumps({c: row[c] for c in columns}) + "\n")
