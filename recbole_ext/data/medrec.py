"""Medication-recommendation data on disk: the atomic files, their writer and a validating reader.

A dataset ``<name>`` lives in ``dataset_root()/<name>/`` as tab-separated RecBole-style atomic files (header
``field:type``):

* ``<name>.visit``  ``visit_id:token  patient_id:token  visit_order:float  diag:token_seq  proc:token_seq
  med:token_seq``: one row per visit (admission); code lists are space-separated, in source order.
* ``<name>.diagvoc`` / ``<name>.procvoc`` / ``<name>.medvoc``  ``code:token  name:token``: the vocabularies. Line
  ``i`` (1-based, header excluded) is code id ``i``; id 0 is padding (see ``visit_batch.py``). ``name`` may be empty.
* ``<name>.ddi``  ``med_a:token  med_b:token``: undirected drug-drug-interaction pairs of medication codes.
* ``<name>.json``: provenance and the preparation report (options, per-step counts, unmapped NDCs, statistics).

Patients keep the order of their first row in ``.visit`` (the preparers write SUBJECT_ID order, which the published
split relies on); visits inside a patient are ordered by ``visit_order`` (stable).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.errors import UserError
from recbole_ext.utils.segments import concatenated_ranges, indptr_from_lengths, indptr_from_segment_ids

VISIT_HEADER = ["visit_id:token", "patient_id:token", "visit_order:float", "diag:token_seq", "proc:token_seq",
                "med:token_seq"]
VOCAB_HEADER = ["code:token", "name:token"]
DDI_HEADER = ["med_a:token", "med_b:token"]
KINDS = ("diag", "proc", "med")


def _clean_text(s: pd.Series) -> pd.Series:
    return s.fillna("").astype(str).str.replace(r"[\t\r\n]+", " ", regex=True).str.strip()


def write_medrec_files(folder: Path, name: str, visits: pd.DataFrame, vocabs: dict[str, pd.DataFrame],
                       ddi_pairs: pd.DataFrame, meta: dict) -> None:
    """Write the atomic files into ``folder`` (normally the temporary folder of ``atomic_dir``).

    ``visits``: columns visit_id, patient_id, visit_order, diag, proc, med (the last three: lists of code strings).
    ``vocabs[kind]``: columns code, name in id order. ``ddi_pairs``: columns med_a, med_b.
    """
    folder = Path(folder)
    for kind in KINDS:
        bad = vocabs[kind]["code"].astype(str).str.contains(r"\s", regex=True)
        if bad.any():
            raise UserError(f"{kind} code {vocabs[kind]['code'][bad].iloc[0]!r} contains whitespace",
                            fix="codes must be single tokens")
    out = pd.DataFrame({
        VISIT_HEADER[0]: visits["visit_id"].astype(str),
        VISIT_HEADER[1]: visits["patient_id"].astype(str),
        VISIT_HEADER[2]: visits["visit_order"].astype(float),
        **{h: visits[k].map(" ".join) for h, k in zip(VISIT_HEADER[3:], KINDS)},
    })
    out.to_csv(folder / f"{name}.visit", sep="\t", index=False)
    for kind in KINDS:
        v = vocabs[kind]
        pd.DataFrame({VOCAB_HEADER[0]: v["code"].astype(str), VOCAB_HEADER[1]: _clean_text(v["name"])}).to_csv(
            folder / f"{name}.{kind}voc", sep="\t", index=False)
    pd.DataFrame({DDI_HEADER[0]: ddi_pairs["med_a"].astype(str), DDI_HEADER[1]: ddi_pairs["med_b"].astype(str)}
                 ).to_csv(folder / f"{name}.ddi", sep="\t", index=False)
    (folder / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")


@dataclass
class CSRCodes:
    """Codes of many visits: visit v has ``indices[indptr[v]:indptr[v+1]]`` (1-based ids)."""

    indptr: np.ndarray
    indices: np.ndarray

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def take(self, visits: np.ndarray) -> "CSRCodes":
        lens = self.lengths()[visits]
        return CSRCodes(indptr_from_lengths(lens), self.indices[concatenated_ranges(self.indptr[visits], lens)])

    def as_lists(self) -> list[np.ndarray]:
        return np.split(self.indices, self.indptr[1:-1])


@dataclass
class MedRecData:
    """A loaded medication dataset; visits are sorted by (patient, visit order)."""

    name: str
    patient_tokens: np.ndarray            # [P] external patient ids, in dataset order
    visit_tokens: np.ndarray              # [V] external visit ids
    visit_patient: np.ndarray             # [V] patient index (row of patient_tokens)
    patient_visit_ptr: np.ndarray         # [P+1] visits of patient p: visit_patient_ptr[p]:ptr[p+1]
    codes: dict[str, CSRCodes]            # kind -> codes per visit (1-based ids)
    vocab: dict[str, pd.DataFrame]        # kind -> DataFrame(code, name), row i = id i+1
    ddi_pairs: np.ndarray                 # [E, 2] medication ids (1-based), a < b, unique
    meta: dict = field(default_factory=dict)

    @property
    def n_patients(self) -> int:
        return len(self.patient_tokens)

    @property
    def n_visits(self) -> int:
        return len(self.visit_tokens)

    def n_codes(self, kind: str) -> int:
        return len(self.vocab[kind])

    def ddi_adjacency(self) -> np.ndarray:
        """[n_med, n_med] symmetric 0/1 float32; index j = medication id j+1."""
        n = self.n_codes("med")
        adj = np.zeros((n, n), dtype=np.float32)
        if len(self.ddi_pairs):
            a, b = self.ddi_pairs[:, 0] - 1, self.ddi_pairs[:, 1] - 1
            adj[a, b] = 1.0
            adj[b, a] = 1.0
        return adj


def _read_tsv(path: Path, header: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"missing file {path}", fix="prepare the dataset first (python run.py prepare ...)")
    try:
        # index_col=False: lines with more fields than the header (a trailing tab) must not turn the first column
        # into the index and shift the others; pandas then warns that it drops the extra fields: refused here
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, index_col=False)
    except pd.errors.ParserWarning:
        raise UserError(f"{path}: data lines have more tab-separated fields than the header's {len(header)}",
                        fix="remove the extra fields (a trailing tab?)") from None
    except Exception as exc:
        raise UserError(f"cannot parse {path}: {exc}", fix="the file must be tab-separated with a header") from None
    missing = [h for h in header if h not in df.columns]
    if missing:
        raise UserError(f"{path} lacks columns {missing} (has {list(df.columns)})",
                        fix=f"the header must be: {' '.join(header)}")
    return df


def _encode(path: Path, tokens: pd.Series, kind: str, vocab_index: pd.Index, visit_ids: np.ndarray) -> CSRCodes:
    lists = tokens.str.split()
    lens = lists.map(len).to_numpy(dtype=np.int64)
    flat = pd.Index(lists.explode().dropna().to_numpy(dtype=str))
    ids = vocab_index.get_indexer(flat)
    if (ids < 0).any():
        bad = np.flatnonzero(ids < 0)
        row = int(np.searchsorted(np.cumsum(lens), bad[0], side="right"))
        raise UserError(f"{path}: {len(bad)} {kind} code(s) are not in the {kind} vocabulary, e.g. "
                        f"{flat[bad[0]]!r} in visit {visit_ids[row]!r}",
                        fix=f"re-run the preparation so that .{kind}voc and .visit agree")
    # a visit's codes are a set: a repeat would count twice in every model's pooling
    row_of = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
    key = row_of * (len(vocab_index) + 1) + ids
    order = np.argsort(key, kind="stable")
    repeat = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(repeat):
        first = order[repeat[0] + 1]
        raise UserError(f"{path}: {kind} code {flat[first]!r} appears twice in visit {visit_ids[row_of[first]]!r} "
                        f"({len(repeat)} repeated code(s) in all)",
                        fix="a visit's codes are a set: list each code once")
    return CSRCodes(indptr_from_lengths(lens), (ids + 1).astype(np.int64))


def _read_vocab(path: Path) -> tuple[pd.DataFrame, pd.Index]:
    """A vocabulary file as DataFrame(code, name) and the index of its codes (row i = id i+1); the codes must be
    non-empty, unique and not a repeated header."""
    df = _read_tsv(path, VOCAB_HEADER)
    codes = df[VOCAB_HEADER[0]].str.strip()
    if (codes == "").any():
        raise UserError(f"{path}: empty code on line {int(np.flatnonzero(codes == '')[0]) + 2}",
                        fix="every vocabulary line needs a code")
    if codes.duplicated().any():
        raise UserError(f"{path}: duplicate code {codes[codes.duplicated()].iloc[0]!r}",
                        fix="each code must appear once")
    if (codes == VOCAB_HEADER[0]).any():  # a repeated header line would become a code
        raise UserError(f"{path}: the header line appears again as line "
                        f"{int(np.flatnonzero(codes == VOCAB_HEADER[0])[0]) + 2}", fix="keep one header line")
    if len(codes) == 0:
        raise UserError(f"{path} is empty", fix="the vocabulary needs at least one code")
    return pd.DataFrame({"code": codes.to_numpy(), "name": df[VOCAB_HEADER[1]].to_numpy()}), pd.Index(codes.to_numpy())


def _read_visits(path: Path) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """The visit file with its visit orders (finite numbers) and stripped visit ids (unique), every visit with an id,
    a patient, a medication and a diagnosis or procedure; rows in file order."""
    df = _read_tsv(path, VISIT_HEADER)
    if len(df) == 0:
        raise UserError(f"{path} has no visits", fix="check the preparation report")
    order = pd.to_numeric(df[VISIT_HEADER[2]], errors="coerce")
    finite = np.isfinite(order.to_numpy(dtype=float))
    if not finite.all():
        line = int(np.flatnonzero(~finite)[0]) + 2
        raise UserError(f"{path}: visit_order on line {line} is not a finite number",
                        fix="visit_order must be numeric")
    for column, what in ((VISIT_HEADER[0], "visit_id"), (VISIT_HEADER[1], "patient_id")):
        empty = df[column].str.strip() == ""
        if empty.any():
            raise UserError(f"{path}: empty {what} on line {int(np.flatnonzero(empty.to_numpy())[0]) + 2}",
                            fix=f"every visit needs a {what}")
    vid = df[VISIT_HEADER[0]].str.strip()
    if vid.duplicated().any():
        raise UserError(f"{path}: duplicate visit_id {vid[vid.duplicated()].iloc[0]!r}", fix="visit ids must be unique")
    med_empty = df[VISIT_HEADER[5]].str.strip() == ""
    if med_empty.any():
        raise UserError(f"{path}: {int(med_empty.sum())} visit(s) have no medication, e.g. visit "
                        f"{vid[med_empty].iloc[0]!r}", fix="drop visits without medications when preparing")
    no_input = (df[VISIT_HEADER[3]].str.strip() == "") & (df[VISIT_HEADER[4]].str.strip() == "")
    if no_input.any():
        raise UserError(f"{path}: {int(no_input.sum())} visit(s) have neither diagnoses nor procedures, e.g. visit "
                        f"{vid[no_input].iloc[0]!r}", fix="drop visits without any input code when preparing")
    return df, order, vid


def _read_ddi(path: Path, med_index: pd.Index) -> np.ndarray:
    """[E, 2] medication ids (1-based), a < b, unique; a pair naming an unknown medication is refused."""
    ddi = _read_tsv(path, DDI_HEADER)
    a = med_index.get_indexer(ddi[DDI_HEADER[0]].str.strip())
    b = med_index.get_indexer(ddi[DDI_HEADER[1]].str.strip())
    if ((a < 0) | (b < 0)).any():
        i = int(np.flatnonzero((a < 0) | (b < 0))[0])
        raise UserError(f"{path}: pair on line {i + 2} names a medication not in the medication vocabulary "
                        f"({ddi.iloc[i, 0]!r}, {ddi.iloc[i, 1]!r})", fix="restrict the DDI pairs to the vocabulary")
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1) + 1
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0).astype(np.int64).reshape(-1, 2)


def _read_meta(path: Path) -> dict:
    """The preparation report, {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}", fix="re-run the preparation") from None


