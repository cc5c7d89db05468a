"""The MMRec evaluation protocol for any RecBole general recommender (ext models and built-ins alike).

What differs from RecBole's defaults, and where it is implemented (mambarec spec §3-§4, §6.1):

* split by ``x_label`` (0/1/2), cold-start users dropped from valid/test ...... ``MultimodalDataset.build``
* full ranking over all items; ONLY TRAINING items masked, at validation AND test
  (RecBole masks train+valid at test) ............................................ ``MMRecEvalDataLoader``
* one uniform negative per positive, drawn from items seen in training, rejecting the user's training items
  (RecBole draws from all items); none for a pointwise model with ``train_neg_sample_args: None`` (BM3, MMRec's
  ``use_neg_sampling: False``) ................................................... ``TrainItemNegativeSampler``
* early stopping on valid Recall@20 with STRICT improvement (RecBole counts ties) ... ``MMRecTrainer.fit``
* LambdaLR ``decay ** (epoch / every)`` stepped once per epoch
  (``learning_rate_scheduler: [decay, every]``; MMRec's default [1.0, 50] is constant) ``MMRecTrainer``
* users per evaluation batch (``eval_users_per_batch``; RecBole divides eval_batch_size by n_items)

Each deviation has a switch for the RecBole behaviour (``mmrec_test_mask: train_valid``, ``neg_sampling_pool: all``,
``early_stop_ties: improve``), documented in docs/multimodal-data.md. Metrics: RecBole's Recall, NDCG, Precision
and MAP already use MMRec's definitions (checked in tests/test_multimodal_protocol.py).
"""
from __future__ import annotations

import math
from logging import getLogger
from time import time

import numpy as np
import torch
from recbole.trainer import Trainer

from recbole_ext import checkpoint
from recbole_ext.data.multimodal_loaders import MMRecEvalDataLoader, TrainItemNegativeSampler, pairs_csr
from recbole_ext.errors import UserError
from recbole_ext.training import mmrec_zoo
from recbole_ext.training.optim import fuse_adam_on_cpu
from recbole_ext.training.row_adam import attach_row_adam
from recbole_ext.training.tasks import Task
from recbole_ext.utils.memory import release_freed_memory

__all__ = ["MMRecTrainer", "MultimodalTask", "TrainItemNegativeSampler", "lr_at"]  # the sampler: re-exported


class _NanLoss(Exception):
    pass


