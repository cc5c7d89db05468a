"""Readable item labels for recommendations: one column of the dataset's ``<dataset>.item`` atomic file.

The rebuilt dataset of a checkpoint often does not load that file (ml-100k's ``load_col`` reads only the
interactions), so the column is read from disk here, by item token, whatever the run loaded. By default the first
text column whose name says it is a title (``movie_title``, ``title``) or else a name is shown; ``--show-field``
chooses another column, ``none`` shows none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recbole_ext.errors import UserError

NO_FIELD = "none"
TEXT_TYPES = ("token", "token_seq")
LABEL_WORDS = ("title", "name")  # in this order: a movie_title beats a director_name


@dataclass
class ItemLabels:
    field: str               # the .item column shown
    by_token: dict[str, str]  # item token -> its text ('' where the file has no row)

    def of(self, items) -> list[str]:
        return [self.by_token.get(str(item), "") for item in items]


def item_file(config: dict) -> Path | None:
    """``<data_path>/<dataset>.item`` of a run's config, None when the dataset has none."""
    data_path, name = config.get("data_path"), config.get("dataset")
    if not data_path or not name:
        return None
    path = Path(str(data_path)) / f"{name}.item"
    return path if path.is_file() else None


def _header(path: Path, separator: str, encoding: str) -> list[tuple[str, str]]:
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        first = fh.readline().rstrip("\r\n")
    columns = []
    for cell in first.split(separator):
        name, _, kind = cell.partition(":")
        columns.append((name.strip(), kind.strip()))
    return columns


def default_field(columns: list[tuple[str, str]], id_field: str) -> str | None:
    """The first text column named like a title, else like a name; None if there is none."""
    text = [name for name, kind in columns if kind in TEXT_TYPES and name != id_field]
    for word in LABEL_WORDS:
        for name in text:
            if word in name.lower():
                return name
    return None


def item_labels(config: dict, field: str | None = None) -> ItemLabels | None:
    """The labels of the run's items from column ``field`` of its ``.item`` file (the default pick when None).

    None when nothing is to be shown (no file, no title-like column, ``field == 'none'``); a named ``field`` the
    file lacks is a UserError listing the columns it has."""
    if field == NO_FIELD:
        return None
    path = item_file(config)
    if path is None:
        if field is not None:
            raise UserError(f"--show-field {field}: dataset {config.get('dataset')} has no .item file with item "
                            "features", fix="leave --show-field out")
        return None
    separator = str(config.get("field_separator") or "\t")
    encoding = str(config.get("encoding") or "utf-8")
    id_field = str(config.get("ITEM_ID_FIELD") or "item_id")
    columns = _header(path, separator, encoding)
    names = [name for name, _ in columns]
    if field is None:
        field = default_field(columns, id_field)
        if field is None:
            return None
    elif field not in names or field == id_field:
        shown = ", ".join(n for n in names if n != id_field) or "none"
        raise UserError(f"--show-field {field}: {path} has no such column (it has: {shown})",
                        fix="name one of those columns, or --show-field none")
    if id_field not in names:
        raise UserError(f"{path} has no {id_field} column", fix="the .item file must name its items")
    id_col, field_col = names.index(id_field), names.index(field)
    labels = {}
    with open(path, encoding=encoding, errors="replace", newline="") as fh:
        next(fh, None)  # the header
        for line in fh:  # RecBole's own reading: split on the separator, no quoting
            row = line.rstrip("\r\n").split(separator)
            if len(row) > max(id_col, field_col):
                labels.setdefault(row[id_col].strip(), row[field_col].strip())
    return ItemLabels(field, labels)
