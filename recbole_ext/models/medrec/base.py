"""Shared base of the medication-recommendation models and their DDI-controlled loss.

Contract with the medication task (data, trainer, metrics), see ``recbole_ext/data/visit_batch.py``:

* ``Model(config, dataset)``: ``dataset`` exposes ``n_diag, n_proc, n_med``, ``ddi_adj`` (FloatTensor
  ``[n_med, n_med]``) and ``train_visits()`` (training visits only, as ``(diag_lists, proc_lists, med_lists)``).
* ``forward(batch: VisitBatch) -> logits [P, T, n_med]``: one row per (patient, visit); the row of visit t only
  depends on diagnoses/procedures of visits 1..t and medications of visits 1..t-1. Padded visits hold garbage.
* ``calculate_loss(batch) -> scalar``: used by the trainer in training mode.
* ``predict_visits(batch) -> probabilities [P, T, n_med]``: used by the trainer in evaluation.

The loss (spec cafemed.md §2.1, CausalMed ``training.py``) is computed per visit and averaged over the visits of
the batch: ``L = beta * (w_bce * BCE + w_mlm * MarginLoss) + (1 - beta) * L_ddi`` where ``beta = 1`` if the visit's
predicted set (threshold 0.5) has DDI rate <= ``target_ddi`` and ``min(exp(coef * (1 - rate / target_ddi)), 1)``
otherwise (``ddi_beta: exp``; SafeDrug's paper's ``max(0, 1 + (target_ddi - rate) / kp)`` is ``ddi_beta: linear``,
its released code's ``min(0, 1 + (target_ddi - rate) / kp)`` is ``ddi_beta: linear_min``). The published code takes
one optimiser step per visit; here a batch of patients is one step.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import InputType, ModelType

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.options import NON_NEGATIVE, POSITIVE, check_choice, check_options, config_flag, config_value


def previous_visit(codes: torch.Tensor) -> torch.Tensor:
    """Shift ``[P, T, L]`` codes one visit later: row t holds visit t-1's codes, row 0 is all padding."""
    return torch.cat([torch.zeros_like(codes[:, :1]), codes[:, :-1]], dim=1)


def multihot(codes: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., L]`` 1-based ids (0 = pad) -> ``[..., n]`` float multi-hot (column j = id j+1)."""
    out = torch.zeros(*codes.shape[:-1], n + 1, device=codes.device)
    out.scatter_(-1, codes, 1.0)
    return out[..., 1:]


def margin_targets(target: torch.Tensor) -> torch.Tensor:
    """Multi-hot ``[N, M]`` -> ``multilabel_margin_loss`` targets: positive indices first, then -1."""
    n_labels = target.shape[-1]
    idx = torch.arange(n_labels, device=target.device).expand_as(target)
    order = torch.where(target > 0, idx, idx + n_labels).sort(dim=-1).values
    return torch.where(order < n_labels, order, torch.full_like(order, -1))


def set_ddi_rate(pred_set: torch.Tensor, ddi_adj: torch.Tensor) -> torch.Tensor:
    """Per-row DDI rate of 0/1 sets ``[N, M]``: interacting unordered pairs / all unordered pairs (0 if < 2 meds)."""
    pairs_hit = ((pred_set @ ddi_adj) * pred_set).sum(-1) / 2
    k = pred_set.sum(-1)
    all_pairs = k * (k - 1) / 2
    return torch.where(all_pairs > 0, pairs_hit / all_pairs.clamp(min=1), torch.zeros_like(k))


class MedRecModel(AbstractRecommender):
    """Base of every medication model: reads the shared loss keys and implements the DDI-controlled loss."""

    type = ModelType.GENERAL
    input_type = InputType.POINTWISE
    required_task = "medrec"  # checked before any data is loaded (recbole_ext.config.build_config)
    # The medication task uses its own dataset and trainer; the registry/task use this flag to accept the model.
    medrec_model = True
    # calculate_loss is a mean over the batch's visits: a data-parallel run shards patients and weights each
    # rank's loss by its visits (recbole_ext/training/distributed.py)
    distributed_loss = "row_mean"
    # checked before any data is loaded (recbole_ext.config.check_options, which adds COMMON_BOUNDS: embedding_size,
    # dropout_prob, ...); subclasses add their own keys
    option_bounds = {"loss_bce_weight": NON_NEGATIVE,
                     "loss_margin_weight": NON_NEGATIVE, "ddi_loss_scale": NON_NEGATIVE, "target_ddi": POSITIVE,
                     "ddi_anneal_coef": NON_NEGATIVE, "ddi_kp": POSITIVE}
    # the other loss keys this constructor reads; their defaults are in the code, not in every model's YAML
    extra_config_keys = ("use_ddi_loss", "ddi_beta", "margin_on")

    def __init__(self, config, dataset):
        super().__init__()
        check_options(type(self), config)
        for attr in ("n_diag", "n_proc", "n_med", "ddi_adj"):
            if not hasattr(dataset, attr):
                raise UserError(
                    f"model {type(self).__name__} needs a medication dataset (missing '{attr}')",
                    fix="use a dataset whose YAML sets 'task: medrec'",
                )
        self.n_diag, self.n_proc, self.n_med = int(dataset.n_diag), int(dataset.n_proc), int(dataset.n_med)
        ddi = torch.as_tensor(dataset.ddi_adj, dtype=torch.float32)
        if ddi.shape != (self.n_med, self.n_med):
            raise UserError(f"ddi_adj has shape {tuple(ddi.shape)}, expected ({self.n_med}, {self.n_med})",
                            fix="rebuild the dataset's DDI matrix for its medication vocabulary")
        self.register_buffer("ddi_adj", ddi, persistent=False)
        self.device = config_value(config, "device", torch.device("cpu"))
        self.embedding_size = int(config_value(config, "embedding_size", 64))
        self.bce_weight = float(config_value(config, "loss_bce_weight", 0.95))
        self.margin_weight = float(config_value(config, "loss_margin_weight", 0.05))
        self.use_ddi_loss = config_flag(config, "use_ddi_loss", True)
        self.ddi_loss_scale = float(config_value(config, "ddi_loss_scale", 0.0005))
        self.target_ddi = float(config_value(config, "target_ddi", 0.06))
        self.ddi_anneal_coef = float(config_value(config, "ddi_anneal_coef", 2.5))
        # "exp": CausalMed's exp(coef * (1 - rate / target)); "linear": SafeDrug's paper, max(0, 1 + (target - rate)
        # / kp); "linear_min": SafeDrug's released training script, min(0, ...) (<= 0: the task loss is switched off
        # or even pushed the wrong way while the DDI rate is above target)
        self.ddi_beta = check_choice("ddi_beta", config_value(config, "ddi_beta", "exp"),
                                     ("exp", "linear", "linear_min"))
        self.ddi_kp = float(config_value(config, "ddi_kp", 0.05))
        self.margin_on = check_choice("margin_on", config_value(config, "margin_on", "prob"), ("prob", "logit"))

    # -- to implement -------------------------------------------------------------------------------------
    def forward(self, batch: VisitBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------
    def predict_visits(self, batch: VisitBatch) -> torch.Tensor:
        return torch.sigmoid(self.forward(batch))

    def visit_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-visit DDI-controlled loss for flat ``[N, M]`` logits and multi-hot targets."""
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
        # CausalMed feeds probabilities to the margin loss (spec §7.2 item 14); "logit" is the corrected variant.
        margin_input = prob if self.margin_on == "prob" else logits
        mlm = F.multilabel_margin_loss(margin_input, margin_targets(target), reduction="none")
        task = self.bce_weight * bce + self.margin_weight * mlm
        if not self.use_ddi_loss:
            return task
        ddi_term = self.ddi_loss_scale * ((prob @ self.ddi_adj) * prob).sum(-1)
        with torch.no_grad():
            rate = set_ddi_rate((prob >= 0.5).to(prob.dtype), self.ddi_adj)
            if self.ddi_beta == "exp":
                beta = torch.exp(self.ddi_anneal_coef * (1 - rate / self.target_ddi)).clamp(max=1.0)
            elif self.ddi_beta == "linear":
                beta = (1 + (self.target_ddi - rate) / self.ddi_kp).clamp(min=0.0, max=1.0)
            else:
                beta = (1 + (self.target_ddi - rate) / self.ddi_kp).clamp(max=0.0)
            beta = torch.where(rate <= self.target_ddi, torch.ones_like(beta), beta)
        return beta * task + (1 - beta) * ddi_term

    def calculate_loss(self, batch: VisitBatch) -> torch.Tensor:
        logits = self.forward(batch)[batch.visit_mask]
        return self.visit_losses(logits, batch.target[batch.visit_mask]).mean()

    def predict(self, interaction):
        raise UserError(f"{type(self).__name__} scores whole visits", fix="use predict_visits(batch) (medrec task)")

    def full_sort_predict(self, interaction):
        return self.predict(interaction)


