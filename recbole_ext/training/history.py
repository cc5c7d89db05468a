"""Per-epoch history of a training run, recorded by the trainer itself (no wrapping of its methods from outside).

``with_history(TrainerClass)`` is the trainer class with :class:`EpochHistory` in front: every ``_train_epoch``
appends ``{"epoch", "train_loss", "valid", "time_s"}`` to ``trainer.history``, every ``_valid_epoch`` fills that
entry's validation result and score, and then asks ``trainer.on_valid(epoch, score, bigger)`` (if set) whether to
stop: True raises :class:`StopTraining` out of ``fit`` (a pruned tuning trial). Works for RecBole's trainers and ours,
whose ``fit`` loops call these two methods.

It also logs the run's one progress line per epoch (:func:`epoch_line`, marked for the quiet console), the same
for every trainer: after the validation of a validated epoch, else when the next epoch starts or ``fit`` ends.
"""
from __future__ import annotations

import time
from logging import getLogger

from recbole_ext.utils.console import PROGRESS, format_duration


class StopTraining(Exception):
    """Raised from inside ``fit`` when the ``on_valid`` callback asks to stop (a pruned tuning trial)."""

    def __init__(self, epoch: int):
        super().__init__(f"training stopped after epoch {epoch}")
        self.epoch = epoch


def plain_floats(result) -> dict:
    """A result mapping with float values where they convert (numpy scalars included), others unchanged."""
    if not result:
        return {}
    out = {}
    for k, v in dict(result).items():
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            out[str(k)] = v
    return out


def epoch_line(epoch: int, epochs: int, train_loss: float | None, valid_metric: str | None = None,
               valid_score: float | None = None, improved: bool = False, seconds: float = 0.0) -> str:
    """``epoch  3/50  train loss 0.4132  valid recall@20 0.1234 *  (2.1 s)``: 1-based epoch of ``epochs``, ``*``
    when validation improved on every earlier epoch (the last ``*`` is the selected epoch), seconds of training and
    validation. An epoch without validation ends after the loss."""
    width = len(str(epochs))
    loss = "-" if train_loss is None else f"{train_loss:.4f}"
    line = f"epoch {epoch + 1:>{width}}/{epochs}  train loss {loss}"
    if valid_score is not None:
        line += f"  valid {valid_metric} {valid_score:.4f} {'*' if improved else ' '}"
    return f"{line}  ({format_duration(seconds)})"


class EpochHistory:
    """Mix in before a RecBole ``Trainer`` subclass; see the module docstring."""

    on_valid = None  # on_valid(epoch, score, bigger) -> True to stop training
    valid_bigger = True  # the direction of valid_metric, passed to on_valid

    def __init__(self, config, model):
        super().__init__(config, model)
        self.history: list[dict] = []
        self._unreported = None  # the last trained epoch's entry until its progress line is logged

    def fit(self, *args, **kwargs):
        try:
            return super().fit(*args, **kwargs)
        finally:
            self._report_unvalidated()  # the last epoch, when it had no validation

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        self._report_unvalidated()
        start = time.time()
        loss = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        value = float(sum(loss)) if isinstance(loss, tuple) else float(loss) if loss is not None else None
        self.history.append({"epoch": int(epoch_idx), "train_loss": value, "valid": {}, "time_s": time.time() - start})
        self._unreported = self.history[-1]
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        start = time.time()
        score, result = super()._valid_epoch(valid_data, *args, **kwargs)
        if self.history:
            previous_best = self.best_entry()  # before this epoch's score joins the history
            self.history[-1]["valid"] = plain_floats(result)
            self.history[-1]["valid_score"] = float(score)
            if self._unreported is self.history[-1]:
                improved = previous_best is None or self._better(float(score), previous_best["valid_score"])
                self._report(self.history[-1], valid_seconds=time.time() - start, improved=improved)
        if self.on_valid is not None and self.history and \
                self.on_valid(self.history[-1]["epoch"], float(score), self.valid_bigger):
            raise StopTraining(self.history[-1]["epoch"])
        return score, result

    def _report(self, entry: dict, valid_seconds: float = 0.0, improved: bool = False) -> None:
        self._unreported = None
        line = epoch_line(entry["epoch"], int(self.epochs), entry["train_loss"], getattr(self, "valid_metric", None),
                          entry.get("valid_score"), improved, entry["time_s"] + valid_seconds)
        getLogger().info(line, extra=PROGRESS)

    def _report_unvalidated(self) -> None:
        if self._unreported is not None:
            self._report(self._unreported)

    def best_entry(self) -> dict | None:
        """The best validated epoch's history entry (the first of equal scores, as early stopping keeps it)."""
        validated = [h for h in self.history if "valid_score" in h]
        if not validated:
            return None
        best = validated[0]
        for h in validated[1:]:
            if self._better(h["valid_score"], best["valid_score"]):
                best = h
        return best

    def _better(self, score: float, than: float) -> bool:
        """Strictly better in ``valid_metric``'s direction (a tie keeps the earlier epoch, as early stopping does)."""
        return score > than if self.valid_bigger else score < than

    def best_so_far(self):
        """The best validated epoch's ``(score, result)``; ``(None, {})`` before any validation."""
        best = self.best_entry()
        return (None, {}) if best is None else (best["valid_score"], best["valid"])


def with_history(trainer_class):
    """``trainer_class`` with :class:`EpochHistory` in front of its method resolution order."""
    if issubclass(trainer_class, EpochHistory):
        return trainer_class
    return type(f"{trainer_class.__name__}WithHistory", (EpochHistory, trainer_class), {})
