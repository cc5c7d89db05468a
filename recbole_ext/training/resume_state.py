"""The state a run needs to continue after an interruption: ``RUN_DIR/last.pth``, written after validated epochs.

``model.pth`` holds the *best* epoch, which is what testing needs but not what continuing needs: a resumed run
must go on from the state after the last finished epoch, all of it, or it would differ from an uninterrupted one.
``last.pth`` is a recbole-ext checkpoint (``recbole_ext.checkpoint``: tensors and plain data only, read with
``torch.load(weights_only=True)``; its weights, optimizer and external config are the usual entries) with one more
entry, ``"resume"``:

  format              ``recbole-ext/resume/1``
  epoch               the last finished epoch (0-based): training continues with ``epoch + 1``
  cur_step            the early-stopping counter (validations without improvement)
  best_valid_score, best_valid_result
  history             the trainer's EpochHistory records so far
  train_loss_dict     RecBole's per-epoch losses
  lr_scheduler        the scheduler's ``state_dict`` (MMRecTrainer's per-epoch LambdaLR), or None
  optimizers          the trainer's other optimisers by attribute name (RecVAETrainer's ``optimizer_encoder`` and
                      ``optimizer_decoder``), and ``optimizer_is``: which of them ``optimizer`` was when saved
  rng                 torch's (CPU and CUDA), numpy's and Python's global generators, and every generator a data
                      loader or its sampler holds (RecBole's loaders own a ``torch.Generator``, MedRecDataLoader a
                      numpy ``RandomState``): as tensors and ints, never pickled objects
  elapsed_s           wall time of the run when the state was saved (a resumed run's ``wall_time_s`` adds to it)

:class:`EpochResumeState` is the ``callback_fn`` every fit loop calls after a validated epoch's bookkeeping (RecBole's
``Trainer.fit`` and ``MMRecTrainer.fit`` both call it after early stopping and the best checkpoint are updated), so
what it saves is exactly what the next epoch starts from. It writes ``last.pth`` every ``resume_every`` validated
epochs (default 1; 0 turns it off) and keeps ``status.json``'s progress current. Epochs that are not validated
(``eval_step`` > 1) are not saved: a resume repeats them.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from recbole_ext import checkpoint
from recbole_ext.errors import UserError
from recbole_ext.options import NON_NEGATIVE, number_value
from recbole_ext.run_status import RESUME_FILE, ctrl_c_deferred, mark_running

RESUME_FORMAT = "recbole-ext/resume/1"


def other_optimizers(trainer) -> dict[str, torch.optim.Optimizer]:
    """The optimisers a trainer holds besides ``optimizer``, by attribute name. RecBole's RecVAETrainer keeps one for
    the encoder and one for the decoder and points ``optimizer`` at either in turn; the base trainer's own
    ``optimizer`` over all parameters is then replaced, so a resume restores each by name, not ``optimizer``."""
    return {name: value for name, value in vars(trainer).items()
            if name != "optimizer" and isinstance(value, torch.optim.Optimizer)}


def resume_every(config) -> int:
    """Validated epochs between two writes of ``last.pth`` (``resume_every``, default 1; 0: never)."""
    return number_value(config, "resume_every", 1, int, NON_NEGATIVE)


# ---- random generators as plain data ----------------------------------------------------------------------------


def _random_state_plain(rng) -> dict:
    """numpy's legacy MT19937 state (the ``np.random`` module or a ``RandomState``) as a tensor and numbers."""
    kind, keys, pos, has_gauss, cached_gaussian = rng.get_state()
    return {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_random_state(rng, state: dict) -> None:
    rng.set_state((state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                   state["cached_gaussian"]))


def _held_generators(loaders: dict) -> dict:
    """``{"<loader>.<attribute>": generator}`` for every torch Generator or numpy RandomState that a data loader or
    its sampler (``_sampler``, RecBole's negative sampler) holds as an attribute."""
    found = {}
    for role, loader in loaders.items():
        for prefix, owner in ((role, loader), (f"{role}._sampler", getattr(loader, "_sampler", None))):
            for attr, value in (vars(owner) if owner is not None else {}).items():
                if isinstance(value, (torch.Generator, np.random.RandomState)):
                    found[f"{prefix}.{attr}"] = value
    return found


def capture_rng(loaders: dict) -> dict:
    """Every random generator a continued training run draws from, as tensors and plain numbers."""
    version, internal, gauss = random.getstate()
    held = {}
    for name, rng in _held_generators(loaders).items():
        held[name] = rng.get_state() if isinstance(rng, torch.Generator) else _random_state_plain(rng)
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": _random_state_plain(np.random),
            "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss},
            "held": held}


def restore_rng(rng: dict, loaders: dict) -> None:
    """Put every generator back as :func:`capture_rng` found it (the loaders are this process's new ones)."""
    held = _held_generators(loaders)
    missing = sorted(set(rng["held"]) - set(held))
    if missing:  # a loader lost a generator between versions: continuing would draw different samples
        raise UserError(f"the resume state has random generators {missing} that this run's data loaders lack",
                        fix="resume with the recbole-ext version that started the run")
    for name, state in rng["held"].items():
        if isinstance(held[name], torch.Generator):
            held[name].set_state(state)
        else:
            _set_random_state(held[name], state)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    _set_random_state(np.random, rng["numpy"])
    python = rng["python"]
    random.setstate((python["version"], tuple(int(x) for x in python["internal"].tolist()), python["gauss"]))


