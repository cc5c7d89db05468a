"""RecBole's context-aware models (FM, DeepFM, WideDeep, ...) on the medication task, their classes unchanged.

Design: a wrapper model. Each (visit, candidate medication) pair becomes one row of a RecBole ``Interaction`` with
the context features of the visit -- ``diag`` (token_seq, the visit's diagnoses), ``proc`` (token_seq, its
procedures), ``prev_med`` (token_seq, the previous visit's medications) -- and the candidate ``med_id`` (token,
the item) plus a 0/1 ``label``. The RecBole class is instantiated with a small feature schema that answers exactly
the questions ``ContextRecommender.__init__`` asks (``fields``, ``field2type``, ``num``), so its embedding tables,
interaction layers, ``calculate_loss`` (BCE over all pairs) and ``predict`` (sigmoid) run as shipped. Every
medication is scored for every visit, then reshaped to the task's ``[P, T, n_med]`` probabilities, so the same
metrics and split apply.

Why a wrapper and not RecBole's own dataset: the medication task's unit is a visit with three code sets, not a
(user, item) interaction; building RecBole atomic files with one row per (visit, medication) would need
``n_visits x n_med`` rows on disk (2M for MIMIC-III) and RecBole's negative sampling, which would change the
protocol. The wrapper builds the same rows on the fly, per batch.

Names: ``MedFM``, ``MedDeepFM``, ``MedWideDeep``, or ``MedContext`` with ``context_model: <RecBole class name>``.
The hyper-parameters of the wrapped class (``embedding_size``, ``mlp_hidden_size``, ``dropout_prob``, ...) default
to RecBole's own ``properties/model/<Name>.yaml`` and can be overridden by the same keys.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import yaml
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError
from recbole_ext.models.medrec.base import MedRecModel, previous_visit
from recbole_ext.options import config_value

LABEL = "label"


class VisitFeatureSchema:
    """The part of a RecBole ``Dataset`` that ``ContextRecommender`` reads: field names, types and sizes."""

    def __init__(self, n_diag: int, n_proc: int, n_med: int):
        self.field2type = {"diag": FeatureType.TOKEN_SEQ, "proc": FeatureType.TOKEN_SEQ,
                           "prev_med": FeatureType.TOKEN_SEQ, "med_id": FeatureType.TOKEN, LABEL: FeatureType.FLOAT}
        self.field2source = {"diag": FeatureSource.INTERACTION, "proc": FeatureSource.INTERACTION,
                             "prev_med": FeatureSource.INTERACTION, "med_id": FeatureSource.ITEM_ID,
                             LABEL: FeatureSource.INTERACTION}
        self._sizes = {"diag": n_diag + 1, "proc": n_proc + 1, "prev_med": n_med + 1, "med_id": n_med + 1, LABEL: 1}
        self.uid_field, self.iid_field, self.label_field = None, "med_id", LABEL

    def fields(self, ftype=None, source=None):
        return [f for f in self.field2type if (source is None or self.field2source[f] in source)
                and (ftype is None or self.field2type[f] in ftype)]

    def num(self, field):
        return self._sizes[field]


def recbole_context_class(name: str):
    module = importlib.import_module("recbole.model.context_aware_recommender")
    cls = getattr(module, name, None)
    from recbole.model.abstract_recommender import ContextRecommender

    if not (isinstance(cls, type) and issubclass(cls, ContextRecommender)):
        choices = sorted(n for n in dir(module) if n[:1].isupper())
        raise UserError(f"context_model={name!r} is not a RecBole context-aware model",
                        fix=f"use one of {', '.join(choices)}")
    return cls


def recbole_model_defaults(name: str) -> dict:
    import recbole

    path = Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


class MedContext(MedRecModel):
    """Scores every medication of every visit with an unchanged RecBole context-aware model."""
    paper = "RecBole context-aware model (option context_model) on visits"
    year = None
    uses = "diagnoses, procedures, past medications as context features"
    parity = "RecBole's own class (`test_medrec_models.py`)"

    context_model: str | None = None
    # the wrapped RecBole model's loss may not be a mean over visits: a data-parallel run replicates it
    distributed_loss = "replicated"

    @classmethod
    def extra_config_keys_for(cls, values) -> list[str]:
        """The wrapped RecBole model's hyper-parameters are options of this model too (``__init__`` reads each
        key of its YAML defaults from the config), so the unknown-key check must know them."""
        name = cls.context_model or config_value(values, "context_model", "FM")
        return list(recbole_model_defaults(str(name)))

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        name = self.context_model or config_value(config, "context_model", "FM")
        inner_class = recbole_context_class(name)
        inner_config = {key: config_value(config, key, value) for key, value in recbole_model_defaults(name).items()}
        inner_config.update({"LABEL_FIELD": LABEL, "device": self.device, "double_tower": False,
                             "numerical_features": [], "embedding_size": self.embedding_size})
        self.schema = VisitFeatureSchema(self.n_diag, self.n_proc, self.n_med)
        self.inner = inner_class(_DictConfig(inner_config), self.schema)

    def pair_interaction(self, batch: VisitBatch) -> tuple[Interaction, int]:
        """One row per (existing visit, medication), visit-major."""
        mask = batch.visit_mask
        n_visits, n_med = int(mask.sum()), self.n_med
        rows = {"diag": batch.diag[mask], "proc": batch.proc[mask], "prev_med": previous_visit(batch.med)[mask]}
        rows = {k: v.repeat_interleave(n_med, dim=0) for k, v in rows.items()}
        rows["med_id"] = torch.arange(1, n_med + 1, device=mask.device).repeat(n_visits)
        rows[LABEL] = batch.target[mask].reshape(-1)
        return Interaction(rows), n_visits

    def calculate_loss(self, batch: VisitBatch) -> torch.Tensor:
        interaction, _ = self.pair_interaction(batch)
        return self.inner.calculate_loss(interaction)

    def forward(self, batch: VisitBatch) -> torch.Tensor:
        """Logits ``[P, T, n_med]`` (padded visits are 0)."""
        interaction, n_visits = self.pair_interaction(batch)
        scores = self.inner.forward(interaction).reshape(n_visits, self.n_med)
        out = scores.new_zeros(*batch.visit_mask.shape, self.n_med)
        out[batch.visit_mask] = scores
        return out


class _DictConfig(dict):
    def __getitem__(self, key):
        return self.get(key)


class MedFM(MedContext):
    """RecBole's FM (Rendle, ICDM 2010) on visit context features."""
    paper = "Rendle, FM (ICDM 2010), RecBole's class on visits"
    year = 2010
    uses = "diagnoses, procedures, past medications as context features"
    parity = "RecBole's own class (`test_medrec_models.py`)"

    context_model = "FM"


class MedDeepFM(MedContext):
    """RecBole's DeepFM (Guo et al., IJCAI 2017) on visit context features."""
    paper = "Guo et al., DeepFM (IJCAI 2017), RecBole's class on visits"
    year = 2017
    uses = "diagnoses, procedures, past medications as context features"
    parity = "RecBole's own class (`test_medrec_models.py`)"

    context_model = "DeepFM"


class MedWideDeep(MedContext):
    """RecBole's WideDeep (Cheng et al., DLRS 2016) on visit context features."""
    paper = "Cheng et al., Wide & Deep (DLRS 2016), RecBole's class on visits"
    year = 2016
    uses = "diagnoses, procedures, past medications as context features"
    parity = "RecBole's own class (`test_medrec_models.py`)"

    context_model = "WideDeep"
