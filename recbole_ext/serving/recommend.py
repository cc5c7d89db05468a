"""Serving: top-K items for users of a trained checkpoint, or a medication set for a patient.

Top-K uses the model's final vectors (see ``vectors.py``) and a FAISS index persisted beside the checkpoint
(``<checkpoint>.faiss/``, with the item id map and the checkpoint's sha256); models without final vectors are
scored densely with a logged notice. A user's training interactions are excluded unless ``keep_seen``. Every
result names items by their external tokens, with a column of the dataset's ``.item`` file beside them when it
has a title-like one (``item_features.py``).

A checkpoint is served only from a run whose ``status.json`` says complete (``run_state_note``): an interrupted,
failed or still running run's ``model.pth`` is the best epoch so far, not the run's result. A checkpoint with no
run status beside it (copied out of its run directory) is served with a warning.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import torch

from recbole_ext.errors import UserError
from recbole_ext.retrieval.index import DEFAULT_FACTORY, History, ItemIndex
from recbole_ext.retrieval.vectors import FinalVectors, final_vectors
from recbole_ext.run_status import UNKNOWN, checkpoint_status
from recbole_ext.serving.item_features import ItemLabels, item_labels
from recbole_ext.utils.paths import shown_path
from recbole_ext.utils.segments import concatenated_ranges, indptr_from_lengths

INDEX_SUFFIX = ".faiss"
ITEM_TOKENS_FILE = "item_tokens.json"


ROW_COLUMNS = ["user", "rank", "item", "score"]


@dataclass
class UserRecommendation:
    user: str
    items: list[str]
    scores: list[float]
    labels: list[str] | None = None  # each item's text from the dataset's .item file (e.g. its movie_title)
    label_field: str | None = None   # the .item column ``labels`` come from

    def as_dict(self) -> dict:
        out = {"user": self.user, "items": self.items, "scores": self.scores}
        if self.labels is not None:
            out[self.label_field] = self.labels
        return out

    def label_column(self) -> str | None:
        """The label's column in rows: its field's name unless that is one of the row's own columns."""
        if self.labels is None:
            return None
        return f"item_{self.label_field}" if self.label_field in ROW_COLUMNS else self.label_field

    def rows(self) -> list[dict]:
        """One row per recommended item: user, rank (from 1), item, score (and the label column)."""
        labels = self.labels if self.labels is not None else [None] * len(self.items)
        column = self.label_column()
        rows = []
        for rank, (item, score, label) in enumerate(zip(self.items, self.scores, labels), start=1):
            row = {"user": self.user, "rank": rank, "item": item, "score": score}
            if column:
                row[column] = label
            rows.append(row)
        return rows


@dataclass
class MedicationRecommendation:
    medications: list[str]            # recommended set, most probable first
    probabilities: list[float]        # of each recommended medication
    ddi_pairs: list[tuple[str, str]]  # every interacting pair inside the recommended set
    threshold: float
    all_probabilities: dict[str, float] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # human-readable name of each recommended code ('' if unknown)
    k: int | None = None              # at most this many (the most probable above the threshold); None: no cap

    def as_dict(self) -> dict:
        return {"medications": self.medications, "probabilities": self.probabilities, "names": self.names,
                "ddi_pairs": [list(p) for p in self.ddi_pairs], "threshold": self.threshold, "k": self.k}

    def rows(self) -> list[dict]:
        names = self.names or [""] * len(self.medications)
        return [{"rank": rank, "medication": code, "probability": prob, "name": name}
                for rank, (code, prob, name) in enumerate(zip(self.medications, self.probabilities, names), start=1)]


MEDICATION_COLUMNS = ["rank", "medication", "probability", "name"]


# --------------------------------------------------------------------------------------------- checkpoint access
@dataclass
class LoadedCheckpoint:
    path: Path
    model: torch.nn.Module
    dataset: object          # the rebuilt full dataset (id maps)
    train_dataset: object    # its training split (history mask), None for medrec
    config: dict
    task: str


