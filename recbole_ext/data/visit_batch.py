"""The tensor contract between the medication task (data, trainer, metrics) and medication models.

A batch holds whole patients, visits in order, padded. Model input for visit t: diagnoses and procedures of visits
1..t and medications of visits 1..t-1; target: the medication set of visit t. Models encode a patient's whole
history in one pass and return one row of logits per (patient, visit).

Code ids are 1-based inside each vocabulary; 0 is padding. ``n_diag``/``n_proc``/``n_med`` count real codes, so an
embedding table has ``n + 1`` rows and medication logits have ``n_med`` columns where column j is medication id j+1.

Model-facing API used by ``recbole_ext.training.medrec.MedRecTrainer``:

* ``model.calculate_loss(batch: VisitBatch) -> Tensor`` (a scalar, or a tuple of scalars that is summed), for training;
* ``model.predict_visits(batch: VisitBatch) -> FloatTensor [P, T, n_med]``: *probabilities* in [0, 1] (e.g.
  ``torch.sigmoid(self.forward(batch))``), for evaluation. Rows of padded visits (``visit_mask`` False) are ignored.
  The predicted set is ``{m : p_m >= 0.5}`` (config ``medrec_threshold``).

``patient_ids`` are rows of the split's patient list (``dataset.split_patients(phase)``), so a model can look up
per-patient precomputation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VisitBatch:
    diag: torch.LongTensor        # [P, T, Ld] diagnosis ids, 0 = pad
    proc: torch.LongTensor        # [P, T, Lp] procedure ids, 0 = pad
    med: torch.LongTensor         # [P, T, Lm] medication ids of the same visit (the target set), 0 = pad
    visit_mask: torch.BoolTensor  # [P, T] True where the visit exists
    target: torch.FloatTensor     # [P, T, n_med] multi-hot of ``med`` (column j = medication id j+1)
    patient_ids: torch.LongTensor  # [P] internal patient index (row of the split's patient list)

    def to(self, device, non_blocking: bool = False) -> "VisitBatch":
        return VisitBatch(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.__dict__.items()})

    def pin_memory(self) -> "VisitBatch":
        """The same batch in page-locked host memory (for a faster, asynchronous copy to a CUDA device)."""
        return VisitBatch(**{k: v.pin_memory() for k, v in self.__dict__.items()})

    @property
    def n_visits(self) -> int:
        return int(self.visit_mask.sum())

    def flat_target(self) -> torch.Tensor:
        """[N, n_med] targets of the existing visits, in (patient, visit) order."""
        return self.target[self.visit_mask]
