"""Serving: top-K items for users of a trained checkpoint, or a medication set for a patient.

Top-K uses the model's final vectors (see ``vectors.py``) and a FAISS index persisted beside the checkpoint
(``<checkpoint>.faiss/``, with the item id map and the checkpoint's sha256); models without final vectors are
scored densely with a logged notice. A user's training interactions are excluded unless ``keep_seen``. Every
result names items by their external tokens.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from logging import getLogger
from pathlib import Path

import numpy as np
import torch

from recbole_ext.errors import UserError
from recbole_ext.retrieval.index import DEFAULT_FACTORY, History, ItemIndex
from recbole_ext.retrieval.vectors import FinalVectors, final_vectors
from recbole_ext.utils.segments import concatenated_ranges, indptr_from_lengths

INDEX_SUFFIX = ".faiss"
ITEM_TOKENS_FILE = "item_tokens.json"


@dataclass
class UserRecommendation:
    user: str
    items: list[str]
    scores: list[float]

    def as_dict(self) -> dict:
        return {"user": self.user, "items": self.items, "scores": self.scores}


@dataclass
class MedicationRecommendation:
    medications: list[str]            # recommended set, most probable first
    probabilities: list[float]        # of each recommended medication
    ddi_pairs: list[tuple[str, str]]  # every interacting pair inside the recommended set
    threshold: float
    all_probabilities: dict[str, float] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # human-readable name of each recommended code ('' if unknown)

    def as_dict(self) -> dict:
        return {"medications": self.medications, "probabilities": self.probabilities, "names": self.names,
                "ddi_pairs": [list(p) for p in self.ddi_pairs], "threshold": self.threshold}


# --------------------------------------------------------------------------------------------- checkpoint access
@dataclass
class LoadedCheckpoint:
    path: Path
    model: torch.nn.Module
    dataset: object          # the rebuilt full dataset (id maps)
    train_dataset: object    # its training split (history mask), None for medrec
    config: dict
    task: str


def load_checkpoint(path) -> LoadedCheckpoint:
    """Rebuild model (eval mode), dataset and training split from a recbole-ext checkpoint (weights_only)."""
    path = Path(path)
    if path.is_dir():  # a run directory: its checkpoint
        if not (path / "model.pth").is_file():
            raise UserError(f"{path} is a folder without a model.pth", fix="pass a run directory or its model.pth")
        path = path / "model.pth"
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist", fix="pass the model.pth of a finished run")
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


def user_ids_for(tokens, token2id: dict, what: str = "user") -> np.ndarray:
    tokens = [str(t) for t in tokens]
    unknown = [t for t in tokens if t not in token2id or token2id[t] == 0]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise UserError(f"unknown {what}(s) for this checkpoint: {shown}",
                        fix=f"use {what} tokens of the training data ({len(token2id) - 1} known)")
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


def top_k_items(loaded: LoadedCheckpoint, user_tokens, k: int = 20, keep_seen: bool = False,
                rebuild_index: bool = False, index_options: dict | None = None) -> list[UserRecommendation]:
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    dataset = loaded.dataset
    user_tokens = [str(t) for t in user_tokens]
    if not user_tokens:
        raise UserError("no users given", fix="pass --user TOKEN or --users-file FILE")
    user_ids = user_ids_for(user_tokens, dataset.field2token_id[dataset.uid_field])
    item_tokens = _dataset_tokens(dataset, dataset.iid_field)
    k = min(k, len(item_tokens) - 1)  # no more than the catalogue (row 0 is PAD); a huge k allocated k-wide rows
    history = None if keep_seen else history_for(user_ids, *_train_pairs(loaded))
    vectors = final_vectors(loaded.model)
    if vectors is None:
        getLogger().warning("%s exposes no user/item vectors (score is not a plain inner product); scoring all "
                            "items densely", type(loaded.model).__name__)
        scores, ids = dense_top_k(_dense_scores(loaded.model, dataset, user_ids), k, history)
    else:
        given = {key: val for key, val in (index_options or {}).items() if val is not None}
        settings = dict(loaded.config)
        if "faiss_index" in given:  # the run's nprobe / ef_search were for the run's index, not this one
            settings.pop("faiss_nprobe", None)
            settings.pop("faiss_ef_search", None)
        settings.update(given)
        index = checkpoint_index(loaded.path, vectors, item_tokens, settings, rebuild=rebuild_index)
        scores, ids = index.search(vectors.user_rows(user_ids).cpu().numpy(), k, history)
    results = []
    for token, row_ids, row_scores in zip(user_tokens, ids, scores):
        keep = row_ids >= 0
        results.append(UserRecommendation(token, [item_tokens[i] for i in row_ids[keep]],
                                          [float(s) for s in row_scores[keep]]))
    return results


# ------------------------------------------------------------------------------------------------ medication
def medication_set(loaded: LoadedCheckpoint, patient) -> MedicationRecommendation:
    from recbole_ext.retrieval.patient import id_to_token, load_patient, patient_batch

    visits = load_patient(patient)
    dataset = loaded.dataset
    batch = patient_batch(visits, dataset)
    with torch.no_grad():
        logits = loaded.model.forward(batch)
    n_med = int(dataset.n_med)
    if logits.dim() != 3 or logits.shape[0] != 1 or logits.shape[-1] != n_med:
        raise ValueError(f"{type(loaded.model).__name__}.forward returned {tuple(logits.shape)}, "
                         f"expected [1, {visits.n_visits}, {n_med}]")
    probs = torch.sigmoid(logits[0, visits.n_visits - 1].float()).cpu().numpy()
    threshold = loaded.config.get("medrec_threshold")
    threshold = 0.5 if threshold is None else float(threshold)
    names = id_to_token(dataset.med_tokens, n_med)
    chosen = np.flatnonzero(probs >= threshold)
    chosen = chosen[np.argsort(-probs[chosen], kind="stable")]
    ddi = torch.as_tensor(dataset.ddi_adj).cpu().numpy()
    sub = ddi[np.ix_(chosen, chosen)]
    a, b = np.nonzero(np.triu(sub, k=1))
    pairs = [(names[chosen[i]], names[chosen[j]]) for i, j in zip(a, b)]
    labels = id_to_token(getattr(dataset, "med_names", None) or [""] * (n_med + 1), n_med)
    return MedicationRecommendation([names[i] for i in chosen], [float(probs[i]) for i in chosen], pairs, threshold,
                                    {names[i]: float(p) for i, p in enumerate(probs)},
                                    [labels[i] for i in chosen])


# ----------------------------------------------------------------------------------------------------- API
def recommend(checkpoint, users=None, k: int = 20, keep_seen: bool = False, patient=None,
              rebuild_index: bool = False, faiss_index: str | None = None, nprobe: int | None = None,
              ef_search: int | None = None):
    """Top-``k`` items for ``users`` (external tokens) or the medication set for ``patient`` (JSON path/str/obj).

    ``faiss_index`` / ``nprobe`` / ``ef_search`` override the run's ``faiss_index`` / ``faiss_nprobe`` /
    ``faiss_ef_search``; the index is kept beside the checkpoint and reused while it matches.

    Returns a list of :class:`UserRecommendation` or one :class:`MedicationRecommendation`.
    """
    if (users is None) == (patient is None):
        raise UserError("give either users or a patient", fix="--user/--users-file for top-K, --patient for medrec")
    if isinstance(users, (str, os.PathLike)):
        users = [users]
    loaded = load_checkpoint(checkpoint)
    if patient is not None:
        if loaded.task != "medrec":
            raise UserError(f"{loaded.path.name} is a {loaded.task} checkpoint, not a medication model",
                            fix="use --user/--users-file with this checkpoint")
        return medication_set(loaded, patient)
    if loaded.task == "medrec":
        raise UserError(f"{loaded.path.name} is a medication-recommendation checkpoint",
                        fix="use --patient FILE.json with it")
    return top_k_items(loaded, users, k=k, keep_seen=keep_seen, rebuild_index=rebuild_index,
                       index_options={"faiss_index": faiss_index, "faiss_nprobe": nprobe,
                                      "faiss_ef_search": ef_search})