def load_medrec(folder: str | Path, name: str | None = None) -> MedRecData:
    """Read and validate ``folder/<name>.{visit,diagvoc,procvoc,medvoc,ddi}``."""
    folder = Path(folder)
    name = name or folder.name
    vocab: dict[str, pd.DataFrame] = {}
    index: dict[str, pd.Index] = {}
    for kind in KINDS:
        vocab[kind], index[kind] = _read_vocab(folder / f"{name}.{kind}voc")

    vpath = folder / f"{name}.visit"
    df, order, vid = _read_visits(vpath)
    patient_codes, patient_tokens = pd.factorize(df[VISIT_HEADER[1]].str.strip(), sort=False)  # first appearance
    sort = np.lexsort((order.to_numpy(), patient_codes))  # stable by patient, then visit order
    df = df.iloc[sort].reset_index(drop=True)
    visit_patient = patient_codes[sort].astype(np.int64)
    visit_ids = vid.to_numpy()[sort]
    codes = {kind: _encode(vpath, df[h].str.strip(), kind, index[kind], visit_ids)
             for kind, h in zip(KINDS, VISIT_HEADER[3:])}
    ptr = indptr_from_segment_ids(visit_patient, len(patient_tokens))

    pairs = _read_ddi(folder / f"{name}.ddi", index["med"])
    meta = _read_meta(folder / f"{name}.json")
    return MedRecData(name=name, patient_tokens=np.asarray(patient_tokens, dtype=str), visit_tokens=visit_ids,
                      visit_patient=visit_patient, patient_visit_ptr=ptr, codes=codes, vocab=vocab, ddi_pairs=pairs,
                      meta=meta)