def embedding_bag_sum(table: torch.nn.Embedding, codes: torch.Tensor) -> torch.Tensor:
    """Sum of embeddings of ``[..., L]`` ids ignoring id 0 -> ``[..., d]``."""
    return (table(codes) * (codes > 0).unsqueeze(-1)).sum(-2)


class DiagProcHistory(torch.nn.Module):
    """GAMENet/SafeDrug patient encoder: per-visit diagnosis and procedure embedding sums, one GRU each over the
    visits; returns ``[o_d; o_p]`` at every visit, ``[P, T, 2 * hidden]`` (the prefix encoding of each visit).

    Dropout acts on the visit sums, or with ``code_dropout`` on every code embedding before the sum (SafeDrug's and
    GAMENet's ``dropout(embeddings(codes))`` then ``sum`` / ``mean``, MoleRec's ``rnn_dropout``). ``pool="mean"``
    averages a visit's code embeddings instead of summing them (GAMENet)."""

    def __init__(self, n_diag: int, n_proc: int, dim: int, hidden: int, dropout: float, code_dropout: bool = False,
                 pool: str = "sum"):
        super().__init__()
        self.code_dropout = code_dropout
        self.pool = pool
        self.diag_emb = torch.nn.Embedding(n_diag + 1, dim, padding_idx=0)
        self.proc_emb = torch.nn.Embedding(n_proc + 1, dim, padding_idx=0)
        for emb in (self.diag_emb, self.proc_emb):
            torch.nn.init.uniform_(emb.weight, -0.1, 0.1)
        self.dropout = torch.nn.Dropout(dropout)
        self.diag_gru = torch.nn.GRU(dim, hidden, batch_first=True)
        self.proc_gru = torch.nn.GRU(dim, hidden, batch_first=True)

    def visit_sum(self, table: torch.nn.Embedding, codes: torch.Tensor) -> torch.Tensor:
        if self.code_dropout:
            out = (self.dropout(table(codes)) * (codes > 0).unsqueeze(-1)).sum(-2)
        else:
            out = self.dropout(embedding_bag_sum(table, codes))
        if self.pool == "mean":  # a visit without codes (padding) stays zero
            out = out / (codes > 0).sum(-1, keepdim=True).clamp(min=1)
        return out

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        o_d, _ = self.diag_gru(self.visit_sum(self.diag_emb, batch.diag))
        o_p, _ = self.proc_gru(self.visit_sum(self.proc_emb, batch.proc))
        return torch.cat([o_d, o_p], -1)
