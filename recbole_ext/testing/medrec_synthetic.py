"""Synthetic visit data with planted diagnosis->medication effects, for tests and the epoch benchmark.

Not a dataset preparer (that is ``recbole_ext.data.prepare.synthetic_ehr``): this builds an in-memory object with
the medication-dataset contract (``n_diag, n_proc, n_med, ddi_adj, train_visits()``) plus padded ``VisitBatch``
lists and a minimal train/evaluate loop, so the models can be checked without the medication task.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recbole_ext.data.visit_batch import VisitBatch


@dataclass
class SyntheticVisits:
    n_diag: int
    n_proc: int
    n_med: int
    ddi_adj: torch.Tensor
    patients: list            # list of patients; patient = list of (diag ids, proc ids, med ids) arrays, 1-based
    planted_dm: np.ndarray    # [n_diag, n_med] 0/1 planted causal effects
    train_idx: np.ndarray
    valid_idx: np.ndarray
    test_idx: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def med_tokens(self) -> list[str]:
        """Real ATC3 codes from the bundled SMILES map, so SafeDrug can build its molecular graphs."""
        from recbole_ext.models.medrec.safedrug import load_drug_resources

        codes = sorted(k for k in load_drug_resources()[0] if k[:1].isupper())
        return (codes * (self.n_med // len(codes) + 1))[:self.n_med]

    def train_visits(self):
        visits = [v for p in self.train_idx for v in self.patients[p]]
        return [v[0] for v in visits], [v[1] for v in visits], [v[2] for v in visits]

    def batches(self, split: str, batch_size: int) -> list[VisitBatch]:
        idx = {"train": self.train_idx, "valid": self.valid_idx, "test": self.test_idx}[split]
        return [pad_patients([self.patients[p] for p in idx[i:i + batch_size]], idx[i:i + batch_size], self.n_med)
                for i in range(0, len(idx), batch_size)]


def pad_patients(patients, patient_ids, n_med: int) -> VisitBatch:
    n_p = len(patients)
    n_t = max(len(p) for p in patients)
    lens = [max(len(v[k]) for p in patients for v in p) for k in range(3)]
    arrays = [np.zeros((n_p, n_t, max(L, 1)), np.int64) for L in lens]
    mask = np.zeros((n_p, n_t), bool)
    for i, p in enumerate(patients):
        mask[i, :len(p)] = True
        for t, visit in enumerate(p):
            for k in range(3):
                arrays[k][i, t, :len(visit[k])] = visit[k]
    med = torch.from_numpy(arrays[2])
    target = torch.zeros(n_p, n_t, n_med + 1)
    target.scatter_(-1, med, 1.0)
    return VisitBatch(diag=torch.from_numpy(arrays[0]), proc=torch.from_numpy(arrays[1]), med=med,
                      visit_mask=torch.from_numpy(mask), target=target[..., 1:].contiguous(),
                      patient_ids=torch.as_tensor(np.asarray(patient_ids), dtype=torch.long))


def make_synthetic(n_patients=300, n_diag=60, n_proc=30, n_med=20, mean_extra_visits=1.4, diag_per_visit=6,
                   proc_per_visit=2, effects_per_diag=2, n_ddi_pairs=None, seed=0) -> SyntheticVisits:
    """Patients with chronic + acute diagnoses; each diagnosis planted to cause a few medications.

    Medications of a visit = effects of its diagnoses (each kept with p=0.9) and procedures (p=0.6), plus one
    random medication with p=0.3. Code popularity is Zipf-like, as in MIMIC.
    """
    rng = np.random.default_rng(seed)
    planted = np.zeros((n_diag, n_med), np.int8)
    for d in range(n_diag):
        planted[d, rng.choice(n_med, size=rng.integers(1, effects_per_diag + 1), replace=False)] = 1
    planted_pm = np.zeros((n_proc, n_med), np.int8)
    planted_pm[np.arange(n_proc), rng.integers(0, n_med, n_proc)] = 1
    diag_pop = 1.0 / np.arange(1, n_diag + 1) ** 0.8
    diag_pop /= diag_pop.sum()
    proc_pop = 1.0 / np.arange(1, n_proc + 1) ** 0.8
    proc_pop /= proc_pop.sum()

    ddi = np.zeros((n_med, n_med), np.float32)
    n_pairs = n_ddi_pairs if n_ddi_pairs is not None else max(1, int(0.05 * n_med * (n_med - 1) / 2))
    iu = np.triu_indices(n_med, 1)
    pick = rng.choice(iu[0].size, size=n_pairs, replace=False)
    ddi[iu[0][pick], iu[1][pick]] = 1
    ddi = ddi + ddi.T

    patients = []
    n_visits = 1 + rng.poisson(mean_extra_visits, n_patients)
    for n_v in n_visits:
        chronic = rng.choice(n_diag, size=max(1, diag_per_visit // 3), replace=False, p=diag_pop)
        visits = []
        for _ in range(n_v):
            n_acute = max(1, rng.poisson(diag_per_visit - len(chronic)))
            diags = np.unique(np.concatenate([chronic, rng.choice(n_diag, size=n_acute, p=diag_pop)]))
            procs = np.unique(rng.choice(n_proc, size=max(1, rng.poisson(proc_per_visit)), p=proc_pop))
            med_score = (planted[diags] * (rng.random((diags.size, n_med)) < 0.9)).any(0)
            med_score |= (planted_pm[procs] * (rng.random((procs.size, n_med)) < 0.6)).any(0)
            if rng.random() < 0.3:
                med_score[rng.integers(n_med)] = True
            if not med_score.any():
                med_score[planted[diags[0]].argmax()] = True
            visits.append((diags + 1, procs + 1, np.flatnonzero(med_score) + 1))
        patients.append(visits)
    order = np.arange(n_patients)
    n_train = 2 * n_patients // 3
    n_test = (n_patients - n_train) // 2
    return SyntheticVisits(n_diag, n_proc, n_med, torch.from_numpy(ddi), patients, planted,
                           order[:n_train], order[n_train + n_test:], order[n_train:n_train + n_test],
                           extra={"planted_pm": planted_pm})


def fit(model, batches, epochs: int, lr: float = 1e-3, seed: int = 0):
    """Minimal training loop (Adam, one step per batch), the trainer's contract in miniature."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for batch in batches:
            opt.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / len(batches))
    return losses