class MMRecTrainer(Trainer):
    """RecBole's Trainer with MMRec's epoch loop: strict early stopping, per-epoch LambdaLR, stop on NaN loss."""

    def __init__(self, config, model):
        super().__init__(config, model)
        schedule = config["learning_rate_scheduler"] or [1.0, 50]
        # decay <= 0 would give a negative or zero rate (and NaN for fractional powers of a negative decay)
        if len(schedule) != 2 or float(schedule[0]) <= 0 or float(schedule[1]) <= 0:
            raise UserError(f"learning_rate_scheduler must be [decay, every_epochs], got {schedule!r}",
                            fix="e.g. [0.96, 50] (MGCN/MambaRec) or [1.0, 50] (constant, MMRec default)")
        decay, every = float(schedule[0]), float(schedule[1])
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda epoch: decay ** (epoch / every))
        ties = str(config["early_stop_ties"] or "no_improvement")
        if ties not in ("no_improvement", "improve"):
            raise UserError(f"early_stop_ties must be 'no_improvement' (MMRec) or 'improve' (RecBole), got {ties!r}",
                            fix="set --early_stop_ties=no_improvement")
        self.ties_improve = ties == "improve"
        self.stopped_on_nan = False
        # big trainable feature tables: Adam step inside backward, no full-size gradient (same update)
        # (not with a loss scaler: the update would see scaled gradients)
        self.row_updated_tables = attach_row_adam(
            self.model, self.optimizer, config["clip_grad_norm"],
            enabled=config["row_update_features"] is not False and not self.enable_scaler)
        if self.row_updated_tables:
            self.logger.info(f"Adam steps of feature tables {self.row_updated_tables} run inside backward")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        """RecBole's evaluate; the selected weights are loaded without reading the optimiser state the checkpoint
        also holds (RecBole's torch.load reads all of it: +1.3 GB at once for MambaRec on Clothing)."""
        if eval_data and load_best_model:
            path = model_file or self.saved_model_file
            checkpoint.load_weights(self.model, path, map_location=self.device)
            self.logger.info(f"Loading model structure and parameters from {path}")
        return super().evaluate(eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress)

    def _check_nan(self, loss):
        if torch.isnan(loss):
            raise _NanLoss()

    def _build_optimizer(self, **kwargs):
        """RecBole's optimizer; plain Adam on CPU becomes fused Adam (``fused_adam: True``), the same update in one
        kernel per step: bench/mm_epoch.py measured 18 % less time per step and ~750 MB less peak memory with the
        4096-d trainable image table of MambaRec on clothing-shaped data."""
        return fuse_adam_on_cpu(super()._build_optimizer(**kwargs), self.config["fused_adam"] is not False)

    def _improved(self, score: float) -> bool:
        if self.best_valid_result is None:
            return True
        if self.ties_improve and score == self.best_valid_score:
            return True
        return score > self.best_valid_score if self.valid_metric_bigger else score < self.best_valid_score

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Train; after each ``eval_step`` epochs validate and keep the best checkpoint (strictly better only)."""
        self.eval_collector.data_collect(train_data)
        if self.start_epoch == 0:  # a resumed run (start_epoch > 0) goes on with its restored early-stopping count
            self.cur_step = 0
        for epoch in range(self.start_epoch, self.epochs):
            start = time()
            if hasattr(self.model, "pre_epoch_processing"):  # e.g. FREEDOM redraws its pruned graph every epoch
                self.model.train()  # first, so the model does not redraw again when _train_epoch calls train()
                self.model.pre_epoch_processing()
            try:
                loss = self._train_epoch(train_data, epoch, show_progress=show_progress)
            except _NanLoss:
                self.stopped_on_nan = True
                if self.best_valid_result is None:
                    raise UserError(f"training loss became NaN in epoch {epoch}, before any validated epoch",
                                    fix="lower learning_rate or check the input features") from None
                self.logger.warning(f"training loss became NaN in epoch {epoch}; stopping and keeping the best "
                                    f"epoch so far (MMRec behaviour)")
                break
            release_freed_memory()  # the step's freed activations, before evaluation allocates its own buffers
            self.train_loss_dict[epoch] = sum(loss) if isinstance(loss, tuple) else loss
            self.lr_scheduler.step()
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch, start, time(), loss))
            self._add_train_loss_to_tensorboard(epoch, loss)
            if self.eval_step <= 0 or not valid_data:
                if saved:
                    self._save_checkpoint(epoch, verbose=verbose)
                continue
            if (epoch + 1) % self.eval_step:
                continue
            score, result = self._valid_epoch(valid_data, show_progress=show_progress)
            if self._improved(score):
                self.best_valid_score, self.best_valid_result, self.cur_step = score, result, 0
                if saved:
                    self._save_checkpoint(epoch, verbose=verbose)
            else:
                self.cur_step += 1
            if verbose:
                self.logger.info(f"epoch {epoch} valid {self.valid_metric}={score:.4f} "
                                 f"(best {self.best_valid_score:.4f}, {self.cur_step} without improvement)")
            if callback_fn:
                callback_fn(epoch, score)
            if self.cur_step > self.stopping_step:
                if verbose:
                    self.logger.info(f"early stop after epoch {epoch}: best epoch "
                                     f"{epoch - self.cur_step * self.eval_step}")
                break
        return self.best_valid_score, self.best_valid_result


class MultimodalTask(Task):
    """``task: mmrec`` in a dataset YAML: MultimodalDataset + the MMRec protocol for any general recommender."""

    name = "mmrec"

    def check_model(self, model_class) -> None:
        mmrec_zoo.check_model(model_class)  # each general recommender's loader and trainer: training/mmrec_zoo.py

    def check_data(self, config) -> None:
        from recbole_ext.data.multimodal import is_derived_on_first_use, missing_dataset_error, mmrec_source_folder
        from pathlib import Path

        if (not Path(config["data_path"]).is_dir() and not mmrec_source_folder(config).is_dir()
                and not is_derived_on_first_use(config["dataset"])):
            raise missing_dataset_error(config)

    def create_dataset(self, config):
        from recbole_ext.data.multimodal import MultimodalDataset, mm_data_folder

        # the prepared folder, or a content-hashed cache of the MMRec source: loading never writes into either
        config["data_path"] = str(mm_data_folder(config))
        return MultimodalDataset(config)

    def data_preparation(self, config, dataset):
        train_ds, valid_ds, test_ds = dataset.build()
        pool = str(config["neg_sampling_pool"] or "train")
        train = mmrec_zoo.train_loader(config, train_ds, pool)
        users = train_ds.inter_feat[train_ds.uid_field].numpy()
        items = train_ds.inter_feat[train_ds.iid_field].numpy()
        train_hist = pairs_csr(users, items, dataset.user_num, dataset.item_num)[:2]
        test_mask = str(config["mmrec_test_mask"] or "train")
        if test_mask == "train":
            test_hist = train_hist
        elif test_mask == "train_valid":
            u = np.concatenate([users, valid_ds.inter_feat[valid_ds.uid_field].numpy()])
            i = np.concatenate([items, valid_ds.inter_feat[valid_ds.iid_field].numpy()])
            test_hist = pairs_csr(u, i, dataset.user_num, dataset.item_num)[:2]
        else:
            raise UserError(f"mmrec_test_mask must be 'train' (MMRec) or 'train_valid' (RecBole), got {test_mask!r}",
                            fix="set --mmrec_test_mask=train")
        valid = MMRecEvalDataLoader(config, valid_ds, train_hist)
        test = MMRecEvalDataLoader(config, test_ds, test_hist)
        negatives = f"negatives from {pool} items" if mmrec_zoo.samples_negatives(config) else "no negatives"
        getLogger().info(f"[MMRec protocol] train {len(train_ds)} / valid {len(valid_ds)} / test {len(test_ds)} "
                         f"interactions; {len(valid.uid_list)} valid and {len(test.uid_list)} test users; "
                         f"test mask: {test_mask}; {negatives}")
        return train, valid, test

    def trainer_class(self, config, model_class):
        return mmrec_zoo.trainer_class(config, model_class, MMRecTrainer)

    def protocol(self, config) -> dict:
        return {
            "task": self.name,
            "split": "x_label (0 train, 1 valid, 2 test), fixed per dataset",
            "cold_start_users": "removed from valid/test" if config["filter_out_cold_start_users"] is not False
            else "kept",
            "ranking": "full ranking over all items",
            "masking": {"valid": "train items", "test": "train items" if str(config["mmrec_test_mask"] or "train")
                        == "train" else "train+valid items (RecBole variant)"},
            "metrics": list(config["metrics"]), "topk": list(config["topk"] or []),
            "valid_metric": config["valid_metric"],
            "early_stopping": {"stopping_step": config["stopping_step"],
                               "ties": str(config["early_stop_ties"] or "no_improvement")},
            "learning_rate_scheduler": list(config["learning_rate_scheduler"] or [1.0, 50]),
            "negatives": f"{(config['train_neg_sample_args'] or {}).get('sample_num', 1)} uniform per positive from "
                         f"{config['neg_sampling_pool'] or 'train'} items" if mmrec_zoo.samples_negatives(config)
            else "none (positive pairs only)",
            # users per evaluation batch: eval_users_per_batch, or eval_batch_size score cells // items
            "eval_users_per_batch": config["eval_users_per_batch"],
            "eval_batch_size": config["eval_batch_size"],
        }


def lr_at(epoch: int, base_lr: float, schedule=(1.0, 50)) -> float:
    """Learning rate in effect during ``epoch`` (0-based) under MMRec's LambdaLR; for docs and tests."""
    return base_lr * math.pow(schedule[0], epoch / schedule[1])
