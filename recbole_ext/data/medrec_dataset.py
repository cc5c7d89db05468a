"""The medication dataset of a run: the files of ``recbole_ext.data.medrec`` with their patient split, collated
into ``VisitBatch``es of whole patients.

``MedRecDataset`` is a thin object, not a RecBole ``Dataset``: the visit structure (whole patients, code sets per
visit) has no RecBole interaction equivalent, and RecBole's Config/registry only need the dataset name. The split
(spec cafemed.md §5): train = first floor(2N/3) patients, test = the next floor(rest/2), validation = the rest, in
dataset order (``medrec_split: ordered``) or shuffled with ``medrec_split_seed`` (``medrec_split: random``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from recbole_ext.data.medrec import CSRCodes, MedRecData, load_medrec, split_patients
from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.options import SEED, config_value, number_value
from recbole_ext.utils.device import wants_pinned_memory
from recbole_ext.utils.paths import bundled_elsewhere, dataset_root
from recbole_ext.utils.segments import concatenated_ranges, positions_in_segments

PHASES = ("train", "valid", "test")


def dataset_folder(config) -> Path:
    """``config['data_path']`` when it holds the dataset, else ``dataset_root()/<dataset>``."""
    name = config["dataset"]
    data_path = config_value(config, "data_path", None)
    candidates = list(dict.fromkeys(([Path(data_path)] if data_path else []) + [dataset_root() / name]))
    for cand in candidates:
        if (cand / f"{name}.visit").is_file():
            return cand
    raise UserError(f"medication dataset '{name}' not found (looked for {name}.visit in "
                    f"{' and '.join(str(c) for c in candidates)})", fix=_how_to_prepare(name))


# Credentialed sources: where a user gets them and the command that turns them into the dataset.
MIMIC_SOURCES = {
    "mimic3": ("MIMIC-III v1.4 (https://physionet.org/content/mimiciii/1.4/)", "the folder of its CSVs"),
    "mimic4": ("MIMIC-IV (https://physionet.org/content/mimiciv/)", "its hosp/ folder"),
}


def _how_to_prepare(name: str) -> str:
    bundled = bundled_elsewhere(name)
    if bundled:
        return bundled
    if name in MIMIC_SOURCES:
        source, folder = MIMIC_SOURCES[name]
        return (f"{name} is credentialed PhysioNet data and is not bundled: download {source} with your "
                f"PhysioNet access, then run `python run.py prepare {name} --src <{folder}>` "
                f"(docs/medication-data.md); --dataset={name}-demo (bundled) runs without it")
    return (f"prepare it: python run.py prepare mimic3|mimic4 --src DIR --name {name}, or "
            f"python run.py prepare synthetic-ehr --name {name}")


class MedRecDataset:
    """A medication dataset with its patient split.

    Attributes (contract for medication models): ``n_diag, n_proc, n_med`` (real codes; ids are 1-based, 0 = pad);
    ``ddi_adj`` FloatTensor [n_med, n_med] (symmetric 0/1, zero diagonal; index j = medication id j+1);
    ``diag_tokens, proc_tokens, med_tokens``: external codes indexed by id (position 0 is ``'[PAD]'``);
    ``diag_names, proc_names, med_names``: same layout, '' where the source has no name; ``dataset_name``.
    Methods: ``train_visits()``, ``train_multi_hot()``, ``ehr_adj()``, ``split_patients(phase)``, ``collate(...)``.
    """

    def __init__(self, config, data: MedRecData | None = None):
        self.config = config
        self.dataset_name = config["dataset"]
        self.data = data if data is not None else load_medrec(dataset_folder(config), self.dataset_name)
        d = self.data
        self.n_diag, self.n_proc, self.n_med = d.n_codes("diag"), d.n_codes("proc"), d.n_codes("med")
        self.ddi_adj = torch.from_numpy(d.ddi_adjacency())
        for kind in ("diag", "proc", "med"):
            setattr(self, f"{kind}_tokens", ["[PAD]"] + d.vocab[kind]["code"].tolist())
            setattr(self, f"{kind}_names", [""] + d.vocab[kind]["name"].tolist())
        mode = str(config_value(config, "medrec_split", "ordered"))
        seed = number_value(config, "medrec_split_seed", config_value(config, "seed", 0), int, SEED)
        self.split = split_patients(d.n_patients, mode, seed)
        if mode != "ordered" and d.meta.get("options", {}).get("vocab_from") == "train":
            # the vocabularies were built from the ordered split's training patients: with another split, codes of
            # today's validation/test patients shaped them and some training patients lost codes
            warnings.warn(f"{self.dataset_name} was prepared with --vocab-from train, i.e. for medrec_split: ordered; "
                          f"with medrec_split: {mode} its vocabularies do not come from this split's training "
                          "patients", stacklevel=2)

    # ----------------------------------------------------------------------------------------------- introspection
    def __repr__(self) -> str:
        sizes = {p: len(self.split[p]) for p in PHASES}
        return (f"MedRecDataset({self.dataset_name}: {self.data.n_patients} patients {sizes}, "
                f"{self.data.n_visits} visits, n_diag={self.n_diag}, n_proc={self.n_proc}, n_med={self.n_med}, "
                f"{len(self.data.ddi_pairs)} DDI pairs)")

    def ext_id_maps(self) -> dict[str, list[str]]:
        """Vocabularies stored in checkpoints, so a model is never loaded onto differently indexed codes."""
        return {"diag": self.diag_tokens, "proc": self.proc_tokens, "med": self.med_tokens}

    def split_patients(self, phase: str) -> np.ndarray:
        """Dataset patient indices of a phase; ``VisitBatch.patient_ids`` index into this array."""
        return self.split[phase]

    def phase_visits(self, phase: str) -> np.ndarray:
        """Visit rows of a phase's patients, in (patient, visit) order."""
        pats = self.split[phase]
        ptr = self.data.patient_visit_ptr
        lens = ptr[pats + 1] - ptr[pats]
        return concatenated_ranges(ptr[pats], lens)

    def visit_count(self, phase: str, rows: np.ndarray) -> int:
        """Visits of the patients ``split[phase][rows]``: the rows a visit-level loss averages over."""
        pats = self.split[phase][np.asarray(rows, dtype=np.int64)]
        ptr = self.data.patient_visit_ptr
        return int((ptr[pats + 1] - ptr[pats]).sum())

    def train_visits(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """Training visits as (diag, proc, med) lists of int64 arrays of 1-based code ids (one array per visit)."""
        rows = self.phase_visits("train")
        return tuple(self.data.codes[k].take(rows).as_lists() for k in ("diag", "proc", "med"))

    def multi_hot(self, kind: str, visit_rows: np.ndarray) -> np.ndarray:
        """Dense float32 multi-hot [len(visit_rows), n_kind] of some visits; column j = id j+1."""
        n = {"diag": self.n_diag, "proc": self.n_proc, "med": self.n_med}[kind]
        csr = self.data.codes[kind].take(np.asarray(visit_rows, dtype=np.int64))
        out = np.zeros((len(visit_rows), n), dtype=np.float32)
        out[np.repeat(np.arange(len(visit_rows)), csr.lengths()), csr.indices - 1] = 1.0
        return out

    def train_multi_hot(self) -> dict[str, np.ndarray]:
        """Dense float32 multi-hot matrices of the training visits: kind -> [V_train, n_kind], column j = id j+1."""
        rows = self.phase_visits("train")
        return {kind: self.multi_hot(kind, rows) for kind in ("diag", "proc", "med")}

    def ehr_adj(self) -> torch.Tensor:
        """Co-prescription graph of the training visits (GAMENet's EHR graph): [n_med, n_med] 0/1, zero diagonal."""
        med = torch.from_numpy(self.train_multi_hot()["med"])
        adj = ((med.T @ med) > 0).float()
        adj.fill_diagonal_(0.0)
        return adj

    # --------------------------------------------------------------------------------------------------- batching
    def collate(self, phase: str, rows: np.ndarray) -> VisitBatch:
        """Whole patients ``split[phase][rows]`` -> a padded VisitBatch (vectorised scatter, no per-visit loop)."""
        rows = np.asarray(rows, dtype=np.int64)
        pats = self.split[phase][rows]
        ptr = self.data.patient_visit_ptr
        lens = ptr[pats + 1] - ptr[pats]
        n_p, t_max = len(pats), max(int(lens.max()), 1) if len(lens) else 1
        visits = concatenated_ranges(ptr[pats], lens)
        p_of = np.repeat(np.arange(n_p), lens)
        t_of = positions_in_segments(lens)
        mask = np.zeros((n_p, t_max), dtype=bool)
        mask[p_of, t_of] = True
        tensors = {}
        for kind in ("diag", "proc", "med"):
            csr: CSRCodes = self.data.codes[kind].take(visits)
            clen = csr.lengths()
            width = max(int(clen.max()) if len(clen) else 1, 1)
            out = np.zeros((n_p, t_max, width), dtype=np.int64)
            vrow = np.repeat(np.arange(len(visits)), clen)
            within = positions_in_segments(clen)
            out[p_of[vrow], t_of[vrow], within] = csr.indices
            tensors[kind] = (out, vrow, csr.indices)
        target = np.zeros((n_p, t_max, self.n_med), dtype=np.float32)
        _, vrow, med_ids = tensors["med"]
        target[p_of[vrow], t_of[vrow], med_ids - 1] = 1.0
        return VisitBatch(diag=torch.from_numpy(tensors["diag"][0]), proc=torch.from_numpy(tensors["proc"][0]),
                          med=torch.from_numpy(tensors["med"][0]), visit_mask=torch.from_numpy(mask),
                          target=torch.from_numpy(target), patient_ids=torch.from_numpy(rows))


class MedRecDataLoader:
    """Iterates VisitBatches of whole patients of one phase. ``dataset``/``_dataset`` is the full MedRecDataset."""

    def __init__(self, config, dataset: MedRecDataset, phase: str, patients_per_batch: int, shuffle: bool):
        if patients_per_batch < 1:
            raise UserError(f"patients per batch must be >= 1, got {patients_per_batch}",
                            fix="set patients_per_batch / eval_patients_per_batch to a positive integer")
        self.config = config
        self.dataset = self._dataset = dataset
        self.phase = phase
        self.batch_size = int(patients_per_batch)
        self.shuffle = shuffle
        self.bootstrap = phase == "test"
        self._rng = np.random.RandomState(int(config_value(config, "seed", 0)))
        self.n_patients = len(dataset.split_patients(phase))
        self.pin_memory = wants_pinned_memory(config_value(config, "device", None))  # page-locked for CUDA only

    def _collate(self, rows) -> VisitBatch:
        batch = self.dataset.collate(self.phase, rows)
        return batch.pin_memory() if self.pin_memory else batch

    def __len__(self) -> int:
        return (self.n_patients + self.batch_size - 1) // self.batch_size

    def __bool__(self) -> bool:
        return self.n_patients > 0

    def row_batches(self):
        """The patient rows of each batch of one pass, in order (the shuffle, if any, draws here once per pass)."""
        order = self._rng.permutation(self.n_patients) if self.shuffle else np.arange(self.n_patients)
        for s in range(0, self.n_patients, self.batch_size):
            yield order[s:s + self.batch_size]

    def __iter__(self):
        for rows in self.row_batches():
            yield self._collate(rows)

    def batch_block(self, start: int, stop: int):
        """Batches ``start`` to ``stop - 1`` of an unshuffled pass, collated (a data-parallel evaluation's share)."""
        if self.shuffle:
            raise RuntimeError("batch_block needs an unshuffled loader")
        for s in range(start * self.batch_size, min(stop * self.batch_size, self.n_patients), self.batch_size):
            yield self._collate(np.arange(s, min(s + self.batch_size, self.n_patients)))
