"""The preprocessing steps shared by every multimodal preparer that starts from raw interactions.

``prepare amazon`` (raw Amazon review files), ``prepare catalogue`` (a user's own tables) and ``prepare ml-100k-mm``
all run the same chain, MMRec's published preprocessing (github.com/enoche/MMRec, ``preprocessing/``):

1. ``filter_min_rating``  keep rows rated at least a threshold (off by default: MMRec keeps every rating);
2. ``drop_duplicates``    MMRec drops rows repeating (user, item, timestamp) and keeps the first;
3. ``kcore_filter``       drop users and items with fewer than k interactions, repeated until nothing changes;
4. ``reindex``            users and items numbered 0.. in order of first appearance (MMRec's ``pd.unique``);
5. ``assign_split``       MMRec's per-user random x_label split (seeded here; MMRec's shuffle is not), or
                          leave-last-out, or global-time;
6. the caller builds one feature row per reindexed item (``fill_missing_rows`` gives items without an image the
   mean row, MMRec's rule);
7. ``write_prepared``     writes the MMRec folder atomically with the id maps and a manifest of inputs, options
   and every count dropped at each step (``PrepLog``).

Interactions are held as int codes into token arrays (``InteractionTable``), so a table of millions of rows costs a
few int64 columns, not a Python object per row. Only numpy and pandas here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.mmrec_format import MANIFEST_NAME, MODALITIES, check_finite_rows, write_mm_folder
from recbole_ext.errors import UserError
from recbole_ext.utils.hashing import file_sha256
from recbole_ext.utils.io import atomic_dir
from recbole_ext.utils.segments import positions_in_segments

SPLIT_METHODS = ("mmrec", "leave-last-out", "global-time")
DEDUPE_POLICIES = ("timestamp", "pair", "none")
MIN_SPLIT_INTERACTIONS = 3  # a user needs one row each for train, valid and test
ID_MAP_FILES = {"user": "u_id_mapping.tsv", "item": "i_id_mapping.tsv"}  # MMRec's names, tab-separated


@dataclass
class InteractionTable:
    """One row per interaction; ``user``/``item`` are int64 codes into the token arrays of original ids."""

    user: np.ndarray
    item: np.ndarray
    user_tokens: np.ndarray
    item_tokens: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    @classmethod
    def from_tokens(cls, users, items, rating=None, timestamp=None) -> "InteractionTable":
        """Factorize the id columns in order of first appearance."""
        user_codes, user_tokens = pd.factorize(pd.Series(users, dtype=object).astype(str), sort=False)
        item_codes, item_tokens = pd.factorize(pd.Series(items, dtype=object).astype(str), sort=False)
        return cls(user_codes.astype(np.int64), item_codes.astype(np.int64),
                   np.asarray(user_tokens, dtype=object), np.asarray(item_tokens, dtype=object),
                   None if rating is None else np.asarray(rating, dtype=np.float64),
                   None if timestamp is None else np.asarray(timestamp, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.user)

    def take(self, rows: np.ndarray) -> "InteractionTable":
        """The rows selected by a boolean mask or an index array; the token arrays are kept as they are."""
        pick = (lambda a: None if a is None else a[rows])
        return InteractionTable(self.user[rows], self.item[rows], self.user_tokens, self.item_tokens,
                                pick(self.rating), pick(self.timestamp))

    def n_users(self) -> int:
        return int(len(np.unique(self.user)))

    def n_items(self) -> int:
        return int(len(np.unique(self.item)))


@dataclass
class PrepLog:
    """What each step kept and dropped, in order; stored in the manifest and printed by the preparers."""

    steps: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, step: str, table: InteractionTable, dropped: int = 0, **detail) -> None:
        entry = {"step": step, "interactions": len(table), "users": table.n_users(), "items": table.n_items(),
                 "dropped_interactions": int(dropped)}
        entry.update({k: (int(v) if isinstance(v, (np.integer, bool)) else v) for k, v in detail.items()})
        self.steps.append(entry)

    def count(self, name: str, value: int) -> None:
        self.counts[name] = int(value)

    def as_dict(self) -> dict:
        return {"steps": list(self.steps), "counts": dict(self.counts)}


def filter_min_rating(table: InteractionTable, min_rating: float | None, log: PrepLog) -> InteractionTable:
    """Keep rows rated ``>= min_rating`` (implicit feedback from explicit ratings); ``None`` keeps every row."""
    if min_rating is None:
        return table
    if table.rating is None:
        raise UserError(f"a rating threshold ({min_rating}) was given but the interactions have no rating column",
                        fix="name the rating column, or drop the threshold")
    keep = table.rating >= float(min_rating)
    if not keep.any():
        raise UserError(f"no interaction is left after the rating threshold (rating >= {float(min_rating)}): no "
                        f"rating in the {len(table)} interactions is {float(min_rating):g} or more",
                        fix="lower the rating threshold (--min-rating)")
    out = table.take(keep)
    log.record("min_rating", out, dropped=int((~keep).sum()), min_rating=float(min_rating))
    return out


def drop_duplicates(table: InteractionTable, log: PrepLog, policy: str = "timestamp") -> InteractionTable:
    """``timestamp`` (MMRec): drop rows repeating (user, item, timestamp), keep the first; ``pair``: one row per
    (user, item), the earliest (ties: the first in file order); ``none``: keep all."""
    if policy not in DEDUPE_POLICIES:
        raise UserError(f"unknown duplicate policy {policy!r}", fix=f"use one of {', '.join(DEDUPE_POLICIES)}")
    if policy == "none":
        return table
    frame = pd.DataFrame({"u": table.user, "i": table.item})
    if policy == "timestamp":
        frame["t"] = table.timestamp if table.timestamp is not None else 0.0
        keep = ~frame.duplicated(keep="first").to_numpy()
    else:
        order = (np.argsort(table.timestamp, kind="stable") if table.timestamp is not None
                 else np.arange(len(table)))
        first = ~frame.iloc[order].duplicated(subset=["u", "i"], keep="first").to_numpy()
        keep = np.zeros(len(table), dtype=bool)
        keep[order[first]] = True
    out = table.take(keep)
    log.record("drop_duplicates", out, dropped=int((~keep).sum()), policy=policy)
    return out


def kcore_filter(table: InteractionTable, log: PrepLog, min_user: int = 5, min_item: int = 5) -> InteractionTable:
    """Drop users with fewer than ``min_user`` and items with fewer than ``min_item`` interactions, repeated until
    every remaining user and item qualifies (each round counts on the rows the previous round kept, as MMRec)."""
    if min_user < 1 or min_item < 1:
        raise UserError(f"k-core thresholds must be >= 1 (got users {min_user}, items {min_item})",
                        fix="use 1 to switch a side's filter off")
    keep = np.ones(len(table), dtype=bool)
    rounds = 0
    while True:
        users, items = table.user[keep], table.item[keep]
        user_counts = np.bincount(users, minlength=len(table.user_tokens))
        item_counts = np.bincount(items, minlength=len(table.item_tokens))
        bad = (user_counts[table.user] < min_user) | (item_counts[table.item] < min_item)
        bad &= keep
        if not bad.any():
            break
        keep &= ~bad
        rounds += 1
    out = table.take(keep)
    log.record("kcore", out, dropped=int((~keep).sum()), min_user=min_user, min_item=min_item, rounds=rounds)
    if len(out) == 0:
        raise UserError(f"no interaction is left after the {min_user}-core (users) / {min_item}-core (items) filter "
                        f"({len(table)} interactions before it): {_emptying_filter(table, min_user, min_item)}",
                        fix="lower --min-user / --min-item, or supply more interactions")
    return out


def _emptying_filter(table: InteractionTable, min_user: int, min_item: int) -> str:
    """Which part of the k-core left nothing, for its error message."""
    if len(table) == 0:
        return "there was none to filter"
    for side, codes, k in (("user", table.user, min_user), ("item", table.item, min_item)):
        most = int(np.bincount(codes).max())
        if most < k:
            return (f"the {side} filter of the k-core leaves no interaction: no {side} has {k} or more (the most any "
                    f"{side} has is {most})")
    return "each filter alone keeps some, but applying the user and item filters in turn removes every interaction"


def reindex(table: InteractionTable) -> InteractionTable:
    """Renumber users and items 0.. in order of first appearance, dropping tokens no row uses."""
    user_codes, user_uniques = pd.factorize(table.user, sort=False)
    item_codes, item_uniques = pd.factorize(table.item, sort=False)
    return InteractionTable(user_codes.astype(np.int64), item_codes.astype(np.int64),
                            table.user_tokens[user_uniques], table.item_tokens[item_uniques],
                            table.rating, table.timestamp)


def mmrec_split_labels(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MMRec's 1splitting.ipynb: rows shuffled, grouped by user; a user with n < 10 rows sends the last two to valid
    and test, otherwise int(0.2 n) rows to valid + test, half (rounded down) to valid."""
    order = rng.permutation(len(users))
    order = order[np.argsort(users[order], kind="stable")]  # grouped by user, random inside each user
    counts = np.bincount(users[order])
    counts = counts[counts > 0]
    rank = positions_in_segments(counts)
    n = np.repeat(counts, counts)
    val_test = np.where(n < 10, 2, n // 5)
    n_valid = np.where(n < 10, 1, val_test // 2)
    n_train = n - val_test
    sorted_labels = np.where(rank < n_train, 0, np.where(rank < n_train + n_valid, 1, 2))
    labels = np.empty(len(users), dtype=np.int64)
    labels[order] = sorted_labels
    return labels


def _leave_last_out_labels(users: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Per user by time (ties in file order): the last row to test, the one before to valid, the rest to train."""
    order = np.lexsort((np.arange(len(users)), timestamp, users))
    counts = np.bincount(users[order])
    counts = counts[counts > 0]
    from_end = np.repeat(counts, counts) - 1 - positions_in_segments(counts)
    labels = np.empty(len(users), dtype=np.int64)
    labels[order] = np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0))
    return labels


def _global_time_labels(timestamp: np.ndarray, ratios) -> np.ndarray:
    """MMRec's 0rating2inter.ipynb: cut the whole timeline at the quantiles of the cumulative ratios."""
    cuts = np.quantile(timestamp, np.cumsum(ratios)[:-1])
    return np.where(timestamp < cuts[0], 0, np.where(timestamp < cuts[1], 1, 2)).astype(np.int64)


def assign_split(table: InteractionTable, method: str = "mmrec", seed: int = 2023, ratios=(0.8, 0.1, 0.1),
                 log: PrepLog | None = None) -> np.ndarray:
    """x_label 0 (train) / 1 (valid) / 2 (test) per row.

    Per-user methods keep users with fewer than 3 interactions entirely in train (counted as
    ``users_too_short_to_split``): MMRec never meets them after its 5-core, and its rule would give them no
    training row. The global-time split cuts the timeline, so it has no such rule.
    """
    if method not in SPLIT_METHODS:
        raise UserError(f"unknown split {method!r}", fix=f"use one of {', '.join(SPLIT_METHODS)}")
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.shape != (3,) or (ratios <= 0).any():
        raise UserError(f"split ratios must be three positive numbers (got {ratios.tolist()})", fix="e.g. 0.8,0.1,0.1")
    ratios = ratios / ratios.sum()
    needs_time = method != "mmrec"
    if needs_time and table.timestamp is None:
        raise UserError(f"the {method} split needs timestamps and the interactions have none",
                        fix="name the timestamp column, or use --split mmrec")
    if method == "global-time":
        labels = _global_time_labels(table.timestamp, ratios)
    else:
        if method == "mmrec":
            labels = mmrec_split_labels(table.user, np.random.default_rng(seed))
        else:
            labels = _leave_last_out_labels(table.user, table.timestamp)
        per_user = np.bincount(table.user)
        short = per_user[table.user] < MIN_SPLIT_INTERACTIONS
        labels[short] = 0
        if log is not None:
            log.count("users_too_short_to_split", int((per_user[per_user > 0] < MIN_SPLIT_INTERACTIONS).sum()))
    if log is not None:
        for value, name in ((0, "train"), (1, "valid"), (2, "test")):
            log.count(f"split_{name}", int((labels == value).sum()))
    for value, name in ((0, "training"), (1, "validation"), (2, "test")):
        if not (labels == value).any():
            raise UserError(f"the {method} split left no {name} interaction ({len(table)} interactions)",
                            fix="supply more interactions per user, or choose another --split")
    return labels


def fill_missing_rows(matrix: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows where ``ok`` is False get the mean of the rows where it is True (MMRec's rule for missing images)."""
    matrix = np.asarray(matrix, dtype=np.float32).copy()
    ok = np.asarray(ok, dtype=bool)
    if ok.shape != (matrix.shape[0],):
        raise ValueError(f"ok has shape {ok.shape}, matrix has {matrix.shape[0]} rows")
    n_missing = int((~ok).sum())
    if n_missing == len(ok):
        raise UserError("no item has a feature row to fill the missing ones from",
                        fix="supply features for at least one item")
    if n_missing:
        matrix[~ok] = matrix[ok].astype(np.float64).mean(axis=0).astype(np.float32)
    return matrix, n_missing


def _inputs_provenance(inputs: dict[str, Path]) -> dict:
    out = {}
    for role, path in inputs.items():
        path = Path(path)
        if path.is_file():
            out[role] = {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        elif path.is_dir():  # an image folder: the images used are hashed by the feature cache
            out[role] = {"path": str(path.resolve()), "folder": True}
    return out


def write_prepared(target: Path, name: str, table: InteractionTable, x_label: np.ndarray,
                   features: dict[str, np.ndarray], *, log: PrepLog, options: dict, inputs: dict[str, Path],
                   source: str, encoders: dict | None = None, overwrite: bool = False,
                   feature_dtype: str | None = None, extra_files: dict[str, str] | None = None) -> dict:
    """Validate the features against the reindexed table, then write the MMRec folder atomically.

    Besides ``write_mm_folder``'s files the folder holds ``u_id_mapping.tsv`` / ``i_id_mapping.tsv`` (original id,
    MMRec id), and the manifest's provenance records the inputs' sha256, the options, the step log and the
    encoders. ``extra_files`` (file name -> text) are written into the same folder before it appears (a preparer's
    own side files, such as MMRec's ``missed_img_itemIDs.csv``). Returns the manifest.
    """
    target = Path(target)
    n_items = len(table.item_tokens)
    if len(table) == 0:
        raise UserError("no interaction to write", fix="check the filters")
    if int(table.item.max()) + 1 != n_items or int(table.user.max()) + 1 != len(table.user_tokens):
        raise ValueError("write_prepared needs a reindexed table (call reindex first)")
    x_label = np.asarray(x_label, dtype=np.int64)
    if x_label.shape != (len(table),):
        raise ValueError(f"x_label has shape {x_label.shape}; the table has {len(table)} rows")
    missing = [m for m in MODALITIES if m not in features]
    if missing:
        raise ValueError(f"features lack modality {missing}")
    for modality in MODALITIES:
        arr = features[modality]
        if arr.ndim != 2 or arr.shape[0] != n_items:
            raise ValueError(f"{modality} features have shape {arr.shape}; expected [{n_items}, dim]")
        check_finite_rows(arr, Path(f"{modality} features"), tokens=table.item_tokens)

    inter = pd.DataFrame({"userID": table.user, "itemID": table.item})
    if table.rating is not None:
        inter["rating"] = table.rating
    if table.timestamp is not None:
        inter["timestamp"] = table.timestamp
    inter["x_label"] = x_label
    provenance = {"source": source, "inputs": _inputs_provenance(inputs), "options": options,
                  "preprocessing": log.as_dict(), "encoders": encoders or {}}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        manifest = write_mm_folder(tmp, name, inter, n_items, features, provenance, feature_dtype=feature_dtype)
        for side, tokens in (("user", table.user_tokens), ("item", table.item_tokens)):
            pd.DataFrame({f"original_{side}_id": tokens, f"{side}ID": np.arange(len(tokens))}).to_csv(
                tmp / ID_MAP_FILES[side], sep="\t", index=False)
        manifest["id_maps"] = dict(ID_MAP_FILES)
        for file_name, text in (extra_files or {}).items():
            (tmp / file_name).write_text(text)
        if extra_files:
            manifest["extra_files"] = sorted(extra_files)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
