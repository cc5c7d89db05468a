"""Data-parallel training and exact sharded evaluation on torch.distributed (``torchrun --nproc_per_node=N``).

``with_distributed(TrainerClass)`` is the trainer of a run with more than one process. What is the same as one
process, and how (docs/scaling.md has the user's view):

* **The global batch and the seed stream.** Every rank draws the same global batch as one process would (the same
  seeds, the same shuffles, the same negatives: the loaders are replicated, which costs sampling, not model work)
  and takes its contiguous share of the rows.
* **The loss.** A model declares ``distributed_loss``:

  - ``"row_mean"``: its loss is a mean over the rows of a batch (interactions; visits for the medication task).
    Each rank's loss on its rows is weighted by ``rows_here * world / rows_in_batch``, so DistributedDataParallel's
    gradient average is the gradient of the global batch's mean. Exact except for dropout: one process draws one
    mask for the whole batch, the ranks draw masks for their own rows (the same distribution, other numbers).
  - ``"replicated"`` (the default of every model that does not declare a mode): every rank computes the loss of the
    whole global batch and DDP averages identical gradients. Exact for any loss (in-batch contrastive terms, batch
    norms of embeddings, dropout included); the right mode for full-graph models (MGCN, MambaRec, LATTICE,
    FREEDOM), whose step is a propagation over the whole graph that data parallelism cannot split anyway.

  RecBole's built-in BPR and LightGCN are ``row_mean`` (their losses are row means: BPRLoss and EmbLoss / batch).
* **Gradients** are all-reduced by DistributedDataParallel (gloo on CPU, NCCL on CUDA); clipping, the optimiser
  step, the learning-rate schedule and early stopping then see the same values on every rank. The step's loss is
  summed over ranks (one small all-reduce), so the logged loss and the NaN stop are the global batch's.
* **Evaluation** is sharded in contiguous blocks of the evaluation batches (the batches one process would score,
  so every score is computed exactly as there), and what the metrics read (RecBole's collector, or the medication
  probabilities) is gathered in batch order: every metric, non-additive and bootstrap ones included, is computed
  from the same numbers as in one process. Every rank computes the metrics; early stopping agrees by construction.
* **Files**: rank 0 alone writes the run directory, checkpoint and result; the selected weights are broadcast
  from rank 0 before the test.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType

from recbole_ext.errors import UserError
from recbole_ext.utils import distributed as dist

LOSS_MODES = ("row_mean", "replicated")
# RecBole built-ins whose calculate_loss is a mean over the batch's rows (checked in RecBole 1.2.1's source:
# BPRLoss is a mean, EmbLoss divides by the batch size); every other built-in runs replicated.
ROW_MEAN_BUILTINS = frozenset({"BPR", "LightGCN"})
# the collector's per-row resources (RecBole 1.2.1 Collector.eval_batch_collect), gathered in batch order
_COLLECTED_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


def loss_mode(model, config=None) -> str:
    """How a data-parallel run splits ``model``'s loss (module docstring); the config key ``distributed_loss:
    replicated`` forces replication (bitwise the same training as one process, no loss work split)."""
    forced = config["distributed_loss"] if config is not None and "distributed_loss" in config else None
    if forced not in (None, "replicated"):
        raise UserError(f"distributed_loss can only force 'replicated', got {forced!r}",
                        fix="leave distributed_loss unset (the model's own mode) or set it to replicated")
    if forced:
        return forced
    cls = type(model)
    mode = getattr(cls, "distributed_loss", None)
    if mode is None:
        mode = "row_mean" if cls.__name__ in ROW_MEAN_BUILTINS and cls.__module__.startswith("recbole.") \
            else "replicated"
    if mode not in LOSS_MODES:
        raise UserError(f"{cls.__name__}.distributed_loss must be one of {LOSS_MODES}, got {mode!r}",
                        fix="declare 'row_mean' only when calculate_loss is a mean over the batch's rows")
    return mode


def shard_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[start, stop)`` of ``n`` things (shares differ by at most one)."""
    return n * rank // world, n * (rank + 1) // world


