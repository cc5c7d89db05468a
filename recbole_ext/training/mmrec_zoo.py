"""RecBole's general recommenders under the MMRec protocol: which training loader and trainer each one needs.

RecBole picks a model's training loader from its name and type (``recbole.data.utils.get_dataloader``) and its
trainer from its name (``recbole.utils.get_trainer``: ``NCLTrainer``, ``RecVAETrainer``, ``RaCTTrainer``,
``TraditionalTrainer`` ...). Under the MMRec protocol the evaluation loaders are always MMRec's (full ranking,
training items masked) and the epoch loop is MMRec's (strict early stopping on valid Recall@20, per-epoch LambdaLR);
this module keeps RecBole's choice of *training* loader and composes RecBole's trainer class behind the MMRec epoch
loop, so each model trains the way RecBole trains it:

=================  =======================================================================================
kind               training batches
=================  =======================================================================================
``pairwise``       positive + one uniform negative from the training items (``TrainItemNegativeSampler``)
``pointwise``      positive (label 1) + one uniform negative (label 0), the same sampler
``user_batch``     user ids; the model reads its users' TRAINING rows from the interaction matrix it built
                   from the training split (RecBole's ``UserDataLoader``: MultiVAE, RecVAE, CDAE, ENMF, ...)
``non_gradient``   the training interactions only, no negatives, one "epoch" (RecBole's ``TraditionalTrainer``):
                   Pop counts them, ItemKNN / EASE / SLIMElastic / ADMMSLIM / NCEPLRec build their matrices from
                   the training split when they are constructed
=================  =======================================================================================

Every model is built on the training split (``train_data._dataset``), so whatever it derives from "its dataset"
(interaction matrices, graphs, popularity) holds training interactions only.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import torch
from recbole.data.dataloader import UserDataLoader
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType

from recbole_ext.data.multimodal_loaders import MMRecTrainDataLoader, TrainItemNegativeSampler
from recbole_ext.errors import UserError
from recbole_ext.utils import distributed

# RecBole general models that learn nothing by gradient: a dummy parameter and matrices built at construction (or,
# for Pop, counts gathered from the training batches). NCEPLRec is typed GENERAL in RecBole but is one of them.
_NON_GRADIENT_GENERAL = frozenset({"NCEPLRec"})

_NO_NEGATIVES = {"distribution": "none", "sample_num": "none", "alpha": "none", "dynamic": False,
                 "candidate_num": 0}


def general_recommenders() -> dict[str, type]:
    """Every recommender class of RecBole's ``recbole.model.general_recommender`` package, by name."""
    import recbole.model.general_recommender as package

    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, GeneralRecommender) and cls.__module__ == module.__name__:
                found[name] = cls
    return dict(sorted(found.items()))


def _recbole_train_loader(model_class) -> type:
    """The training loader RecBole's ``get_dataloader`` gives this model (its own table of user-batch models)."""
    from recbole.data.utils import get_dataloader

    return get_dataloader({"model": model_class.__name__, "MODEL_TYPE": getattr(model_class, "type", None)},
                          "train")


def is_recbole_general(model_class) -> bool:
    return model_class.__module__.startswith("recbole.model.general_recommender.")


def kind_of(model_class) -> str:
    """``pairwise``, ``pointwise``, ``user_batch`` or ``non_gradient`` (module docstring)."""
    if getattr(model_class, "type", None) == ModelType.TRADITIONAL or model_class.__name__ in _NON_GRADIENT_GENERAL:
        return "non_gradient"
    if is_recbole_general(model_class) and issubclass(_recbole_train_loader(model_class), UserDataLoader):
        return "user_batch"
    return "pointwise" if str(getattr(model_class, "input_type", "")).endswith("POINTWISE") else "pairwise"


def refusal(model_class) -> str | None:
    """Why ``model_class`` cannot run under the MMRec protocol (one line), or None."""
    name = model_class.__name__
    if getattr(model_class, "type", None) not in (ModelType.GENERAL, ModelType.TRADITIONAL):
        return (f"model {name} cannot run under the MMRec protocol (it is not a general recommender: the protocol "
                f"ranks all items for a user from user-item interactions alone)")
    return None


