"""A patient's visit history from JSON, validated and turned into a one-patient ``VisitBatch``.

Accepted file (codes are the dataset's external tokens, e.g. ICD-9 strings and ATC-3 codes)::

    {"visits": [
        {"diagnoses": ["4019", "25000"], "procedures": ["3893"], "medications": ["N02B", "A01A"]},
        {"diagnoses": ["41401"], "procedures": []}
    ]}

Medications are recommended for the LAST visit; its ``medications`` (if present) are ignored, those of earlier
visits are model input. A bare list of visits is accepted too.

A code matches a vocabulary entry exactly or, failing that, with every dot removed from both: ICD codes are
written with a dot (995.91, ICD-9 procedure 38.93, ICD-10 I50.9) or without (MIMIC stores 99591, 3893, I509), and
the dot's position differs between ICD-9 diagnoses, ICD-9 procedures and ICD-10, so removing it is the one rule
that fits all three. Two vocabulary entries that become one code without dots are never guessed between.
"""
from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass
from difflib import SequenceMatcher
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
    source: str = "patient"       # the file it came from, named in errors

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
    return PatientVisits(columns["diagnoses"], columns["procedures"], columns["medications"], where)


def token_to_id(tokens) -> dict[str, int]:
    """External code -> 1-based id, from a vocabulary listed by id (index 0 = PAD when it has a PAD slot)."""
    tokens = [str(t) for t in tokens]
    offset = 0 if tokens and tokens[0] in ("[PAD]", "", "PAD") else 1
    return {tok: i + offset for i, tok in enumerate(tokens) if not (offset == 0 and i == 0)}


def id_to_token(tokens, n: int) -> list[str]:
    """Medication names for ids 1..n, whether ``tokens`` has a PAD slot at 0 or not."""
    tokens = [str(t) for t in tokens]
    return tokens[1:n + 1] if len(tokens) == n + 1 else tokens[:n]


def undotted(code: str) -> str:
    """The code with its dots removed: 995.91 and 99591 (ICD-9 diagnosis), 38.93 and 3893 (ICD-9 procedure),
    I50.9 and I509 (ICD-10) each become one key."""
    return code.replace(".", "")


CLOSEST_SHOWN = 3


class CodeVocabulary:
    """One kind of code (diagnoses, procedures or medications) of a checkpoint's dataset: code -> 1-based id.

    ``source`` (the vocabulary file, when known) is named in errors, with the form its codes take."""

    def __init__(self, tokens, kind: str, source=None):
        self.kind = kind
        self.source = source
        self.ids = token_to_id(tokens)
        self.by_undotted: dict[str, list[str]] = {}
        for token in self.ids:
            self.by_undotted.setdefault(undotted(token), []).append(token)

    def __len__(self) -> int:
        return len(self.ids)

    def id_of(self, code: str, where: str = "patient") -> int | None:
        """The id of ``code`` (exact, else dot-insensitive), None if unknown; a code that matches two entries
        once dots are removed is a UserError rather than a guess."""
        if code in self.ids:
            return self.ids[code]
        matches = self.by_undotted.get(undotted(code), [])
        if len(matches) > 1:
            raise UserError(f"{where}: {self.kind} code {code!r} is ambiguous in {self._named()}: without dots it "
                            f"matches {' and '.join(matches)}",
                            fix="write the code exactly as the vocabulary does")
        return self.ids[matches[0]] if matches else None

    def closest(self, code: str, n: int = CLOSEST_SHOWN) -> list[str]:
        """The ``n`` known codes nearest to ``code``: longest shared start first (ICD codes share their category
        prefix), then string similarity."""
        key = undotted(code)

        def nearness(token):
            other = undotted(token)
            return len(os.path.commonprefix([key, other])), SequenceMatcher(None, key, other).ratio()

        return heapq.nlargest(n, self.ids, key=nearness)

    def unknown_error(self, unknown: list[str], where: str = "patient") -> UserError:
        first, others = unknown[0], unknown[1:]
        more = ""
        if others:
            more = f"; also unknown: {', '.join(others[:4])}" + (f" (+{len(others) - 4} more)" if len(others) > 4 else "")
        examples = " or ".join(list(self.ids)[:2])
        return UserError(f"{where}: {self.kind} code {first!r} is not in {self._named()} (closest known: "
                         f"{', '.join(self.closest(first))}){more}",
                         fix=f"use codes as that vocabulary writes them, e.g. {examples} ({len(self)} {self.kind} "
                             f"codes; dots are ignored, so 995.91 matches 99591)")

    def _named(self) -> str:
        return f"the {self.kind} vocabulary {self.source}" if self.source else f"this checkpoint's {self.kind} vocabulary"


def patient_batch(patient: PatientVisits, dataset, vocabulary_files: dict | None = None) -> VisitBatch:
    """Encode ``patient`` with the dataset's vocabularies; an unknown code is a UserError naming it, the
    vocabulary file (``vocabulary_files``: ``diagnoses`` / ``procedures`` / ``medications`` -> path) and the
    closest known codes."""
    files = vocabulary_files or {}
    vocabularies = {key: CodeVocabulary(getattr(dataset, f"{short}_tokens"), key, files.get(key))
                    for key, short in VISIT_KEYS.items()}
    encoded = {}
    for key, vocab in vocabularies.items():
        visits = getattr(patient, key)
        if key == "medications":
            visits = visits[:-1] + [[]]  # the target visit's medications are what we predict
        ids = {code: vocab.id_of(code, patient.source) for code in dict.fromkeys(c for v in visits for c in v)}
        unknown = sorted(code for code, i in ids.items() if i is None)
        if unknown:
            raise vocab.unknown_error(unknown, patient.source)
        for number, codes in enumerate(visits, start=1):  # 995.91 and 99591 in one visit: one code twice
            spellings = {}
            for code in codes:
                spellings.setdefault(ids[code], []).append(code)
            twice = next((s for s in spellings.values() if len(s) > 1), None)
            if twice:
                raise UserError(f"{patient.source}: visit {number} lists one {key} code twice: {' and '.join(twice)}",
                                fix="a visit's codes are a set: list each code once")
        width = max(1, max(len(c) for c in visits))
        tensor = torch.zeros((1, len(visits), width), dtype=torch.long)
        for t, codes in enumerate(visits):
            tensor[0, t, :len(codes)] = torch.tensor([ids[c] for c in codes], dtype=torch.long)
        encoded[key] = tensor
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
