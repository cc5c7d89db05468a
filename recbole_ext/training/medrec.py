"""The medication-recommendation task: dataset, patient split, VisitBatch loaders and the trainer.

Selected by the dataset YAML key ``task: medrec``. Protocol (spec cafemed.md §5, SafeDrug/CausalMed):

* split by patient: train = first floor(2N/3) patients, test = the next floor(rest/2), validation = the rest, in
  dataset (SUBJECT_ID) order (``medrec_split: ordered``, published); ``medrec_split: random`` shuffles the patients
  first with ``medrec_split_seed`` (default: ``seed``), same proportions;
* every visit is predicted from its full prefix (diagnoses/procedures of visits 1..t, medications of 1..t-1);
* validation: metrics on all validation patients every ``eval_step`` epochs; ``valid_metric`` (``jaccard``)
  drives early stopping and model selection;
* test: mean and std over ``medrec_bootstrap_rounds`` (10) samples of ``round(0.8 * n)`` test patients drawn with
  replacement (``np.random.seed(medrec_bootstrap_seed=0)`` sequence), reported as ``<metric>`` and ``<metric>_std``.

``MedRecDataset`` is a thin object, not a RecBole ``Dataset``: the visit structure (whole patients, code sets per
visit) has no RecBole interaction equivalent, and RecBole's Config/registry only need the dataset name.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from time import time

import numpy as np
import torch
from recbole.evaluator.collector import DataStruct
from recbole.trainer import Trainer
from tqdm import tqdm

from recbole_ext.config import AT_LEAST_ONE, SEED, UNIT_INTERVAL, Bounds, config_value
from recbole_ext.data.medrec import CSRCodes, MedRecData, load_medrec, split_patients
from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec.base import config_flag
from recbole_ext.evaluation.medrec_metrics import THRESHOLD, bootstrap_rows, summarise_rounds
from recbole_ext.training.optim import fuse_adam_on_cpu
from recbole_ext.training.tasks import Task
from recbole_ext.utils.paths import bundled_elsewhere, dataset_root
from recbole_ext.utils.segments import concatenated_ranges, positions_in_segments

PHASES = ("train", "valid", "test")


def number_key(config, key: str, default, kind=int, bounds: Bounds | None = None):
    """A numeric config value, checked: a bad value is a one-line UserError naming the key."""
    value = config_value(config, key, default)
    try:
        if isinstance(value, bool) or (kind is int and float(value) != int(float(value))):
            raise ValueError
        value = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"config key '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r}",
                        fix=f"set {key} (default {default})") from None
    if bounds is not None and not bounds.admits(value):
        raise UserError(f"config key '{key}' = {value} must be {bounds}", fix=f"set {key} {bounds} (default {default})")
    return value


# The task's numeric keys: (default, type, bounds). MedRecTask.check_data checks them all before any data is read.
TASK_NUMBERS = {
    "medrec_threshold": (THRESHOLD, float, UNIT_INTERVAL),
    "medrec_bootstrap_rounds": (10, int, AT_LEAST_ONE),
    "medrec_bootstrap_frac": (0.8, float, Bounds(0, 1, low_open=True)),  # a sample of no patient has no metrics
    "medrec_bootstrap_seed": (0, int, SEED),
    "patients_per_batch": (1, int, AT_LEAST_ONE),  # the published loops: one patient per optimiser step
    "eval_patients_per_batch": (64, int, AT_LEAST_ONE),
}


def task_number(config, key: str):
    """A key of ``TASK_NUMBERS``, checked (``number_key``)."""
    default, kind, bounds = TASK_NUMBERS[key]
    return number_key(config, key, default, kind, bounds)


def fused_adam_enabled(config) -> bool:
    """``fused_adam`` of the medication task: True unless set to False (the default lives here, not in overall.yaml)."""
    return config_flag(config, "fused_adam", True)


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
        seed = number_key(config, "medrec_split_seed", config_value(config, "seed", 0), int, SEED)
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

    def __len__(self) -> int:
        return (self.n_patients + self.batch_size - 1) // self.batch_size

    def __bool__(self) -> bool:
        return self.n_patients > 0

    def __iter__(self):
        order = self._rng.permutation(self.n_patients) if self.shuffle else np.arange(self.n_patients)
        for s in range(0, self.n_patients, self.batch_size):
            yield self.dataset.collate(self.phase, order[s:s + self.batch_size])


def _model_probabilities(model, batch: VisitBatch) -> torch.Tensor:
    if hasattr(model, "predict_visits"):
        return model.predict_visits(batch)
    return torch.sigmoid(model(batch))


class MedRecTrainer(Trainer):
    """RecBole Trainer for VisitBatch models: ``calculate_loss(batch)`` to train, ``predict_visits(batch)`` to score.

    RecBole's ``fit`` (epochs, validation every ``eval_step``, early stopping on ``valid_metric`` with
    ``stopping_step``, checkpointing) is reused; this class replaces the epoch loop and the evaluation.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self._best_state = None
        self.threshold = task_number(config, "medrec_threshold")
        self.bootstrap_rounds = task_number(config, "medrec_bootstrap_rounds")
        self.bootstrap_frac = task_number(config, "medrec_bootstrap_frac")
        self.bootstrap_seed = task_number(config, "medrec_bootstrap_seed")

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer; plain Adam on CPU runs fused (``fused_adam``, default True: the same update in one
        kernel; bench/medrec_epoch.py builds its optimizer through this same rule for every model)."""
        return fuse_adam_on_cpu(super()._build_optimizer(**kwargs), fused_adam_enabled(self.config))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        total = None
        it = tqdm(train_data, total=len(train_data), ncols=100, desc=f"Train {epoch_idx:>4}") if show_progress \
            else train_data
        for batch in it:
            batch = batch.to(self.device)
            self.optimizer.zero_grad()
            losses = loss_func(batch)
            if isinstance(losses, tuple):
                loss = sum(losses)
                item = tuple(x.item() for x in losses)
                total = item if total is None else tuple(a + b for a, b in zip(total, item))
            else:
                loss = losses
                total = losses.item() if total is None else total + losses.item()
            self._check_nan(loss)
            loss.backward()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            self.optimizer.step()
        return total if total is not None else 0.0

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)

    @torch.no_grad()
    def predict_split(self, eval_data, show_progress=False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities [N, n_med], boolean targets [N, n_med] and patient row [N] of every visit of a split."""
        self.model.eval()
        probs, targets, patients = [], [], []
        it = tqdm(eval_data, total=len(eval_data), ncols=100, desc="Evaluate") if show_progress else eval_data
        for batch in it:
            batch = batch.to(self.device)
            prob = _model_probabilities(self.model, batch)
            n_med = batch.target.shape[-1]
            if prob.shape != batch.target.shape:
                raise RuntimeError(f"{type(self.model).__name__}.predict_visits returned shape {tuple(prob.shape)}, "
                                   f"expected {tuple(batch.target.shape)} [P, T, n_med={n_med}]")
            mask = batch.visit_mask
            probs.append(prob[mask].float().cpu().numpy())
            targets.append(batch.target[mask].cpu().numpy() > 0)
            rows = batch.patient_ids.unsqueeze(1).expand_as(mask)[mask]
            patients.append(rows.cpu().numpy())
        if not probs:
            return np.zeros((0, 0), np.float32), np.zeros((0, 0), bool), np.zeros(0, np.int64)
        return np.concatenate(probs), np.concatenate(targets), np.concatenate(patients)

    def _struct(self, prob, target, patient, ddi_adj) -> DataStruct:
        struct = DataStruct()
        for key, value in (("medrec.prob", prob), ("medrec.target", target), ("medrec.patient", patient),
                           ("medrec.ddi_adj", ddi_adj)):
            struct.set(key, value)
        return struct

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            self._load_best(model_file)
        start = time()
        prob, target, patient = self.predict_split(eval_data, show_progress)
        adj = eval_data.dataset.ddi_adj.numpy()
        if not getattr(eval_data, "bootstrap", False):
            result = self.evaluator.evaluate(self._struct(prob, target, patient, adj))
        else:
            result = self.bootstrap_evaluate(prob, target, patient, adj)
        self.logger.debug(f"medrec evaluation of {len(prob)} visits took {time() - start:.2f}s")
        return result

    def bootstrap_evaluate(self, prob, target, patient, adj) -> OrderedDict:
        """Mean and population std of every configured metric over the bootstrap samples of patients."""
        rounds = [self.evaluator.evaluate(self._struct(prob[rows], target[rows], groups, adj))
                  for rows, groups in bootstrap_rows(patient, self.bootstrap_rounds, self.bootstrap_frac,
                                                     self.bootstrap_seed)]
        return OrderedDict(summarise_rounds(rounds))

    def _load_best(self, model_file):
        """The selected weights: from the checkpoint file when one was written, else from memory."""
        from recbole_ext import checkpoint

        path = model_file or self.saved_model_file
        if model_file is not None or (path and Path(path).is_file()):
            checkpoint.load_weights(self.model, path, map_location=self.device)
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        else:
            raise UserError("no trained weights to evaluate", fix="call fit() first or pass model_file")