def check_model(model_class) -> None:
    reason = refusal(model_class)
    if reason:
        raise UserError(reason, fix="use a general recommender such as BPR, LightGCN, Pop, MultiVAE, VBPR, "
                                    "FREEDOM, LATTICE, MGCN or MambaRec (python run.py models --task mmrec)")


def train_loader(config, train_ds, pool: str):
    """The training loader of ``config['model']``'s kind, over the training split (module docstring)."""
    kind = kind_of(config.model_class)
    _check_sizes(config, train_ds)
    shuffle = config["shuffle"] is not False
    if kind == "user_batch":
        return UserDataLoader(config, train_ds, None, shuffle=True)
    if kind == "non_gradient":  # positives only: Pop must not count sampled negatives as popularity
        config["train_neg_sample_args"] = dict(_NO_NEGATIVES)
        return MMRecTrainDataLoader(config, train_ds, None, shuffle=shuffle)
    sampler = TrainItemNegativeSampler(train_ds, pool=pool) if samples_negatives(config) else None
    return MMRecTrainDataLoader(config, train_ds, sampler, shuffle=shuffle)


def samples_negatives(config) -> bool:
    """Whether the training batches carry negatives: uniform ones (MMRec's sampler), or none for a pointwise model
    that trains on positive pairs only (MMRec's ``use_neg_sampling: False``, BM3)."""
    if kind_of(config.model_class) in ("user_batch", "non_gradient"):
        return False
    neg = config["train_neg_sample_args"] or {}
    if neg.get("distribution") == "none":
        if config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE:
            raise UserError(f"{config['model']} trains on (user, positive, negative) triples, but "
                            f"train_neg_sample_args is None", fix="leave train_neg_sample_args unset")
        return False
    if neg.get("distribution") not in ("uniform", None) or neg.get("dynamic"):
        raise UserError(f"the MMRec protocol samples uniform negatives, got train_neg_sample_args={neg}",
                        fix="set train_neg_sample_args to {distribution: uniform, sample_num: 1}")
    return True


def _check_sizes(config, train_ds) -> None:
    """Model options that must fit the data, checked before training (a one-line error, not faiss's traceback)."""
    if config["model"] == "NCL" and int(config["num_clusters"]) > min(train_ds.user_num, train_ds.item_num):
        raise UserError(f"NCL's num_clusters ({config['num_clusters']}) exceeds the {train_ds.user_num} users or "
                        f"{train_ds.item_num} items its E-step clusters by k-means",
                        fix=f"set --num_clusters to at most {min(train_ds.user_num, train_ds.item_num)}")


class _Schedulers:
    """Several per-epoch schedulers stepped together (a trainer that alternates optimisers, e.g. RecVAE's)."""

    def __init__(self, schedulers):
        self.schedulers = list(schedulers)

    def step(self):
        for s in self.schedulers:
            s.step()

    def state_dict(self):
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state):
        for s, st in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(st)


class _OnePass:
    """TraditionalTrainer's change, one epoch (its ``__init__``), said in the run's log."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.logger.info(f"{type(model).__name__} learns nothing by gradient: one pass over the training "
                            f"interactions, then validation and test (epochs={config['epochs']} is not used)")


class _EStepEveryMSteps:
    """NCLTrainer's only change to RecBole's epoch loop: ``model.e_step()`` (k-means prototypes) before every
    ``m_step``-th epoch, here in front of the MMRec epoch loop."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if epoch_idx % self.num_m_step == 0:
            self.model.e_step()
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)


class _AlternatingSchedules:
    """RecVAETrainer swaps ``self.optimizer`` between an encoder and a decoder optimiser: the MMRec LambdaLR decays
    both (the base trainer's one would decay an optimiser RecVAE never steps)."""

    def __init__(self, config, model):
        super().__init__(config, model)
        factor = self.lr_scheduler.lr_lambdas[0]
        self.lr_scheduler = _Schedulers(torch.optim.lr_scheduler.LambdaLR(opt, factor)
                                        for opt in (self.optimizer_encoder, self.optimizer_decoder))