def checkpoint_file(path) -> Path:
    """The checkpoint file ``path`` names: itself, or the ``model.pth`` of a run directory."""
    path = Path(path)
    if path.is_dir():  # a run directory: its checkpoint
        if not (path / "model.pth").is_file():
            raise UserError(f"{path} is a folder without a model.pth", fix="pass a run directory or its model.pth")
        path = path / "model.pth"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", fix="pass the model.pth of a finished run")
    return path


def _how_far(status: dict) -> str:
    done = status.get("epochs_done")
    return f" after {done} finished epoch{'s' if done != 1 else ''}" if isinstance(done, int) else ""


def run_state_note(checkpoint, allow_incomplete: bool = False) -> str | None:
    """Refuse a checkpoint whose run did not complete (unless ``allow_incomplete``); return the warning to show,
    if any: the run is incomplete but allowed, or there is no run status beside the checkpoint at all."""
    checkpoint = Path(checkpoint)
    status = checkpoint_status(checkpoint)
    state, run = status["state"], shown_path(checkpoint.resolve().parent)
    if state == "complete":
        return None
    if state == UNKNOWN:
        return (f"{shown_path(checkpoint)} has no run status beside it (no status.json or result.json: a checkpoint "
                "copied out of its run directory?); serving it as it is")
    why = {"interrupted": f"is interrupted (training stopped{_how_far(status)})",
           "failed": f"failed{_how_far(status)}" + (f" ({status['error']})" if status.get("error") else ""),
           "running": "is still running (or its process was killed before it could say so)"}[state]
    if allow_incomplete:
        return f"run {run} {why}: serving its best checkpoint so far, not the run's final one (--allow-incomplete)"
    resume = f"resume it with python run.py resume {run}"
    if state == "running":
        resume = f"wait for it to finish (or, if its process is gone, {resume})"
    raise UserError(f"run {run} {why}; its {checkpoint.name} is the best checkpoint so far, not the final one",
                    fix=f"{resume}, or pass --allow-incomplete")


def load_checkpoint(path) -> LoadedCheckpoint:
    """Rebuild model (eval mode), dataset and training split from a recbole-ext checkpoint (weights_only)."""
    path = checkpoint_file(path)
    from recbole_ext import quick_start

    config, model, dataset, train_data, _, _ = quick_start.load_run(path)
    plain = {key: config[key] for key in config.final_config_dict}
    model.eval()
    return LoadedCheckpoint(path, model, dataset, getattr(train_data, "_dataset", None), plain,
                            str(plain.get("task") or "general"))


# ----------------------------------------------------------------------------------------------------- top-K
def index_folder(checkpoint) -> Path:
    return Path(str(checkpoint) + INDEX_SUFFIX)