class _Step(torch.nn.Module):
    """What DistributedDataParallel wraps: one training step's loss, so its gradient hooks see every step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch, loss_func):
        if batch is None:  # this rank has no rows in this global batch: zero gradients, still one reduction
            return sum((p.reshape(-1)[:1] * 0.0).sum() for p in self.model.parameters() if p.requires_grad)
        return loss_func(batch)


def has_unused_parameters(model) -> bool:
    """Whether some parameters of ``model`` may get no gradient in a step: DDP must then look for them after every
    forward (a graph traversal per step). recbole-ext models declare it (``distributed_unused_parameters``, e.g.
    LATTICE, whose feature projections are unused in steps that reuse its learned graph); RecBole's built-ins other
    than BPR and LightGCN are assumed to."""
    cls = type(model)
    declared = getattr(cls, "distributed_unused_parameters", None)
    if declared is not None:
        return bool(declared)
    return cls.__module__.startswith("recbole.") and cls.__name__ not in ROW_MEAN_BUILTINS


def _wrap(model, device):
    from torch.nn.parallel import DistributedDataParallel

    # broadcast_buffers=False: every rank builds the same buffers (graphs, BatchNorm statistics) from the same
    # data and seed; syncing them (at start or every step) would cost and cannot handle sparse graphs. torch 2.13
    # deprecates the name, but its replacement still syncs at start.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(_Step(model), device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, find_unused_parameters=has_unused_parameters(model))


class _BatchBlock:
    """Batches ``[start, stop)`` of a medication loader (its ``batch_block``), as ``predict_split`` iterates them."""

    def __init__(self, loader, start: int, stop: int):
        self.loader, self.start, self.stop = loader, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        return self.loader.batch_block(self.start, self.stop)


class DistributedTraining:
    """Mix in first (outermost below the history): the epoch loop, checkpoints and the selected weights."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.loss_mode = loss_mode(model, config)
        self.ddp_step = _wrap(model, self.device)
        self.logger.info(f"data-parallel training: rank {dist.rank()} of {dist.world_size()}, "
                         f"loss mode {self.loss_mode}")

    # ---------------------------------------------------------------------------------------------- training
    def _global_batches(self, train_data):
        """``(local batch or None, rows here, rows in the global batch)`` for each global batch of the epoch."""
        rank, world = dist.rank(), dist.world_size()
        replicated = self.loss_mode == "replicated"
        if hasattr(train_data, "row_batches"):  # the medication loader: collate only this rank's patients
            data = train_data.dataset
            for rows in train_data.row_batches():
                start, stop = (0, len(rows)) if replicated else shard_range(len(rows), rank, world)
                here = rows[start:stop]
                n_all = data.visit_count(train_data.phase, rows)
                n_here = data.visit_count(train_data.phase, here)
                yield (data.collate(train_data.phase, here).to(self.device) if len(here) else None), n_here, n_all
            return
        for interaction in train_data:
            n_all = len(interaction)
            start, stop = (0, n_all) if replicated else shard_range(n_all, rank, world)
            local = interaction[start:stop] if (start, stop) != (0, n_all) else interaction
            yield (local.to(self.device) if stop > start else None), stop - start, n_all

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.model.train()
        loss_func = loss_func or self.model.calculate_loss
        world = dist.world_size()
        scaler = torch.amp.GradScaler(self.device.type, enabled=bool(getattr(self, "enable_scaler", False)))
        total = None
        for local, n_here, n_all in self._global_batches(train_data):
            self.optimizer.zero_grad()
            with torch.autocast(device_type=self.device.type, enabled=bool(getattr(self, "enable_amp", False))):
                losses = self.ddp_step(local, loss_func)
            parts = tuple(losses) if isinstance(losses, tuple) else (losses,)
            weight = 1.0 if self.loss_mode == "replicated" else n_here * world / n_all
            loss = sum(parts) * weight
            # the global batch's loss (and its parts) on every rank: the logged value and the NaN stop agree
            reported = torch.stack([p.detach().float().reshape(()) * weight for p in parts]).cpu()
            dist.all_reduce_sum(reported, "summing the step's loss")
            reported = (reported / world).tolist()
            self._check_nan(torch.tensor(sum(reported)))
            step = tuple(reported) if isinstance(losses, tuple) else reported[0]
            total = step if total is None else (tuple(a + b for a, b in zip(total, step))
                                                if isinstance(step, tuple) else total + step)
            with dist.failures_reported("reducing gradients"):
                scaler.scale(loss).backward()
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.clip_grad_norm)
            scaler.step(self.optimizer)
            scaler.update()
        return total if total is not None else 0.0

    # ------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if dist.is_main():
            return super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
        return None

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            self._load_best_everywhere(model_file)
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file,
                                show_progress=show_progress and dist.is_main())

    def _load_best_everywhere(self, model_file) -> None:
        """Rank 0 reads the selected weights (it alone wrote them); every rank receives them."""
        from recbole_ext import checkpoint

        if dist.is_main():
            if hasattr(self, "_load_best"):  # the medication trainer: the file, or its in-memory copy
                self._load_best(model_file)
            else:
                checkpoint.load_weights(self.model, model_file or self.saved_model_file, map_location=self.device)
        dist.broadcast_tensors(self.model.state_dict().values(), "sharing the selected weights")