def split_patients(n: int, mode: str = "ordered", seed: int = 0) -> dict[str, np.ndarray]:
    """Patient indices per phase: 2/3 train, then floor(rest/2) test, then the rest validation.

    The medication task's split (``medrec_split``); it lives here because ``prepare mimic* --vocab-from train``
    must pick the same training patients as training will.
    """
    if n < 4:
        raise UserError(f"the dataset has {n} patient(s); the patient split needs at least 4 (one per split)",
                        fix="prepare a larger dataset (relax --min-admissions)")
    if mode == "ordered":
        order = np.arange(n)
    elif mode == "random":
        order = np.random.RandomState(seed).permutation(n)
    else:
        raise UserError(f"medrec_split must be 'ordered' or 'random', not {mode!r}", fix="set medrec_split: ordered")
    n_train = (2 * n) // 3
    n_test = (n - n_train) // 2
    return {"train": order[:n_train], "test": order[n_train:n_train + n_test], "valid": order[n_train + n_test:]}


def first_appearance_vocab(visits: pd.DataFrame, kind: str, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Vocabulary in order of first appearance when scanning visits in order (the published ``Voc`` order)."""
    flat = visits[kind].explode().dropna()
    codes = pd.unique(flat.to_numpy())
    names = names or {}
    return pd.DataFrame({"code": codes, "name": [names.get(c, "") for c in codes]})


def visit_statistics(data_visits: pd.DataFrame, ddi_pairs: pd.DataFrame) -> dict:
    """Aggregate statistics (spec §3.6) of prepared visits (lists of codes), including the ground-truth DDI rate."""
    n_pat = int(data_visits["patient_id"].nunique())
    per_pat = data_visits.groupby("patient_id", sort=False).size()
    stats = {"patients": n_pat, "visits": int(len(data_visits)),
             "avg_visits_per_patient": float(per_pat.mean()), "max_visits_per_patient": int(per_pat.max()),
             "patients_with_one_visit": int((per_pat == 1).sum())}
    for kind in KINDS:
        lens = data_visits[kind].map(len)
        stats[f"n_{kind}_codes"] = int(data_visits[kind].explode().nunique())
        stats[f"avg_{kind}_per_visit"] = float(lens.mean())
        stats[f"max_{kind}_per_visit"] = int(lens.max())
    stats["ddi_pairs"] = int(len(ddi_pairs))
    stats["ground_truth_ddi_rate"] = ground_truth_ddi_rate(data_visits["med"], ddi_pairs)
    return stats


def ground_truth_ddi_rate(med_lists: pd.Series, ddi_pairs: pd.DataFrame) -> float:
    """Share of unordered medication pairs inside the recorded visits that are DDI pairs (the canonical formula)."""
    codes = pd.Index(pd.unique(med_lists.explode().dropna().to_numpy()))
    if len(codes) == 0:
        return 0.0
    lens = med_lists.map(len).to_numpy()
    rows = np.repeat(np.arange(len(med_lists)), lens)
    cols = codes.get_indexer(med_lists.explode().dropna().to_numpy())
    y = np.zeros((len(med_lists), len(codes)), dtype=np.float32)
    y[rows, cols] = 1.0
    adj = np.zeros((len(codes), len(codes)), dtype=np.float32)
    a = codes.get_indexer(ddi_pairs["med_a"].to_numpy())
    b = codes.get_indexer(ddi_pairs["med_b"].to_numpy())
    keep = (a >= 0) & (b >= 0) & (a != b)
    adj[a[keep], b[keep]] = 1.0
    adj[b[keep], a[keep]] = 1.0
    k = y.sum(1)
    all_pairs = float((k * (k - 1) / 2).sum())
    hit = float(((y @ adj) * y).sum() / 2)
    return hit / all_pairs if all_pairs > 0 else 0.0
