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

from collections import OrderedDict
from pathlib import Path
from time import time

import numpy as np
import torch
from recbole.evaluator.collector import DataStruct
from recbole.trainer import Trainer
from tqdm import tqdm

from recbole_ext.data.medrec_dataset import MedRecDataLoader, MedRecDataset, dataset_folder
from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.evaluation.medrec_metrics import METRICS, THRESHOLD, bootstrap_rows, summarise_rounds
from recbole_ext.options import AT_LEAST_ONE, SEED, UNIT_INTERVAL, Bounds, config_flag, config_value
from recbole_ext.training.optim import fuse_adam_on_cpu
from recbole_ext.training.tasks import Task

def fused_adam_enabled(config) -> bool:
    """``fused_adam`` of the medication task: True unless set to False (the default lives here, not in overall.yaml)."""
    return config_flag(config, "fused_adam", True)


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
        self.threshold = MedRecTask.option(config, "medrec_threshold")
        self.bootstrap_rounds = MedRecTask.option(config, "medrec_bootstrap_rounds")
        self.bootstrap_frac = MedRecTask.option(config, "medrec_bootstrap_frac")
        self.bootstrap_seed = MedRecTask.option(config, "medrec_bootstrap_seed")

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
            batch = batch.to(self.device, non_blocking=True)  # asynchronous from the page-locked batches on CUDA
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
            batch = batch.to(self.device, non_blocking=True)  # asynchronous from the page-locked batches on CUDA
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
    extra_config_keys = ("medrec_split_seed", "medrec_shuffle")  # default: the run's seed; no shuffling

    # The task's numeric options: (default, type, bounds), checked before any data is read (Task.check_config)
    numeric_options = {
        "medrec_threshold": (THRESHOLD, float, UNIT_INTERVAL),
        "medrec_bootstrap_rounds": (10, int, AT_LEAST_ONE),
        "medrec_bootstrap_frac": (0.8, float, Bounds(0, 1, low_open=True)),  # a sample of no patient has no metrics
        "medrec_bootstrap_seed": (0, int, SEED),
        "patients_per_batch": (1, int, AT_LEAST_ONE),  # the published loops: one patient per optimiser step
        "eval_patients_per_batch": (64, int, AT_LEAST_ONE),
    }

    def check_metrics(self, config) -> None:
        known = {cls.__name__.lower(): cls.__name__ for cls in METRICS}
        other = [m for m in config_value(config, "metrics", []) if str(m).lower() not in known]
        if other:
            raise UserError(f"metrics {other} cannot score medication sets (task: medrec)",
                            fix=f"use metrics from {sorted(known.values())}")

    def check_data(self, config) -> None:
        dataset_folder(config)

    def create_dataset(self, config) -> MedRecDataset:
        return MedRecDataset(config)

    def data_preparation(self, config, dataset: MedRecDataset):
        train_bs = MedRecTask.option(config, "patients_per_batch")
        eval_bs = MedRecTask.option(config, "eval_patients_per_batch")
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
