"""``prepare synthetic-ehr``: a synthetic EHR with planted diagnosis->medication and procedure->medication effects.

Generative story (all seeded, vectorised over patients; the only loop runs over visit positions):

1. ``K`` latent conditions with Zipf popularity. Each patient has 1 + Poisson(1.5) chronic conditions; each visit
   activates every chronic condition with probability 0.8 plus 1 + Poisson(0.5) acute ones (comorbidity structure).
2. Every condition emits its own profile of diagnoses (12 candidates) and procedures (6 candidates), each with its
   own probability; a few background diagnoses are added at random. Shared candidates across conditions create
   realistic co-occurrence.
3. Every condition has a small treatment set of medications. Each diagnosis of the condition's profile raises the
   log-odds of 1-2 of them by U(1.5, 3.5); half of the procedures raise one medication by U(1.5, 3.0). These
   planted log-odds effects are saved as ``diag_med_effect.npy`` [n_diag, n_med] and ``proc_med_effect.npy``
   [n_proc, n_med] (row i = code id i+1, column j = medication id j+1) so causal estimates can be checked.
4. Medication of visit t: Bernoulli(sigmoid(base_m + sum_d W_dm + sum_p W_pm + persistence * [m given at t-1])),
   at least one per visit. The previous-visit term rewards models that read the medication history.
5. DDI pairs: a seeded random set of medication pairs (density ``--ddi-density``); the data's own DDI rate is
   measured and stored in ``<name>.json``.

With ``--medications <= 131`` the medication tokens are real ATC3 classes that have SMILES (so SMILES-based models
run), but the effects are synthetic: the labels carry no pharmacological meaning.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.medrec import visit_statistics, write_medrec_files
from recbole_ext.data.prepare import drug_resources as dr
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.io import atomic_dir
from recbole_ext.utils.paths import check_dataset_name, dataset_root
from recbole_ext.utils.segments import indptr_from_segment_ids, positions_in_segments

MAX_VISITS = 29  # visits per patient: the maximum the spec records for SafeDrug-processed MIMIC-III (cafemed.md §3.6)

EFFECT_FILES = ("diag_med_effect.npy", "proc_med_effect.npy", "med_base_logit.npy")


def build_parser() -> argparse.ArgumentParser:
    p = CommandParser(prog="run.py prepare synthetic-ehr",
                      description="Generate a synthetic medication-recommendation dataset with planted effects "
                                  "(MIMIC-III scale by default).")
    p.add_argument("--name", default="synth-ehr", help="dataset name (a folder under the dataset root)")
    p.add_argument("--out", default=None, help="dataset root (default: $RECBOLE_EXT_DATA if set, else dataset_atomic/)")
    p.add_argument("--patients", type=int, default=6350, help="patients to generate")
    p.add_argument("--visits", type=float, default=2.37,
                   help=f"mean visits per patient (>= 1; each patient is capped at {MAX_VISITS})")
    p.add_argument("--diagnoses", type=int, default=2000, help="diagnosis vocabulary size")
    p.add_argument("--procedures", type=int, default=1400, help="procedure vocabulary size")
    p.add_argument("--medications", type=int, default=131, help="medication vocabulary size")
    p.add_argument("--conditions", type=int, default=80, help="latent conditions (comorbidity clusters)")
    p.add_argument("--persistence", type=float, default=1.0, help="log-odds bonus for repeating last visit's drug")
    p.add_argument("--ddi-density", type=float, default=0.05, help="share of medication pairs that interact")
    p.add_argument("--seed", type=int, default=2024, help="random seed of the generator")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--oracle", action="store_true",
                   help="do not generate: score the existing dataset --name's test split with its planted "
                        "probabilities (the reference any model can approach) and print the bootstrap metrics")
    return p


def _check(opts) -> None:
    checks = [(opts.patients >= 6, "--patients must be >= 6 (three splits need patients)"),
              (1 <= opts.visits <= MAX_VISITS, f"--visits (mean visits per patient) must be in [1, {MAX_VISITS}]"),
              (math.isfinite(opts.persistence), "--persistence must be a finite number"),
              (opts.diagnoses >= 20, "--diagnoses must be >= 20"), (opts.procedures >= 10, "--procedures must be >= 10"),
              (opts.medications >= 4, "--medications must be >= 4"), (opts.conditions >= 2, "--conditions must be >= 2"),
              (0 <= opts.ddi_density <= 1, "--ddi-density must be in [0, 1]"),
              (opts.seed >= 0, "--seed must be >= 0 (numpy's generators need one)")]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg, fix="see run.py prepare synthetic-ehr --help")


def _zipf(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return rng.permutation(w / w.sum())


def _emit(active: np.ndarray, log_miss: np.ndarray, rng: np.random.Generator, chunk: int = 2048) -> np.ndarray:
    """Bernoulli draws of codes for every visit: P(code) = 1 - prod_k (1 - p_kc)^active_k. Returns [V, n] bool."""
    out = np.zeros((active.shape[0], log_miss.shape[1]), dtype=bool)
    for s in range(0, active.shape[0], chunk):
        p = 1.0 - np.exp(active[s:s + chunk] @ log_miss)
        out[s:s + chunk] = rng.random(p.shape, dtype=np.float32) < p
    return out


def _draw_visits(n_pat: int, mean_visits: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(patient of each visit, its position inside the patient) for 1 + Poisson visits per patient, capped."""
    n_vis = np.minimum(1 + rng.poisson(mean_visits - 1, n_pat), MAX_VISITS)
    visit_patient = np.repeat(np.arange(n_pat), n_vis)
    visit_pos = positions_in_segments(n_vis)
    return visit_patient, visit_pos