def checkpoint_index(checkpoint, vectors: FinalVectors, item_tokens, config: dict | None = None,
                     rebuild: bool = False) -> ItemIndex:
    """The FAISS index beside ``checkpoint``: loaded if its recorded hash matches, else built and saved.

    ``config`` keys ``faiss_index`` / ``faiss_nprobe`` / ``faiss_ef_search`` choose the index. A stale index (built
    from another checkpoint) is a UserError unless ``rebuild``; an index of another type is rebuilt.
    """
    config = config or {}
    factory = config.get("faiss_index") or DEFAULT_FACTORY
    folder = index_folder(checkpoint)
    if folder.exists() and not rebuild:
        index, meta = ItemIndex.load(folder, checkpoint=checkpoint)
        if meta.get("factory") != factory:
            getLogger().info("index %s is %s, %s was asked for: rebuilding it", folder, meta.get("factory"), factory)
            return checkpoint_index(checkpoint, vectors, item_tokens, config, rebuild=True)
        if config.get("faiss_nprobe") is not None or config.get("faiss_ef_search") is not None:
            index.set_search_params(nprobe=config.get("faiss_nprobe", index.nprobe),
                                    ef_search=config.get("faiss_ef_search", index.ef_search))
        tokens_path = folder / ITEM_TOKENS_FILE
        try:
            stored_tokens = json.loads(tokens_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{tokens_path} is unreadable ({err})", fix="rebuild the index (--rebuild-index)") from None
        if stored_tokens != [str(t) for t in item_tokens]:
            raise UserError(f"the item id map in {folder} differs from the checkpoint's dataset",
                            fix="rebuild the index (--rebuild-index)")
        if index.item_ids.size and index.item_ids.max() >= len(item_tokens):
            raise UserError(f"index {folder} names item ids beyond the checkpoint's {len(item_tokens) - 1} items",
                            fix="rebuild the index (--rebuild-index)")
        if index.dim != vectors.items.shape[1]:
            raise UserError(f"index {folder} has {index.dim} dims, the model {vectors.items.shape[1]}",
                            fix="rebuild the index (--rebuild-index)")
        stored = meta.get("vector_fingerprint")
        if stored is None or not _same_fingerprint(stored, vector_fingerprint(vectors.items)):
            # same checkpoint, other item vectors: the item features were prepared again since the index was built
            getLogger().warning("the item vectors differ from those index %s was built from (item features "
                                "changed since?): rebuilding it", folder)
            return checkpoint_index(checkpoint, vectors, item_tokens, config, rebuild=True)
        return index
    index = ItemIndex.build(vectors.items.cpu(), factory=factory,
                            nprobe=config.get("faiss_nprobe"), ef_search=config.get("faiss_ef_search"),
                            seed=int(config.get("seed") or 0))
    tokens = [str(t) for t in item_tokens]
    index.save(folder, checkpoint=checkpoint,
               extra={"n_items": len(tokens), "vector_fingerprint": vector_fingerprint(vectors.items)},
               files={ITEM_TOKENS_FILE: json.dumps(tokens)})
    return index


FINGERPRINT_ROWS = 32


def vector_fingerprint(items: torch.Tensor) -> dict:
    """A small summary of the item vectors an index holds: the column means and evenly spaced rows. The index is
    keyed by the checkpoint, but vectors computed from item features (VBPR, MambaRec, ...) change when the features
    are prepared again; a float summary (compared with a tolerance) survives the last-bit noise of threaded sums."""
    x = items.detach().float().cpu()
    rows = torch.linspace(0, len(x) - 1, min(FINGERPRINT_ROWS, len(x))).long()
    return {"mean": x.mean(0).tolist(), "rows": x[rows].tolist()}


def _same_fingerprint(a: dict, b: dict) -> bool:
    try:
        return all(np.allclose(np.asarray(a[k], dtype=np.float64), np.asarray(b[k], dtype=np.float64),
                               rtol=1e-4, atol=1e-6) for k in ("mean", "rows"))
    except (KeyError, ValueError, TypeError):  # another shape: other vectors
        return False


def unknown_tokens(tokens, token2id: dict) -> list[str]:
    """The tokens (each once, in order) that name no user of the checkpoint ('[PAD]', id 0, is none)."""
    return list(dict.fromkeys(str(t) for t in tokens if token2id.get(str(t), 0) == 0))


def listed(tokens, most: int = 5) -> str:
    return ", ".join(tokens[:most]) + (f" (+{len(tokens) - most} more)" if len(tokens) > most else "")


def user_ids_for(tokens, token2id: dict, what: str = "user") -> np.ndarray:
    tokens = [str(t) for t in tokens]
    unknown = unknown_tokens(tokens, token2id)
    if unknown:
        asked = len(set(tokens))
        share = f" ({len(unknown)} of the {asked} {what}s asked for)" if asked > 1 else ""
        raise UserError(f"unknown {what}(s) for this checkpoint: {listed(unknown)}{share}",
                        fix=f"use {what} tokens of the training data ({len(token2id) - 1} known), or pass "
                            "--skip-unknown to answer the others")
    return np.array([token2id[t] for t in tokens], dtype=np.int64)


def history_for(user_ids: np.ndarray, train_users: np.ndarray, train_items: np.ndarray) -> History:
    """Training items of each queried user (rows follow ``user_ids``; repeated users each get their rows)."""
    train_users = np.asarray(train_users, dtype=np.int64)
    train_items = np.asarray(train_items, dtype=np.int64)
    order = np.argsort(train_users, kind="stable")
    sorted_users, sorted_items = train_users[order], train_items[order]
    starts = np.searchsorted(sorted_users, user_ids, side="left")
    stops = np.searchsorted(sorted_users, user_ids, side="right")
    lengths = stops - starts
    indptr = indptr_from_lengths(lengths)
    # Gather all [start, stop) ranges in one vectorised step.
    offsets = concatenated_ranges(starts, lengths)
    return History(indptr, sorted_items[offsets])


def dense_top_k(scores: torch.Tensor, k: int, history: History | None):
    """Top-k of a dense [n, n_items] score matrix with PAD and ``history`` masked (the fallback path)."""
    scores = scores.clone().float()
    scores[:, 0] = -np.inf
    if history is not None and history.items.size:
        scores[torch.from_numpy(history.rows()), torch.from_numpy(history.items)] = -np.inf
    k_eff = min(k, scores.shape[1])
    values, ids = torch.topk(scores, k_eff, dim=1)
    values, ids = values.numpy(), ids.numpy()
    ids = np.where(np.isfinite(values), ids, -1)
    if k_eff < k:
        ids = np.pad(ids, ((0, 0), (0, k - k_eff)), constant_values=-1)
        values = np.pad(values, ((0, 0), (0, k - k_eff)), constant_values=-np.inf)
    return values, ids


def _dataset_tokens(dataset, field_name) -> list[str]:
    return [str(t) for t in dataset.field2id_token[field_name]]


def _train_pairs(loaded: LoadedCheckpoint):
    source = loaded.train_dataset
    if source is None:
        raise UserError("this checkpoint's run has no training split to mask seen items with",
                        fix="pass --keep-seen")
    uid, iid = loaded.dataset.uid_field, loaded.dataset.iid_field
    return source.inter_feat[uid].numpy(), source.inter_feat[iid].numpy()


def _dense_scores(model, dataset, user_ids: np.ndarray) -> torch.Tensor:
    from recbole.data.interaction import Interaction

    with torch.no_grad():
        interaction = Interaction({dataset.uid_field: torch.from_numpy(user_ids)})
        try:
            return model.full_sort_predict(interaction).view(len(user_ids), -1).cpu()
        except NotImplementedError:
            n_items = dataset.item_num
            inter = Interaction({dataset.uid_field: torch.from_numpy(np.repeat(user_ids, n_items)),
                                 dataset.iid_field: torch.arange(n_items).repeat(len(user_ids))})
            return model.predict(inter).view(len(user_ids), -1).cpu()


USERS_PER_SEARCH = 1024  # users scored at once: bounds the dense fallback's [users, items] matrix (--all-users)


def top_k_items(loaded: LoadedCheckpoint, user_tokens, k: int = 20, keep_seen: bool = False,
                rebuild_index: bool = False, index_options: dict | None = None,
                labels: ItemLabels | None = None) -> list[UserRecommendation]:
    """Top-``k`` items of each user token (every one known: see ``unknown_tokens``); ``labels`` adds each item's
    text from the dataset's ``.item`` file."""
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    dataset = loaded.dataset
    user_tokens = [str(t) for t in user_tokens]
    if not user_tokens:
        raise UserError("no users given", fix="pass --user TOKEN, --users-file FILE or --all-users")
    user_ids = user_ids_for(user_tokens, dataset.field2token_id[dataset.uid_field])
    item_tokens = _dataset_tokens(dataset, dataset.iid_field)
    k = min(k, len(item_tokens) - 1)  # no more than the catalogue (row 0 is PAD); a huge k allocated k-wide rows
    train_pairs = None if keep_seen else _train_pairs(loaded)
    vectors = final_vectors(loaded.model)
    index = None
    if vectors is None:
        getLogger().warning("%s exposes no user/item vectors (score is not a plain inner product); scoring all "
                            "items densely", type(loaded.model).__name__)
    else:
        given = {key: val for key, val in (index_options or {}).items() if val is not None}
        settings = dict(loaded.config)
        if "faiss_index" in given:  # the run's nprobe / ef_search were for the run's index, not this one
            settings.pop("faiss_nprobe", None)
            settings.pop("faiss_ef_search", None)
        settings.update(given)
        index = checkpoint_index(loaded.path, vectors, item_tokens, settings, rebuild=rebuild_index)
    results = []
    for start in range(0, len(user_ids), USERS_PER_SEARCH):
        chunk = user_ids[start:start + USERS_PER_SEARCH]
        history = None if train_pairs is None else history_for(chunk, *train_pairs)
        if index is None:
            scores, ids = dense_top_k(_dense_scores(loaded.model, dataset, chunk), k, history)
        else:
            scores, ids = index.search(vectors.user_rows(chunk).cpu().numpy(), k, history)
        for token, row_ids, row_scores in zip(user_tokens[start:start + USERS_PER_SEARCH], ids, scores):
            keep = row_ids >= 0
            items = [item_tokens[i] for i in row_ids[keep]]
            results.append(UserRecommendation(token, items, [float(s) for s in row_scores[keep]],
                                              labels.of(items) if labels else None,
                                              labels.field if labels else None))
    return results


# ------------------------------------------------------------------------------------------------ medication
def vocabulary_files(dataset) -> dict:
    """``diagnoses`` / ``procedures`` / ``medications`` -> the dataset's vocabulary file (named in errors); empty
    when the dataset does not say where it was read from."""
    from recbole_ext.data.medrec_dataset import dataset_folder
    from recbole_ext.retrieval.patient import VISIT_KEYS

    config, name = getattr(dataset, "config", None), getattr(dataset, "dataset_name", None)
    if config is None or name is None:
        return {}
    try:
        folder = dataset_folder(config)
    except UserError:  # moved since it was loaded: the errors name the vocabulary without its file
        return {}
    return {key: shown_path(folder / f"{name}.{short}voc") for key, short in VISIT_KEYS.items()}


def medication_set(loaded: LoadedCheckpoint, patient, threshold: float | None = None,
                   k: int | None = None) -> MedicationRecommendation:
    """The medications whose probability for the patient's last visit is at least ``threshold`` (default: the
    run's ``medrec_threshold``, else 0.5), most probable first, at most ``k`` of them when ``k`` is given."""
    from recbole_ext.retrieval.patient import id_to_token, load_patient, patient_batch

    if threshold is None:
        threshold = loaded.config.get("medrec_threshold")
        threshold = 0.5 if threshold is None else float(threshold)
    elif not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be a probability in [0, 1], got {threshold:g}")
    if k is not None and k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    visits = load_patient(patient)
    dataset = loaded.dataset
    batch = patient_batch(visits, dataset, vocabulary_files(dataset))
    with torch.no_grad():
        logits = loaded.model.forward(batch)
    n_med = int(dataset.n_med)
    if logits.dim() != 3 or logits.shape[0] != 1 or logits.shape[-1] != n_med:
        raise ValueError(f"{type(loaded.model).__name__}.forward returned {tuple(logits.shape)}, "
                         f"expected [1, {visits.n_visits}, {n_med}]")
    probs = torch.sigmoid(logits[0, visits.n_visits - 1].float()).cpu().numpy()
    names = id_to_token(dataset.med_tokens, n_med)
    chosen = np.flatnonzero(probs >= threshold)
    chosen = chosen[np.argsort(-probs[chosen], kind="stable")][:k]
    ddi = torch.as_tensor(dataset.ddi_adj).cpu().numpy()
    sub = ddi[np.ix_(chosen, chosen)]
    a, b = np.nonzero(np.triu(sub, k=1))
    pairs = [(names[chosen[i]], names[chosen[j]]) for i, j in zip(a, b)]
    labels = id_to_token(getattr(dataset, "med_names", None) or [""] * (n_med + 1), n_med)
    return MedicationRecommendation([names[i] for i in chosen], [float(probs[i]) for i in chosen], pairs, threshold,
                                    {names[i]: float(p) for i, p in enumerate(probs)},
                                    [labels[i] for i in chosen], k)


# ----------------------------------------------------------------------------------------------------- API
def open_checkpoint(checkpoint, patient: bool, allow_incomplete: bool = False) -> tuple[LoadedCheckpoint, str | None]:
    """Load the checkpoint of a complete run (see ``run_state_note``) for users (``patient`` False) or a patient;
    also return the warning to show about its run, if any."""
    path = checkpoint_file(checkpoint)
    note = run_state_note(path, allow_incomplete)
    loaded = load_checkpoint(path)
    if patient and loaded.task != "medrec":
        raise UserError(f"{loaded.path.name} is a {loaded.task} checkpoint, not a medication model",
                        fix="use --user/--users-file with this checkpoint")
    if not patient and loaded.task == "medrec":
        raise UserError(f"{loaded.path.name} is a medication-recommendation checkpoint",
                        fix="use --patient FILE.json with it")
    return loaded, note


def all_user_tokens(loaded: LoadedCheckpoint) -> list[str]:
    dataset = loaded.dataset
    return _dataset_tokens(dataset, dataset.uid_field)[1:]  # row 0 is PAD


def select_users(loaded: LoadedCheckpoint, users, skip_unknown: bool = False) -> tuple[list[str], list[str]]:
    """(the tokens to answer, the unknown ones skipped); without ``skip_unknown`` an unknown token is refused."""
    dataset = loaded.dataset
    users = [str(u) for u in users]
    token2id = dataset.field2token_id[dataset.uid_field]
    unknown = unknown_tokens(users, token2id) if skip_unknown else []
    if unknown:
        users = [u for u in users if u not in set(unknown)]
        if not users:
            raise UserError(f"none of the users asked for is known to this checkpoint: {listed(unknown)}",
                            fix=f"use user tokens of the training data ({len(token2id) - 1} known)")
    else:
        user_ids_for(users, token2id)  # an unknown user is refused here, before any output
    return users, unknown


def skipped_note(skipped: list[str]) -> str:
    return f"skipped {len(skipped)} unknown user{'s' if len(skipped) != 1 else ''}: {listed(skipped, 10)}"


def recommend(checkpoint, users=None, k: int | None = None, keep_seen: bool = False, patient=None,
              rebuild_index: bool = False, faiss_index: str | None = None, nprobe: int | None = None,
              ef_search: int | None = None, *, all_users: bool = False, skip_unknown: bool = False,
              show_field: str | None = None, threshold: float | None = None, allow_incomplete: bool = False):
    """Top-``k`` items (default 20) for ``users`` (external tokens) or every user (``all_users``), or the
    medication set for ``patient`` (JSON path/str/obj: probability >= ``threshold``, at most ``k``).

    ``faiss_index`` / ``nprobe`` / ``ef_search`` override the run's ``faiss_index`` / ``faiss_nprobe`` /
    ``faiss_ef_search``; the index is kept beside the checkpoint and reused while it matches. ``skip_unknown``
    answers the known users and warns about the others; ``show_field`` names the ``.item`` column shown beside
    each item (default: a title-like one; ``'none'``: none). A checkpoint of a run that is not complete is refused
    unless ``allow_incomplete`` (then, and for a checkpoint without run status, a warning is issued).

    Returns a list of :class:`UserRecommendation` or one :class:`MedicationRecommendation`.
    """
    if (users is not None) + (patient is not None) + bool(all_users) != 1:
        raise UserError("give one of users, all_users or a patient",
                        fix="--user/--users-file/--all-users for top-K, --patient for medrec")
    if isinstance(users, (str, os.PathLike)):
        users = [users]
    if patient is None and threshold is not None:
        raise UserError("threshold is a medication probability cut-off", fix="give it with a patient")
    loaded, note = open_checkpoint(checkpoint, patient is not None, allow_incomplete)
    if note:
        warnings.warn(note, stacklevel=2)
    if patient is not None:
        return medication_set(loaded, patient, threshold=threshold, k=k)
    users, skipped = select_users(loaded, all_user_tokens(loaded) if all_users else users, skip_unknown)
    if skipped:
        warnings.warn(skipped_note(skipped), stacklevel=2)
    return top_k_items(loaded, users, k=20 if k is None else k, keep_seen=keep_seen, rebuild_index=rebuild_index,
                       index_options={"faiss_index": faiss_index, "faiss_nprobe": nprobe,
                                      "faiss_ef_search": ef_search},
                       labels=item_labels(loaded.config, show_field))