# ---- the trainer's state ----------------------------------------------------------------------------------------


def check_resume_state(state: dict, path: str | os.PathLike) -> None:
    """A loaded ``last.pth`` must carry the resume entry of this format."""
    resume = state.get("resume")
    if not isinstance(resume, dict) or resume.get("format") != RESUME_FORMAT:
        raise UserError(f"{path} holds no resume state of format {RESUME_FORMAT}",
                        fix="it was not written by this recbole-ext version; start the run again")


class EpochResumeState:
    """Saves (as the fit loops' ``callback_fn``) and restores the state after a finished epoch; see the module
    docstring. ``loaders``: ``{"train": ..., "valid": ..., "test": ...}``, whose generators are part of the state."""

    def __init__(self, trainer, loaders: dict, run_dir: str | os.PathLike, started_at: float, every: int = 1):
        self.trainer, self.loaders, self.run_dir = trainer, loaders, Path(run_dir)
        self.started_at, self.every = started_at, int(every)
        self.validated = 0
        self.saved_epoch: int | None = None

    @property
    def path(self) -> Path:
        return self.run_dir / RESUME_FILE

    def __call__(self, epoch: int, valid_score=None) -> None:
        self.validated += 1
        with ctrl_c_deferred():  # last.pth and status.json describe the same epoch, even if Ctrl-C comes between
            if self.every and self.validated % self.every == 0:
                self.save(epoch)
            mark_running(self.run_dir, epochs_done=int(epoch) + 1,
                         resume_from_epoch=None if self.saved_epoch is None else self.saved_epoch + 1)

    def save(self, epoch: int) -> None:
        trainer = self.trainer
        scheduler = getattr(trainer, "lr_scheduler", None)
        best = trainer.best_valid_result
        others = other_optimizers(trainer)
        resume = {
            "format": RESUME_FORMAT, "epoch": int(epoch), "cur_step": int(trainer.cur_step),
            "best_valid_score": float(trainer.best_valid_score),
            "best_valid_result": None if best is None else {str(k): float(v) for k, v in best.items()},
            "history": [dict(entry) for entry in getattr(trainer, "history", [])],
            "train_loss_dict": {int(k): float(v) for k, v in trainer.train_loss_dict.items()},
            "lr_scheduler": None if scheduler is None else scheduler.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in others.items()},
            "optimizer_is": next((name for name, opt in others.items() if opt is trainer.optimizer), None),
            "rng": capture_rng(self.loaders),
            "elapsed_s": time.time() - self.started_at,
        }
        checkpoint.save_trainer_state(trainer, self.path, epoch, extra={"resume": resume})
        self.saved_epoch = int(epoch)

    def restore(self, state: dict) -> None:
        """Load a ``last.pth`` (already read and checked) into this run's fresh trainer, model and loaders."""
        trainer, resume = self.trainer, state["resume"]
        checkpoint.check_id_maps(state, getattr(trainer, "ext_id_maps", None) or {})
        trainer.model.load_state_dict(state["state_dict"])
        trainer.model.load_other_parameter(checkpoint.other_parameter_of(state))
        others = other_optimizers(trainer)
        saved = resume.get("optimizers", {})
        if set(saved) != set(others):
            raise UserError(f"the resume state has optimisers {sorted(saved)} and this run's trainer {sorted(others)}",
                            fix="resume with the configuration and recbole-ext version that started the run")
        for name, opt in others.items():  # before the scheduler, which reads their groups
            opt.load_state_dict(saved[name])
        if resume.get("optimizer_is"):
            trainer.optimizer = others[resume["optimizer_is"]]
        else:
            trainer.optimizer.load_state_dict(state["optimizer"])
        scheduler = getattr(trainer, "lr_scheduler", None)
        if (scheduler is None) != (resume["lr_scheduler"] is None):
            raise UserError("the resume state and this run's trainer disagree on having a learning-rate schedule",
                            fix="resume with the configuration and recbole-ext version that started the run")
        if scheduler is not None:
            scheduler.load_state_dict(resume["lr_scheduler"])
        trainer.start_epoch = resume["epoch"] + 1
        trainer.cur_step = resume["cur_step"]
        trainer.best_valid_score = resume["best_valid_score"]
        trainer.best_valid_result = resume["best_valid_result"]
        trainer.train_loss_dict = dict(resume["train_loss_dict"])
        trainer.history = [dict(entry) for entry in resume["history"]]
        self.saved_epoch = resume["epoch"]
        restore_rng(resume["rng"], self.loaders)  # last: nothing may draw between here and the next epoch

    def training_left(self) -> bool:
        """Whether fit has epochs to run: not when the epochs are spent or early stopping already ended it (the
        interruption came during the test evaluation). RecBole's fit would then overwrite model.pth with the
        current weights, so the caller skips it."""
        trainer = self.trainer
        return trainer.start_epoch < trainer.epochs and trainer.cur_step <= trainer.stopping_step