def _draw_conditions(visit_patient: np.ndarray, n_pat: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[V, K] float32 0/1: the conditions active at each visit (chronic ones per patient, acute ones per visit)."""
    n_v = len(visit_patient)
    pop = _zipf(k, 0.8, rng)
    n_chronic = np.minimum(1 + rng.poisson(1.5, n_pat), k)
    keys = rng.random((n_pat, k)) ** (1.0 / pop[None, :])  # weighted sampling without replacement via keys
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    chronic = rank < n_chronic[:, None]
    active = chronic[visit_patient] & (rng.random((n_v, k)) < 0.8)
    n_acute = 1 + rng.poisson(0.5, n_v)
    acute = rng.random((n_v, k)) ** (1.0 / pop[None, :])
    acute_rank = np.argsort(np.argsort(-acute, axis=1), axis=1)
    active |= acute_rank < n_acute[:, None]
    return active.astype(np.float32)


def _profile(k: int, n_codes: int, per_cond: int, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """[K, n_codes]: each condition's probability of emitting each code (``per_cond`` candidates, U(lo, hi))."""
    code_pop = _zipf(n_codes, 0.6, rng)
    prob = np.zeros((k, n_codes), dtype=np.float32)
    for c in range(k):  # K small: a loop over latent conditions, not over data
        cand = rng.choice(n_codes, per_cond, replace=False, p=code_pop)
        prob[c, cand] = rng.uniform(lo, hi, per_cond)
    return prob


def _draw_codes(active: np.ndarray, n_d: int, n_p: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Diagnoses and procedures of every visit ([V, n] bool) with the condition profiles that emitted them."""
    k, n_v = active.shape[1], active.shape[0]
    diag_prob = _profile(k, n_d, 12, 0.15, 0.5, rng)
    proc_prob = _profile(k, n_p, 6, 0.1, 0.4, rng)
    diag = _emit(active, np.log1p(-diag_prob), rng)
    noise = rng.random((n_v, n_d), dtype=np.float32) < (1.0 / n_d)
    diag |= noise
    proc = _emit(active, np.log1p(-proc_prob), rng)
    # every visit needs at least one diagnosis and one procedure
    for codes, prob in ((diag, diag_prob), (proc, proc_prob)):
        empty = np.flatnonzero(~codes.any(1))
        if len(empty):
            top = np.argmax(active[empty] @ prob, axis=1)
            codes[empty, top] = True
    return {"diag": diag, "proc": proc, "diag_prob": diag_prob, "proc_prob": proc_prob}


def _plant_effects(diag_prob: np.ndarray, proc_prob: np.ndarray, n_m: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planted log-odds (w_d [n_diag, n_med], w_p [n_proc, n_med], base [n_med]): each condition treats a few
    medications; its diagnoses/procedures push them."""
    k, n_d = diag_prob.shape
    n_p = proc_prob.shape[1]
    med_pop = _zipf(n_m, 0.5, rng)
    treat = np.stack([rng.choice(n_m, 4, replace=False, p=med_pop) for _ in range(k)])
    w_d = np.zeros((n_d, n_m), dtype=np.float32)
    w_p = np.zeros((n_p, n_m), dtype=np.float32)
    owner_d = np.argmax(diag_prob, axis=0)  # the condition a diagnosis mostly belongs to
    has_d = diag_prob.max(0) > 0
    for d in np.flatnonzero(has_d):
        targets = rng.choice(treat[owner_d[d]], rng.integers(1, 3), replace=False)
        w_d[d, targets] = rng.uniform(1.5, 3.5, len(targets))
    owner_p = np.argmax(proc_prob, axis=0)
    for p in np.flatnonzero((proc_prob.max(0) > 0) & (rng.random(n_p) < 0.5)):
        # Python draws the right-hand side (the effect) before the column: the seeded stream depends on that order
        w_p[p, rng.choice(treat[owner_p[p]])] = rng.uniform(1.5, 3.0)
    base = rng.normal(-4.0, 0.8, n_m).astype(np.float32)
    return w_d, w_p, base


def _draw_medications(logit: np.ndarray, visit_pos: np.ndarray, persistence: float,
                      rng: np.random.Generator) -> np.ndarray:
    """[V, n_med] bool, visit position by position (a visit reads its predecessor's drugs); at least one per visit."""
    med = np.zeros(logit.shape, dtype=bool)
    for t in range(int(visit_pos.max()) + 1):
        rows = np.flatnonzero(visit_pos == t)
        lg = logit[rows]
        if t > 0:
            lg = lg + persistence * med[rows - 1]
        prob = 1.0 / (1.0 + np.exp(-lg))
        draw = rng.random(prob.shape) < prob
        empty = ~draw.any(1)
        draw[np.flatnonzero(empty), np.argmax(prob[empty], axis=1)] = True
        med[rows] = draw
    return med


def _draw_ddi_pairs(n_m: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """[E, 2] medication indices (a < b) of the interacting pairs."""
    iu = np.triu_indices(n_m, 1)
    pick = rng.random(len(iu[0])) < density
    return np.stack([iu[0][pick], iu[1][pick]], axis=1)


def _medication_vocab(n_m: int) -> tuple[list[str], dict[str, str]]:
    """Medication codes and names: real ATC3 classes with SMILES while they suffice, else M0001..."""
    smiles = dr.smiles_atc3_vocab()
    med_codes = list(smiles[:n_m]) if n_m <= len(smiles) else [f"M{i:04d}" for i in range(1, n_m + 1)]
    names = dr.atc_names() if n_m <= len(smiles) else {}
    return med_codes, names


def _to_lists(mat: np.ndarray, codes: np.ndarray) -> list[list[str]]:
    """Row r of a [V, n] bool matrix as the list of its codes, in column order."""
    r, c = np.nonzero(mat)
    return [list(x) for x in np.split(codes[c], indptr_from_segment_ids(r, mat.shape[0])[1:-1])]


def _tables(visit_patient: np.ndarray, visit_pos: np.ndarray, codes: dict[str, np.ndarray], med: np.ndarray,
            ddi_idx: np.ndarray) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], pd.DataFrame]:
    """The writer's inputs: visits (code lists), vocabularies and DDI pairs, from the drawn matrices."""
    n_v, n_d, n_p, n_m = len(visit_patient), codes["diag"].shape[1], codes["proc"].shape[1], med.shape[1]
    med_codes, names = _medication_vocab(n_m)
    diag_codes = np.array([f"D{i:04d}" for i in range(1, n_d + 1)])
    proc_codes = np.array([f"P{i:04d}" for i in range(1, n_p + 1)])
    med_arr = np.array(med_codes)
    visits = pd.DataFrame({"visit_id": (np.arange(n_v) + 1).astype(str),
                           "patient_id": (visit_patient + 1).astype(str),
                           "visit_order": visit_pos.astype(float),
                           "diag": _to_lists(codes["diag"], diag_codes), "proc": _to_lists(codes["proc"], proc_codes),
                           "med": _to_lists(med, med_arr)})
    vocabs = {"diag": pd.DataFrame({"code": diag_codes, "name": ""}),
              "proc": pd.DataFrame({"code": proc_codes, "name": ""}),
              "med": pd.DataFrame({"code": med_arr, "name": [names.get(c, "") for c in med_codes]})}
    pairs = pd.DataFrame({"med_a": med_arr[ddi_idx[:, 0]], "med_b": med_arr[ddi_idx[:, 1]]})
    return visits, vocabs, pairs


def generate(opts) -> dict:
    """Everything the writer needs: visits, vocabularies, DDI pairs and the planted matrices.

    One seeded stream feeds every step, so the steps must draw in this order for a seed to give the same data.
    """
    rng = np.random.default_rng(opts.seed)
    visit_patient, visit_pos = _draw_visits(opts.patients, opts.visits, rng)
    active = _draw_conditions(visit_patient, opts.patients, opts.conditions, rng)
    codes = _draw_codes(active, opts.diagnoses, opts.procedures, rng)
    w_d, w_p, base = _plant_effects(codes["diag_prob"], codes["proc_prob"], opts.medications, rng)
    logit = base[None, :] + codes["diag"].astype(np.float32) @ w_d + codes["proc"].astype(np.float32) @ w_p
    med = _draw_medications(logit, visit_pos, opts.persistence, rng)
    ddi_idx = _draw_ddi_pairs(opts.medications, opts.ddi_density, rng)
    visits, vocabs, pairs = _tables(visit_patient, visit_pos, codes, med, ddi_idx)
    return {"visits": visits, "vocabs": vocabs, "pairs": pairs, "w_d": w_d, "w_p": w_p, "base": base}


def planted_probabilities(dataset, phase: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities of the generating model for every visit of ``phase`` (a MedRecDataset of a synthetic folder).

    Returns (prob [N, n_med], target [N, n_med] bool, patient row [N]) in (patient, visit) order.
    """
    from recbole_ext.data.medrec_dataset import dataset_folder

    folder = dataset_folder(dataset.config)
    missing = [f for f in EFFECT_FILES if not (folder / f).is_file()]
    if missing or dataset.data.meta.get("source") != "synthetic-ehr":
        raise UserError(f"{folder} is not a synthetic-ehr dataset (missing {missing or 'its synthetic-ehr report'})",
                        fix="generate it with: python run.py prepare synthetic-ehr --name NAME")
    for f in EFFECT_FILES:  # numpy would read any other file as a pickle and advise allow_pickle
        with open(folder / f, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise UserError(f"{folder / f} is not a .npy file", fix="regenerate the dataset with --overwrite")
    try:
        w_d, w_p, base = (np.load(folder / f, allow_pickle=False) for f in EFFECT_FILES)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"cannot read the planted effects in {folder}: {' '.join(str(exc).split())[:200]}",
                        fix="regenerate the dataset with --overwrite") from None
    if any(a.dtype.kind != "f" or not np.isfinite(a).all() for a in (w_d, w_p, base)):
        raise UserError(f"the planted effects in {folder} are not finite floating-point arrays",
                        fix="regenerate the dataset with --overwrite")
    if (w_d.shape != (dataset.n_diag, dataset.n_med) or w_p.shape != (dataset.n_proc, dataset.n_med)
            or base.shape != (dataset.n_med,)):
        raise UserError(f"planted effect shapes {w_d.shape}/{w_p.shape} do not match the vocabularies of {folder}",
                        fix="regenerate the dataset with --overwrite")
    data = dataset.data
    rows = dataset.phase_visits(phase)
    prev = np.maximum(rows - 1, 0)
    first = (rows == 0) | (data.visit_patient[prev] != data.visit_patient[rows])

    prev_med = dataset.multi_hot("med", prev)
    prev_med[first] = 0.0
    persistence = float(data.meta.get("planted", {}).get("persistence", 0.0))
    logit = (base + dataset.multi_hot("diag", rows) @ w_d + dataset.multi_hot("proc", rows) @ w_p
             + persistence * prev_med)
    target = dataset.multi_hot("med", rows) > 0
    pos = np.empty(data.n_patients, dtype=np.int64)
    pos[dataset.split_patients(phase)] = np.arange(len(dataset.split_patients(phase)))
    return 1.0 / (1.0 + np.exp(-logit)), target, pos[data.visit_patient[rows]]


def print_oracle(opts) -> int:
    from recbole_ext.evaluation.medrec_metrics import bootstrap_scores
    from recbole_ext.data.medrec_dataset import MedRecDataset

    root = Path(opts.out).expanduser() if opts.out else dataset_root()
    ds = MedRecDataset({"dataset": opts.name, "data_path": str(root / opts.name), "seed": opts.seed})
    prob, target, patient = planted_probabilities(ds, "test")
    res = bootstrap_scores(prob, target, patient, ds.ddi_adj.numpy())
    print(f"{opts.name} test split scored with the planted probabilities (published split and bootstrap):")
    for key in ("jaccard", "prauc", "f1", "ddi_rate", "avg_med"):
        print(f"  {key:<9} {res[key]:.4f} ± {res[key + '_std']:.4f}")
    return 0


def _write(target: Path, opts, out: dict, stats: dict) -> None:
    """The atomic files, the report (options, statistics, how to read the planted files) and the planted arrays."""
    meta = {"source": "synthetic-ehr", "options": vars(opts).copy(), "statistics": stats,
            "planted": {"files": list(EFFECT_FILES), "persistence": opts.persistence,
                        "layout": "row i = code id i+1 (line i of the vocabulary), column j = medication id j+1",
                        "scale": "log-odds contributions"}}
    with atomic_dir(target, overwrite=opts.overwrite) as tmp:
        write_medrec_files(tmp, opts.name, out["visits"], out["vocabs"], out["pairs"], meta)
        for fname, arr in zip(EFFECT_FILES, (out["w_d"], out["w_p"], out["base"])):
            np.save(tmp / fname, arr)


def main(argv: list[str]) -> int:
    opts = build_parser().parse_args(argv)
    check_dataset_name(opts.name, "synth-ehr")
    if opts.oracle:
        return print_oracle(opts)
    _check(opts)
    out = generate(opts)
    stats = visit_statistics(out["visits"], out["pairs"])
    root = Path(opts.out).expanduser() if opts.out else dataset_root()
    target = root / opts.name
    _write(target, opts, out, stats)
    print(f"wrote {target}: {stats['patients']} patients, {stats['visits']} visits, codes diag/proc/med "
          f"{len(out['vocabs']['diag'])}/{len(out['vocabs']['proc'])}/{len(out['vocabs']['med'])}, "
          f"avg diag/proc/med per visit {stats['avg_diag_per_visit']:.1f}/{stats['avg_proc_per_visit']:.1f}/"
          f"{stats['avg_med_per_visit']:.1f}, {stats['ddi_pairs']} DDI pairs, "
          f"ground-truth DDI rate {stats['ground_truth_ddi_rate']:.4f}")
    return 0