class MedRecTask(Task):
    """Task object for ``task: medrec`` (interface in docs/CONTRACTS.md)."""

    name = "medrec"

    def check_data(self, config) -> None:
        from recbole_ext.evaluation.medrec_metrics import METRICS

        known = {cls.__name__.lower(): cls.__name__ for cls in METRICS}
        other = [m for m in config_value(config, "metrics", []) if str(m).lower() not in known]
        if other:
            raise UserError(f"metrics {other} cannot score medication sets (task: medrec)",
                            fix=f"use metrics from {sorted(known.values())}")
        for key in TASK_NUMBERS:  # before any data is read
            task_number(config, key)
        dataset_folder(config)

    def create_dataset(self, config) -> MedRecDataset:
        return MedRecDataset(config)

    def data_preparation(self, config, dataset: MedRecDataset):
        train_bs = task_number(config, "patients_per_batch")
        eval_bs = task_number(config, "eval_patients_per_batch")
        shuffle = bool(config_value(config, "medrec_shuffle", False))
        return (MedRecDataLoader(config, dataset, "train", train_bs, shuffle),
                MedRecDataLoader(config, dataset, "valid", eval_bs, False),
                MedRecDataLoader(config, dataset, "test", eval_bs, False))

    def trainer_class(self, config, model_class):
        return MedRecTrainer

    def check_model(self, model_class) -> None:
        if not (hasattr(model_class, "calculate_loss") and hasattr(model_class, "predict_visits")):
            raise UserError(f"model {getattr(model_class, '__name__', model_class)} cannot run on a medication "
                            f"dataset (task: medrec): it must take VisitBatches (calculate_loss and predict_visits)",
                            fix="use a medication model (CafeMed, SafeDrug, GAMENet, RETAIN, ...) or a "
                                "top-K dataset")

    def protocol(self, config) -> dict:
        return {"task": "medrec",
                "split": f"by patient 2/3 train, 1/6 test, 1/6 valid ({config_value(config, 'medrec_split', 'ordered')})",
                "prediction": "each visit from its full prefix; set = {m : p_m >= "
                              f"{config_value(config, 'medrec_threshold', THRESHOLD)}}}",
                "aggregation": "jaccard/f1/prauc per visit, mean per patient, mean over patients; ddi_rate over all "
                               "predicted pairs; avg_med per visit",
                "test": f"mean/std over {config_value(config, 'medrec_bootstrap_rounds', 10)} bootstrap samples of "
                        f"{config_value(config, 'medrec_bootstrap_frac', 0.8)} x test patients "
                        f"(seed {config_value(config, 'medrec_bootstrap_seed', 0)})",
                "model_selection": f"best {config_value(config, 'valid_metric', 'jaccard')} on validation"}
