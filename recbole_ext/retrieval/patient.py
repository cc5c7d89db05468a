"""A patient's visit history from JSON, validated and turned into a one-patient ``VisitBatch``.

Accepted file (codes are the dataset's external tokens, e.g. ICD-9 strings and ATC-3 codes)::

    {"visits": [
        {"diagnoses": ["4019", "25000"], "procedures": ["3893"], "medications": ["N02B", "A01A"]},
        {"diagnoses": ["41401"], "procedures": []}
    ]}

Medications are recommended for the LAST visit; its ``medications`` (if present) are ignored, those of earlier
visits are model input. A bare list of visits is accepted too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from recbole_ext.data.visit_batch import VisitBatch
from recbole_ext.errors import UserError

VISIT_KEYS = {"diagnoses": "diag", "procedures": "proc", "medications": "med"}


@dataclass
class PatientVisits:
    diagnoses: list[list[str]]
    procedures: list[list[str]]
    medications: list[list[str]]  # the last visit's list is never used as input

    @property
    def n_visits(self) -> int:
        return len(self.diagnoses)


def load_patient(source) -> PatientVisits:
    """Parse a patient from a JSON file path, a JSON string or an already-decoded object."""
    where = "patient"
    if isinstance(source, (str, os.PathLike)) and not str(source).lstrip().startswith(("{", "[")):
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UserError(f"patient file {path} does not exist", fix="pass a JSON file of the patient's visits")
        try:
            source = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"patient file {path} is not UTF-8 text", fix="save it as UTF-8 JSON") from None
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as err:
            raise UserError(f"{where} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                            fix='write {"visits": [{"diagnoses": [...], "procedures": [...]}, ...]}') from None
    visits = source.get("visits") if isinstance(source, dict) else source
    if not isinstance(visits, list) or not visits:
        raise UserError(f"{where} must hold a non-empty list of visits under \"visits\"",
                        fix='write {"visits": [{"diagnoses": [...], "procedures": [...]}, ...]}')
    columns = {key: [] for key in VISIT_KEYS}
    for number, visit in enumerate(visits, start=1):
        if not isinstance(visit, dict):
            raise UserError(f"{where}: visit {number} is a {type(visit).__name__}, not an object",
                            fix='each visit is {"diagnoses": [...], "procedures": [...], "medications": [...]}')
        unknown = sorted(set(visit) - set(VISIT_KEYS))
        if unknown:
            raise UserError(f"{where}: visit {number} has unknown key(s) {', '.join(unknown)}",
                            fix=f"use only {', '.join(VISIT_KEYS)}")
        for key in VISIT_KEYS:
            codes = visit.get(key, [])
            if not isinstance(codes, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                      for c in codes):
                raise UserError(f"{where}: visit {number} {key} must be a list of code strings",
                                fix=f'e.g. "{key}": ["4019", "25000"]')
            codes = [str(c) for c in codes]
            if len(set(codes)) < len(codes):  # a set: a repeat would count twice in the model's pooling
                twice = next(c for i, c in enumerate(codes) if c in codes[:i])
                raise UserError(f"{where}: visit {number} lists {key} code {twice!r} twice",
                                fix="a visit's codes are a set: list each code once")
            columns[key].append(codes)
    if not columns["diagnoses"][-1] and not columns["procedures"][-1]:
        raise UserError(f"{where}: the last visit has neither diagnoses nor procedures",
                        fix="medications are recommended for the last visit; give its codes")
    return PatientVisits(columns["diagnoses"], columns["procedures"], columns["medications"])


def token_to_id(tokens) -> dict[str, int]:
    """External code -> 1-based id, from a vocabulary listed by id (index 0 = PAD when it has a PAD slot)."""
    tokens = [str(t) for t in tokens]
    offset = 0 if tokens and tokens[0] in ("[PAD]", "", "PAD") else 1
    return {tok: i + offset for i, tok in enumerate(tokens) if not (offset == 0 and i == 0)}


def id_to_token(tokens, n: int) -> list[str]:
    """Medication names for ids 1..n, whether ``tokens`` has a PAD slot at 0 or not."""
    tokens = [str(t) for t in tokens]
    return tokens[1:n + 1] if len(tokens) == n + 1 else tokens[:n]


def patient_batch(patient: PatientVisits, dataset) -> VisitBatch:
    """Encode ``patient`` with the dataset's vocabularies; an unknown code is a UserError naming it."""
    vocabularies = {"diagnoses": token_to_id(dataset.diag_tokens), "procedures": token_to_id(dataset.proc_tokens),
                    "medications": token_to_id(dataset.med_tokens)}
    encoded = {}
    for key, vocab in vocabularies.items():
        visits = getattr(patient, key)
        if key == "medications":
            visits = visits[:-1] + [[]]  # the target visit's medications are what we predict
        unknown = sorted({c for codes in visits for c in codes if c not in vocab})
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
            raise UserError(f"patient has {key} code(s) unknown to this checkpoint's dataset: {shown}",
                            fix=f"use codes of the training vocabulary ({len(vocab)} {key} codes)")
        width = max(1, max(len(c) for c in visits))
        ids = torch.zeros((1, len(visits), width), dtype=torch.long)
        for t, codes in enumerate(visits):
            ids[0, t, :len(codes)] = torch.tensor([vocab[c] for c in codes], dtype=torch.long)
        encoded[key] = ids
    n_med = int(dataset.n_med)
    target = torch.zeros((1, patient.n_visits, n_med))
    med = encoded["medications"]
    rows = med[0] > 0
    if rows.any():
        visit_idx = torch.nonzero(rows)[:, 0]
        target[0, visit_idx, med[0][rows] - 1] = 1.0
    return VisitBatch(diag=encoded["diagnoses"], proc=encoded["procedures"], med=med,
                      visit_mask=torch.ones((1, patient.n_visits), dtype=torch.bool), target=target,
                      patient_ids=torch.zeros(1, dtype=torch.long))