class ShardedMedRecPrediction:
    """Mix in with :class:`DistributedTraining` for the medication trainer: each rank predicts a contiguous block
    of the evaluation batches; the probabilities, targets and patient rows are gathered in batch order."""

    def predict_split(self, eval_data, show_progress=False):
        start, stop = shard_range(len(eval_data), dist.rank(), dist.world_size())
        part = super().predict_split(_BatchBlock(eval_data, start, stop), show_progress)
        parts = [p for p in dist.all_gather_objects(part, "gathering predictions") if len(p[0])]
        if not parts:
            return part
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


class ShardedEvaluation(Trainer):
    """RecBole's ``Trainer.evaluate`` loop with each rank scoring a contiguous block of the batches and the
    collector's per-row resources gathered in batch order. Sits just above ``Trainer`` in the method order, so the
    trainers' own ``evaluate`` (checkpoint loading, the FAISS index) run as in one process."""

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:  # DistributedTraining.evaluate has loaded and shared them
            raise RuntimeError("ShardedEvaluation expects the selected weights to be loaded already")
        self.model.eval()
        if isinstance(eval_data, FullSortEvalDataLoader):
            eval_func = self._full_sort_batch_eval
            if self.item_tensor is None:
                self.item_tensor = eval_data._dataset.get_item_feature().to(self.device)
        else:
            eval_func = self._neg_sample_batch_eval
        if self.config["eval_type"] == EvaluatorType.RANKING:
            self.tot_item_num = eval_data._dataset.item_num
        start, stop = shard_range(len(eval_data), dist.rank(), dist.world_size())
        for index, batched_data in enumerate(eval_data):
            if index >= stop:
                break
            if index >= start:
                interaction, scores, positive_u, positive_i = eval_func(batched_data)
                self.eval_collector.eval_batch_collect(scores, interaction, positive_u, positive_i)
        self.eval_collector.model_collect(self.model)
        struct = self.eval_collector.get_data_struct()  # on CPU
        mine = {key: struct[key] for key in _COLLECTED_KEYS if key in struct}
        gathered = dist.all_gather_objects(mine, "gathering evaluation results")
        for key in _COLLECTED_KEYS:
            pieces = [part[key] for part in gathered if key in part]
            if pieces:
                struct.set(key, torch.cat(pieces, dim=0))
        return self.evaluator.evaluate(struct)


def with_distributed(trainer_class: type) -> type:
    """``trainer_class`` for a data-parallel run (module docstring)."""
    if issubclass(trainer_class, DistributedTraining):
        return trainer_class
    front = (DistributedTraining, ShardedMedRecPrediction) if hasattr(trainer_class, "predict_split") \
        else (DistributedTraining,)
    if hasattr(trainer_class, "predict_split"):
        bases = (*front, trainer_class)
    elif trainer_class is Trainer:  # RecBole's own: the sharded loop is its evaluate
        bases = (*front, ShardedEvaluation)
    else:
        bases = (*front, trainer_class, ShardedEvaluation)
    return type(f"Distributed{trainer_class.__name__}", bases,
                {"__module__": __name__, "__doc__": f"{trainer_class.__name__}, data-parallel."})