class _PairScoringInChunks:
    """A model without ``full_sort_predict`` (NeuMF, ConvNCF, NNCF) is scored by RecBole on every (user, item) pair
    of an evaluation batch through ``predict``, in chunks of ``eval_batch_size`` pairs: the MMRec batch of
    ``eval_batch_size`` score cells then went through the model in one call (ConvNCF on synth-mm: 1.5 M pairs of
    64 x 64 maps, over 23 GB). Chunks of ``train_batch_size`` pairs hold what a training step holds, without
    gradients; the scores are the same."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.test_batch_size = min(int(self.test_batch_size), int(config["train_batch_size"]))


def scores_pairs(model_class) -> bool:
    """True if the model has no ``full_sort_predict`` of its own (RecBole then calls ``predict`` on pairs)."""
    from recbole.model.abstract_recommender import AbstractRecommender

    return model_class.full_sort_predict is AbstractRecommender.full_sort_predict


# What each RecBole trainer needs in front of the MMRec epoch loop (``base.fit`` comes first in the method order, so
# RecBole's ``_train_epoch`` and ``__init__`` of the trainer are kept). TraditionalTrainer's one change, a single
# epoch, is its ``__init__`` (logged by _OnePass). RaCTTrainer runs its two pretraining stages without validation:
# here every ``train_stage`` runs the MMRec loop, validated and early-stopped on valid Recall@20.
_ADAPTERS = {"TraditionalTrainer": (_OnePass,), "NCLTrainer": (_EStepEveryMSteps,),
             "RecVAETrainer": (_AlternatingSchedules,), "RaCTTrainer": ()}


def trainer_class(config, model_class, base: type) -> type:
    """``base`` (the MMRec epoch loop) composed with the trainer RecBole picks for the model (module docstring).

    Under torchrun only RecBole's plain ``Trainer`` models run (pairwise and pointwise ones): the others are
    refused with one line."""
    from recbole.trainer import Trainer
    from recbole.utils import get_trainer

    name = model_class.__name__
    recbole_trainer = get_trainer(getattr(model_class, "type", ModelType.GENERAL), name) \
        if is_recbole_general(model_class) else Trainer
    if kind_of(model_class) == "non_gradient" and recbole_trainer is Trainer:
        from recbole.trainer import TraditionalTrainer

        recbole_trainer = TraditionalTrainer
    special = recbole_trainer is not Trainer or kind_of(model_class) == "user_batch"
    if special and distributed.active():
        raise UserError(distributed_refusal(model_class, recbole_trainer),
                        fix="run it in one process (python run.py ...), or use a pairwise/pointwise model")
    if scores_pairs(model_class):
        base = type(f"PairScoring{base.__name__}", (_PairScoringInChunks, base),
                    {"__module__": __name__, "__doc__": _PairScoringInChunks.__doc__})
    if recbole_trainer is Trainer:
        return base
    if recbole_trainer.__name__ not in _ADAPTERS:
        raise UserError(f"model {name} needs RecBole's {recbole_trainer.__name__}, which has no MMRec-protocol "
                        f"adaptation", fix="use another general recommender")
    return type(f"MMRec{recbole_trainer.__name__}", (*_ADAPTERS[recbole_trainer.__name__], base, recbole_trainer),
                {"__module__": __name__, "__doc__": f"{recbole_trainer.__name__} under the MMRec epoch loop."})


def distributed_refusal(model_class, recbole_trainer) -> str:
    kind = kind_of(model_class)
    why = {"non_gradient": "it learns nothing by gradient (Pop would count only each process's share of the rows)",
           "user_batch": "its batches are users, not the interaction rows the data-parallel loss splits"}.get(
        kind, f"it needs RecBole's {recbole_trainer.__name__}, which the data-parallel trainer does not wrap")
    return f"model {model_class.__name__} cannot run under torchrun: {why}"
