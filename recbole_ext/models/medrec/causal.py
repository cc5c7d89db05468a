"""Closed-form causal effects of diagnoses/procedures on medications (CausalMed's "static causal effects").

CausalMed fits one DoWhy GLM per (code, medication) pair with the code as the only regressor. A logistic model
with one binary regressor is saturated, so its ATE is the risk difference (spec cafemed.md §1.2.1, verified to
1.2e-9 against the released matrices):

    C[a, m] = P(m in visit | a in visit) - P(m in visit | a not in visit)

computed here with two sparse products over TRAINING visits only. Codes never seen in training (or present in
every training visit, where the contrast is undefined) get C = 0. Results are cached on disk keyed by a content
hash of the training visits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.sparse as sp

from recbole_ext.errors import UserError
from recbole_ext.utils.cache import cache_dir
from recbole_ext.utils.hashing import array_sha256
from recbole_ext.utils.io import atomic_file
from recbole_ext.utils.segments import indptr_from_lengths

_CACHE_VERSION = "risk-difference-v1"


def visits_to_csr(code_lists: Sequence[Sequence[int]], n_codes: int, what: str = "codes") -> sp.csr_matrix:
    """Visits as a binary ``[n_visits, n_codes]`` matrix; ids are 1-based (column j = id j+1)."""
    lengths = np.fromiter((len(c) for c in code_lists), dtype=np.int64, count=len(code_lists))
    ids = (np.concatenate([np.asarray(c, dtype=np.int64) for c in code_lists]) if lengths.sum()
           else np.zeros(0, np.int64))
    if ids.size and (ids.min() < 1 or ids.max() > n_codes):
        raise UserError(f"training {what} ids must lie in 1..{n_codes}, found {ids.min()}..{ids.max()}",
                        fix="re-prepare the dataset; its vocabulary and visit files disagree")
    indptr = indptr_from_lengths(lengths)
    mat = sp.csr_matrix((np.ones(ids.size, np.float64), ids - 1, indptr), shape=(len(code_lists), n_codes))
    mat.sum_duplicates()
    mat.data[:] = 1.0
    return mat


def risk_difference(x: sp.csr_matrix, y: sp.csr_matrix) -> np.ndarray:
    """``[n_codes, n_med]`` risk difference of every med given each code, from binary visit matrices."""
    n_visits = x.shape[0]
    with_code = np.asarray(x.sum(axis=0)).ravel()[:, None]
    co = np.asarray((x.T @ y).todense())
    med_total = np.asarray(y.sum(axis=0)).ravel()[None, :]
    without_code = n_visits - with_code
    defined = (with_code > 0) & (without_code > 0)
    p1 = co / np.maximum(with_code, 1)
    p0 = (med_total - co) / np.maximum(without_code, 1)
    return np.where(defined, p1 - p0, 0.0)


def visits_hash(diag_lists, proc_lists, med_lists, sizes: tuple[int, int, int]) -> str:
    parts = []
    for lists in (diag_lists, proc_lists, med_lists):
        parts.append(np.fromiter((len(c) for c in lists), dtype=np.int64, count=len(lists)))
        parts.append(np.concatenate([np.asarray(c, np.int64) for c in lists]) if len(lists) else np.zeros(0, np.int64))
    parts.append(np.asarray(sizes, np.int64))
    return array_sha256(*parts)


def causal_effects(train_visits, n_diag: int, n_proc: int, n_med: int, use_cache: bool = True):
    """``(C_dm [n_diag, n_med], C_pm [n_proc, n_med])`` float32 risk differences over the training visits."""
    diag_lists, proc_lists, med_lists = (list(x) for x in train_visits)
    if not (len(diag_lists) == len(proc_lists) == len(med_lists)) or not diag_lists:
        raise UserError("train_visits() must return three equally long, non-empty lists of visits",
                        fix="check the dataset's training split")
    key = visits_hash(diag_lists, proc_lists, med_lists, (n_diag, n_proc, n_med))
    path = cache_dir("causal_effects") / f"{_CACHE_VERSION}-{key[:32]}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                c_dm, c_pm = z["c_dm"], z["c_pm"]
        except (OSError, ValueError, KeyError):  # unreadable cache entry: recompute and overwrite it
            c_dm = c_pm = np.zeros(0)
        if c_dm.shape == (n_diag, n_med) and c_pm.shape == (n_proc, n_med) and np.isfinite(c_dm).all() \
                and np.isfinite(c_pm).all():
            return c_dm, c_pm
    y = visits_to_csr(med_lists, n_med, "medication")
    c_dm = risk_difference(visits_to_csr(diag_lists, n_diag, "diagnosis"), y).astype(np.float32)
    c_pm = risk_difference(visits_to_csr(proc_lists, n_proc, "procedure"), y).astype(np.float32)
    if use_cache:
        with atomic_file(path, "wb") as fh:
            np.savez(fh, c_dm=c_dm, c_pm=c_pm)
    return c_dm, c_pm