@torch.no_grad()
def evaluate(model, batches, ddi_adj: torch.Tensor) -> dict:
    """Patient-macro Jaccard (threshold 0.5) and micro DDI rate over all predicted sets (spec §5.1)."""
    model.eval()
    jac, ddi_hit, ddi_all, gt_hit, gt_all = [], 0.0, 0.0, 0.0, 0.0
    for batch in batches:
        prob = model.predict_visits(batch)
        pred = (prob >= 0.5).float()
        y = batch.target
        inter = (pred * y).sum(-1)
        union = ((pred + y) > 0).float().sum(-1)
        j = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
        m = batch.visit_mask.float()
        jac.append((j * m).sum(1) / m.sum(1))
        for sets, acc in ((pred, "p"), (y, "g")):
            s = sets[batch.visit_mask]
            hit = float((((s @ ddi_adj) * s).sum(-1) / 2).sum())
            k = s.sum(-1)
            allp = float((k * (k - 1) / 2).sum())
            if acc == "p":
                ddi_hit, ddi_all = ddi_hit + hit, ddi_all + allp
            else:
                gt_hit, gt_all = gt_hit + hit, gt_all + allp
    return {"jaccard": float(torch.cat(jac).mean()), "ddi": ddi_hit / max(ddi_all, 1.0),
            "data_ddi": gt_hit / max(gt_all, 1.0)}
