"""``prepare mimic3`` / ``prepare mimic4``: MIMIC CSVs -> medication-recommendation atomic files.

Follows the SafeDrug/GAMENet pipeline as used by CausalMed (spec cafemed.md §3) by default:

* medications: keep ids, start time, NDC; drop NDC "0"; forward-fill NaNs, drop the rest and duplicates; sort
  (MIMIC-III: subject, hadm, icustay, startdate; MIMIC-IV: subject, hadm, starttime); keep subjects with >= 2
  admissions *in the prescription table*; NDC -> ATC3; de-duplicate; keep ATC3 classes with SMILES; top-300;
* diagnoses: drop NaNs and duplicates, top-2000 codes by row count;
* procedures: de-duplicate, order by SEQ_NUM; MIMIC-III unfiltered, MIMIC-IV top-1500;
* admissions present in all three tables; patients in SUBJECT_ID order, visits in numeric HADM_ID order;
* DDI pairs: the bundled GAMENet TWOSIDES pairs restricted to the medication vocabulary (``--twosides`` rebuilds them).

Corrected variants are options: ``--visit-order admittime``, ``--icd-version-prefix`` (MIMIC-IV), ``--no-ffill``;
``--vocab-from train`` builds the vocabularies and top-N filters from the training patients only.
Every dropped row is counted in the report (printed and saved in ``<name>.json``), including unmapped NDCs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.data.medrec import first_appearance_vocab, split_patients, visit_statistics, write_medrec_files
from recbole_ext.data.prepare import drug_resources as dr
from recbole_ext.errors import UserError
from recbole_ext.utils.argparsing import CommandParser
from recbole_ext.utils.hashing import file_sha256
from recbole_ext.utils.io import atomic_dir, refuse_existing
from recbole_ext.utils.paths import check_dataset_name, dataset_root

S, H = "SUBJECT_ID", "HADM_ID"


# ----------------------------------------------------------------------------------------------------------- reading
def find_table(src: Path, stem: str, required: bool = True) -> Path | None:
    """``stem``.csv or .csv.gz, any letter case, in ``src`` (or ``src/hosp`` for MIMIC-IV)."""
    wanted = {f"{stem}.csv".lower(), f"{stem}.csv.gz".lower()}
    for folder in (src, src / "hosp"):
        if folder.is_dir():
            found = [p for p in sorted(folder.iterdir()) if p.name.lower() in wanted and p.is_file()]
            if len(found) > 1:  # which one is the table? (a half-extracted copy beside the archive, ...)
                raise UserError(f"{folder} holds {' and '.join(p.name for p in found)}",
                                fix="keep one copy of the table")
            if found:
                return found[0]
    if required:
        raise UserError(f"no {stem}.csv or {stem}.csv.gz in {src}",
                        fix="point --src at the folder holding the MIMIC CSVs (plain or .gz)")
    return None


def read_table(path: Path, columns: list[str], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read only ``columns`` (matched case-insensitively) as strings; column names come back upper-case."""
    wanted = {c.upper() for c in columns} | {c.upper() for c in optional}
    try:
        header = pd.read_csv(path, nrows=0).columns
    except Exception as exc:
        raise UserError(f"cannot read {path}: {exc}", fix="the file must be a CSV (optionally gzip-compressed)") from None
    have = {c.upper(): c for c in header}
    missing = [c for c in columns if c.upper() not in have]
    if missing:
        raise UserError(f"{path.name} lacks column(s) {missing} (has {list(header)})",
                        fix="use the original MIMIC table with its header")
    use = [have[c] for c in have if c in wanted]
    try:
        df = pd.read_csv(path, usecols=use, dtype=str, keep_default_na=True)
    except Exception as exc:
        raise UserError(f"cannot parse {path.name}: {' '.join(str(exc).split())}",
                        fix="the table is malformed; re-download it from PhysioNet") from None
    df.columns = [c.upper() for c in df.columns]
    return df


def _numeric_ids(df: pd.DataFrame, cols: list[str], table: str, report: dict) -> pd.DataFrame:
    """Cast id columns to int64; rows whose present ids are not integers are dropped and counted."""
    bad = np.zeros(len(df), dtype=bool)
    out = {}
    for c in cols:
        val = pd.to_numeric(df[c], errors="coerce")
        # MIMIC ids are positive integers; anything else (text, fractions, <= 0, beyond int64) is unparseable
        bad |= (val.isna() & df[c].notna()).to_numpy() | (val.notna() & ((val % 1 != 0) | (val <= 0)
                                                                          | (val >= 2**62))).to_numpy()
        out[c] = val
    n_bad = int(bad.sum())
    report.setdefault("unparseable_rows", {})[table] = n_bad
    df = df.assign(**out)[~bad]
    return df


# ------------------------------------------------------------------------------------------------------ medications
def process_medications(med: pd.DataFrame, version: int, opts, report: dict) -> pd.DataFrame:
    """Prescription rows -> ``SUBJECT_ID, HADM_ID, TIME, ATC3`` in (subject, hadm, time) order (before top-N)."""
    steps = report.setdefault("medication_steps", {})
    time_col = "STARTDATE" if version == 3 else "STARTTIME"
    keep = [S, H, "ICUSTAY_ID", time_col, "NDC"] if version == 3 else [S, H, time_col, "NDC"]
    gsn = med["GSN"].str.strip() if "GSN" in med.columns else None
    med = med[keep].copy()
    if gsn is not None:
        med["GSN"] = gsn
    steps["rows_read"] = len(med)
    med = med[med["NDC"].str.strip() != "0"]
    steps["after_drop_ndc_0"] = len(med)
    core = [c for c in keep]
    if opts.ffill:
        med[core] = med[core].ffill()  # published quirk: a missing NDC/id inherits the previous row's value
    else:  # corrected: drop rows missing what the pipeline uses; ICUSTAY_ID only orders rows (non-ICU: empty)
        core = [S, H, time_col, "NDC"]
    med = med.dropna(subset=core).drop_duplicates()
    steps["after_fill_dropna_dedup"] = len(med)
    id_cols = [S, H] + (["ICUSTAY_ID"] if version == 3 else [])
    med = _numeric_ids(med, id_cols, "prescriptions", report)
    med[time_col] = pd.to_datetime(med[time_col], errors="coerce")
    report.setdefault("unparseable_dates", {})["prescriptions"] = int(med[time_col].isna().sum())
    med = med.sort_values(id_cols + [time_col], kind="stable", na_position="last")
    if version == 3:
        med = med.drop(columns=["ICUSTAY_ID"])
    med = med.drop_duplicates().rename(columns={time_col: "TIME"}).reset_index(drop=True)
    steps["after_sort_dedup"] = len(med)

    n_adm = med.groupby(S)[H].nunique()
    keep_subjects = n_adm.index[n_adm >= opts.min_admissions]
    med = med[med[S].isin(keep_subjects)]
    steps[f"after_min_admissions_{opts.min_admissions}"] = len(med)

    med = map_ndc(med, opts, report)
    med = med.drop_duplicates([S, H, "TIME", "ATC3"])
    steps["after_atc3_dedup"] = len(med)
    if opts.smiles_filter:
        vocab = set(dr.smiles_atc3_vocab())
        dropped = med[~med["ATC3"].isin(vocab)]
        report["atc3_without_smiles"] = {"rows": len(dropped), "codes": sorted(dropped["ATC3"].unique().tolist())}
        med = med[med["ATC3"].isin(vocab)]
        steps["after_smiles_filter"] = len(med)
    # TIME stays: the top-N filter (``restrict_vocabularies``) counts prescription rows, as published
    return med[[S, H, "TIME", "ATC3"]].reset_index(drop=True)


def map_ndc(med: pd.DataFrame, opts, report: dict) -> pd.DataFrame:
    """NDC -> ATC3 through the bundled map (optionally GSN fallback); unmapped rows are counted and reported."""
    table = dr.ndc_to_atc3(opts.rxcui_atc)
    lookup = pd.Series(table["atc3"].to_numpy(), index=table["ndc"].to_numpy())
    ndc = dr.normalise_ndc(med["NDC"])
    atc = ndc.map(lookup)
    via_gsn = 0
    if opts.gsn_fallback and "GSN" not in med.columns:
        raise UserError("--gsn-fallback needs the GSN column of the prescriptions table, which it lacks",
                        fix="drop --gsn-fallback, or use MIMIC's prescriptions table with its GSN column")
    if opts.gsn_fallback:
        g = dr.gsn_to_atc3()
        gsn_lookup = pd.Series(g["atc3"].to_numpy(), index=g["gsn"].to_numpy())
        fill = med["GSN"].str.strip().str.zfill(6).map(gsn_lookup)
        via_gsn = int((atc.isna() & fill.notna()).sum())
        atc = atc.fillna(fill)
    unmapped = atc.isna().to_numpy()
    raw_ndc = med["NDC"].astype(str).str.strip()
    top = raw_ndc[unmapped].value_counts().head(20)
    report["ndc_mapping"] = {
        "map": "rxcui-atc file " + str(opts.rxcui_atc) if opts.rxcui_atc else "bundled MoleRec NDC->ATC3",
        "rows": int(len(med)), "mapped_rows": int((~unmapped).sum()), "unmapped_rows": int(unmapped.sum()),
        "distinct_ndc": int(raw_ndc.nunique()), "unmapped_distinct_ndc": int(raw_ndc[unmapped].nunique()),
        "mapped_via_gsn_fallback": via_gsn, "top_unmapped_ndc": {str(k): int(v) for k, v in top.items()},
    }
    out = med.assign(ATC3=atc)[~unmapped]
    return out


def _top_codes(codes: pd.Series, n: int) -> pd.Index:
    """The ``n`` most frequent codes by row count; ties broken by code (stable and deterministic)."""
    counts = codes.value_counts(sort=False).sort_index()
    return counts.sort_values(ascending=False, kind="stable").index[:n]


# ----------------------------------------------------------------------------------------- diagnoses and procedures
def _versioned(df: pd.DataFrame, opts) -> pd.Series:
    code = df["CODE"].str.strip()
    if opts.icd_version_prefix:
        return df["ICD_VERSION"].str.strip() + "_" + code
    return code


def _icd_rows(df: pd.DataFrame, version: int, opts, report: dict, table: str) -> pd.DataFrame:
    """Shared first steps of the diagnosis and procedure tables: ids checked, NaNs dropped, codes normalised."""
    df = df.rename(columns={"ICD9_CODE" if version == 3 else "ICD_CODE": "CODE"})
    df = _numeric_ids(df.dropna(subset=[S, H, "CODE"]), [S, H], table, report)
    if opts.icd_version_prefix:  # the prefix needs a version: 9 or 10, as MIMIC-IV writes it
        bad = ~df["ICD_VERSION"].fillna("").str.strip().isin(["9", "10"])
        report["unparseable_rows"][table] += int(bad.sum())
        df = df[~bad]
    return df.assign(CODE=_versioned(df, opts))


def process_diagnoses(diag: pd.DataFrame, version: int, opts, report: dict) -> pd.DataFrame:
    steps = report.setdefault("diagnosis_steps", {"rows_read": len(diag)})
    diag = _icd_rows(diag, version, opts, report, "diagnoses")[[S, H, "CODE"]].drop_duplicates()
    diag = diag.sort_values([S, H], kind="stable")
    steps["after_dropna_dedup"] = len(diag)
    return diag.reset_index(drop=True)


def process_procedures(proc: pd.DataFrame, version: int, opts, report: dict) -> pd.DataFrame:
    steps = report.setdefault("procedure_steps", {"rows_read": len(proc)})
    proc = _icd_rows(proc, version, opts, report, "procedures")
    seq = pd.to_numeric(proc["SEQ_NUM"], errors="coerce")
    bad = seq.isna() & proc["SEQ_NUM"].notna()  # text where the order should be: the order is unknown
    report["unparseable_rows"]["procedures"] += int(bad.sum())
    proc = proc.assign(SEQ_NUM=seq)[~bad][[S, H, "SEQ_NUM", "CODE"]]
    proc = proc.drop_duplicates().sort_values([S, H, "SEQ_NUM"], kind="stable", na_position="last")
    proc = proc.drop(columns="SEQ_NUM").drop_duplicates()
    steps["after_dedup"] = len(proc)
    return proc.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------- admissions
def admissions_times(admit: pd.DataFrame, report: dict) -> pd.DataFrame:
    """``SUBJECT_ID, HADM_ID, ADMITTIME`` (datetime) for ``--visit-order admittime``; unparseable times counted."""
    admit = _numeric_ids(admit, [S, H], "admissions", report)
    with warnings.catch_warnings():  # pandas warns when it cannot infer one format; the count below says more
        warnings.simplefilter("ignore", UserWarning)
        when = pd.to_datetime(admit["ADMITTIME"], errors="coerce")
    report.setdefault("unparseable_dates", {})["admissions"] = int((when.isna() & admit["ADMITTIME"].notna()).sum())
    admit = admit.assign(ADMITTIME=when)[[S, H, "ADMITTIME"]].drop_duplicates()
    twice = admit.duplicated([S, H], keep=False)
    if twice.any():
        first = admit[twice].iloc[0]
        raise UserError(f"admissions: HADM_ID {int(first[H])} has {int(twice.sum())} rows with different ADMITTIMEs",
                        fix="each admission has one row in MIMIC's admissions table")
    return admit


# ----------------------------------------------------------------------------------------------------- vocabularies
# (kind, code column, top-N option, report section) of the three code tables
VOCAB_TABLES = (("diag", "CODE", "top_diag", "diagnosis_steps"), ("proc", "CODE", "top_proc", "procedure_steps"),
                ("med", "ATC3", "top_med", "medication_steps"))
MAX_VOCAB_ROUNDS = 20


def _keys(df: pd.DataFrame) -> pd.MultiIndex:
    # int64 levels: an id column that held an unparseable value was parsed as float64
    return pd.MultiIndex.from_arrays([df[S].astype(np.int64).to_numpy(), df[H].astype(np.int64).to_numpy()])


def training_admissions(visits: pd.DataFrame) -> pd.MultiIndex:
    """(SUBJECT_ID, HADM_ID) of the visits that the medication task's split (``medrec_split: ordered``) will train
    on: those of the first floor(2N/3) patients, in the dataset's (SUBJECT_ID) order."""
    patients = pd.unique(visits["patient_id"])
    train = set(patients[split_patients(len(patients))["train"]])
    rows = visits[visits["patient_id"].isin(train)]
    return pd.MultiIndex.from_arrays([rows["patient_id"].astype(np.int64).to_numpy(),
                                      rows["visit_id"].astype(np.int64).to_numpy()], names=[S, H])


def _allowed_codes(codes: pd.Series, n: int) -> pd.Index:
    return _top_codes(codes, n) if n > 0 else pd.Index(pd.unique(codes.to_numpy()))


def restrict_vocabularies(tables: dict[str, pd.DataFrame], admit, opts, report: dict) -> pd.DataFrame:
    """The top-N filters (or, with ``--vocab-from train``, the training vocabularies) applied, then ``combine``.

    ``all`` (published): each top-N counts the rows of the whole table (every patient of the source).
    ``train``: the codes kept are those of the training patients' visits (the N most frequent there, or all of them
    with N = 0); in validation/test visits the other codes are dropped, and a visit left without diagnoses,
    procedures or medications is dropped like any admission missing from a table. Dropping visits can remove
    patients and so move the split's boundary: the training visits are recomputed from the result until they are
    the ones the vocabularies were counted on (a fixed point: 2 rounds on the bundled demos), so that the vocabularies
    are exactly the codes of the visits training will use.
    """
    if opts.vocab_from == "all":
        kept = {}
        for kind, col, flag, section in VOCAB_TABLES:
            df, n = tables[kind], getattr(opts, flag)
            if n > 0:
                df = df[df[col].isin(_top_codes(df[col], n))]
                report[section][f"after_top_{n}"] = len(df)
            kept[kind] = df.reset_index(drop=True)
        return combine(kept["med"], kept["diag"], kept["proc"], admit, report)

    candidates = combine(tables["med"], tables["diag"], tables["proc"], admit, report)  # before any code is dropped
    train = training_admissions(candidates)
    for rounds in range(1, MAX_VOCAB_ROUNDS + 1):
        kept, allowed = {}, {}
        for kind, col, flag, _ in VOCAB_TABLES:
            df = tables[kind]
            allowed[kind] = _allowed_codes(df[col][_keys(df).isin(train)], getattr(opts, flag))
            kept[kind] = df[df[col].isin(allowed[kind])].reset_index(drop=True)
        visits = combine(kept["med"], kept["diag"], kept["proc"], admit, report)
        now = training_admissions(visits)
        if now.sort_values().equals(train.sort_values()):
            break
        train = now
    else:
        raise UserError(f"--vocab-from train: the training patients did not settle in {MAX_VOCAB_ROUNDS} rounds "
                        "(dropping validation/test visits keeps moving the split's boundary)",
                        fix="use --vocab-from all, or raise the --top-* sizes")
    _report_training_vocab(tables, kept, allowed, candidates, visits, train, rounds, opts, report)
    return visits


def _report_training_vocab(tables, kept, allowed, candidates, visits, train, rounds, opts, report) -> None:
    """What ``--vocab-from train`` removed: per kind, the code entries dropped from validation/test visits."""
    final = pd.MultiIndex.from_arrays([visits["patient_id"].astype(np.int64).to_numpy(),
                                       visits["visit_id"].astype(np.int64).to_numpy()])
    held_out = final[~final.isin(train)]
    out = {"from": "train", "rounds": rounds, "training_patients": int(train.get_level_values(0).nunique()),
           "training_visits": len(train),
           "visits_dropped": int(len(candidates) - len(visits)),
           "patients_dropped": int(candidates["patient_id"].nunique() - visits["patient_id"].nunique())}
    for kind, col, flag, section in VOCAB_TABLES:
        df = tables[kind]
        rows = df[_keys(df).isin(held_out)].drop_duplicates([S, H, col])
        gone = rows[~rows[col].isin(allowed[kind])]
        out[kind] = {"codes": len(allowed[kind]), "held_out_entries_dropped": len(gone),
                     "held_out_codes_dropped": int(gone[col].nunique())}
        n = getattr(opts, flag)
        report[section][f"after_train_top_{n}" if n > 0 else "after_train_codes"] = len(kept[kind])
    report["vocabulary"] = out


# -------------------------------------------------------------------------------------------------------- combining
def combine(med: pd.DataFrame, diag: pd.DataFrame, proc: pd.DataFrame, admit: pd.DataFrame | None,
            report: dict) -> pd.DataFrame:
    """Admissions present in all three tables -> one row per visit with ordered, unique code lists."""
    keys = [S, H]

    def key_index(df):
        return pd.MultiIndex.from_frame(df[keys].drop_duplicates())

    for table, df in (("prescriptions", med), ("diagnoses", diag), ("procedures", proc)):
        owners = df[keys].drop_duplicates().groupby(H)[S].nunique()
        if (owners > 1).any():  # visit ids must be unique: the dataset would be refused when loaded
            raise UserError(f"{table}: HADM_ID {owners.index[owners > 1][0]} belongs to {owners.max()} subjects",
                            fix="each admission has one subject in MIMIC; the table is damaged or merged from "
                                "two sources")
    common = key_index(med).intersection(key_index(diag)).intersection(key_index(proc))
    report["admissions"] = {"with_meds": len(key_index(med)), "with_diagnoses": len(key_index(diag)),
                            "with_procedures": len(key_index(proc)), "in_all_three": len(common)}
    if len(common) == 0:
        steps = report.get("medication_steps", {})
        raise UserError("no admission has medications, diagnoses and procedures after filtering (admissions with "
                        f"meds/diagnoses/procedures: {len(key_index(med))}/{len(key_index(diag))}/"
                        f"{len(key_index(proc))}; prescription rows by step: {steps})",
                        fix="the step where the rows vanish names the cause (--min-admissions, the NDC map, "
                            "top-N filters)")

    def lists(df, col, name):
        df = df[pd.MultiIndex.from_frame(df[keys]).isin(common)].drop_duplicates(keys + [col])
        return df.groupby(keys, sort=True)[col].agg(list).rename(name)

    visits = pd.concat([lists(diag, "CODE", "diag"), lists(proc, "CODE", "proc"), lists(med, "ATC3", "med")],
                       axis=1).reset_index()
    if admit is not None:
        visits = visits.merge(admit, on=keys, how="left")
        report["admissions"]["without_admittime"] = int(visits["ADMITTIME"].isna().sum())
        if visits["ADMITTIME"].isna().all():
            raise UserError(f"--visit-order admittime: none of the {len(visits)} visits has a readable ADMITTIME "
                            f"({report['unparseable_dates']['admissions']} admissions rows could not be parsed)",
                            fix="use MIMIC's admissions table (ADMITTIME like 2199-01-13 17:13:00) or "
                                "--visit-order hadm")
        visits = visits.sort_values([S, "ADMITTIME", H], kind="stable", na_position="last")
    else:
        visits = visits.sort_values([S, H], kind="stable")
    visits["visit_order"] = visits.groupby(S, sort=False).cumcount().astype(float)
    visits = visits.rename(columns={S: "patient_id", H: "visit_id"})
    visits["patient_id"] = visits["patient_id"].astype(np.int64).astype(str)
    visits["visit_id"] = visits["visit_id"].astype(np.int64).astype(str)
    return visits[["visit_id", "patient_id", "visit_order", "diag", "proc", "med"]].reset_index(drop=True)


def _code_names(path: Path | None, version: int, prefix: bool) -> dict[str, str]:
    if path is None:
        return {}
    if version == 3:
        df = read_table(path, ["ICD9_CODE", "LONG_TITLE"])
        return dict(zip(df["ICD9_CODE"].str.strip(), df["LONG_TITLE"]))
    df = read_table(path, ["ICD_CODE", "ICD_VERSION", "LONG_TITLE"])
    code = df["ICD_CODE"].str.strip()
    if prefix:
        code = df["ICD_VERSION"].str.strip() + "_" + code
    return dict(zip(code[::-1], df["LONG_TITLE"][::-1]))  # reversed: the first row wins on unprefixed collisions


# ------------------------------------------------------------------------------------------------------------ driver
def build_parser(version: int) -> argparse.ArgumentParser:
    ds = f"mimic{version}"
    p = CommandParser(prog=f"run.py prepare {ds}",
                      description=f"Build the {ds} medication-recommendation dataset from MIMIC-"
                                  f"{'III v1.4' if version == 3 else 'IV hosp/'} CSVs (plain or .gz).")
    p.add_argument("--src", required=True, help="folder with the CSVs" + ("" if version == 3 else " (or its hosp/)"))
    p.add_argument("--name", default=ds, help="dataset name (a folder under the dataset root)")
    p.add_argument("--out", default=None, help="dataset root (default: $RECBOLE_EXT_DATA if set, else dataset_atomic/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--min-admissions", type=int, default=2,
                   help="keep subjects with at least this many admissions in the prescription table (published: 2)")
    p.add_argument("--top-diag", type=int, default=2000, help="keep the N most frequent diagnosis codes (0 = all)")
    p.add_argument("--top-proc", type=int, default=0 if version == 3 else 1500,
                   help="keep the N most frequent procedure codes (0 = all; published: III all, IV 1500)")
    p.add_argument("--top-med", type=int, default=300, help="keep the N most frequent ATC3 classes (0 = all)")
    p.add_argument("--vocab-from", choices=["all", "train"], default="all",
                   help="patients the vocabularies and the --top-* counts come from: all (published) or the "
                        "training patients of the ordered split (codes seen only in validation/test visits are "
                        "dropped from them)")
    p.add_argument("--no-smiles-filter", dest="smiles_filter", action="store_false",
                   help="keep ATC3 classes without SMILES (published: only the 131 with SMILES)")
    p.add_argument("--no-ffill", dest="ffill", action="store_false",
                   help="drop prescription rows with missing fields instead of forward-filling them (corrected)")
    p.add_argument("--visit-order", choices=["hadm", "admittime"], default="hadm",
                   help="visit order inside a patient: numeric HADM_ID (published) or ADMITTIME (corrected; needs "
                        "the admissions table)")
    p.add_argument("--rxcui-atc", default=None,
                   help="GAMENet ndc2atc_level4.csv / SafeDrug RXCUI2atc4.csv for the published NDC->RxCUI->ATC route")
    p.add_argument("--gsn-fallback", action="store_true",
                   help="map NDCs that the NDC map misses through their GSN (bundled ethos GSN->ATC table)")
    p.add_argument("--twosides", default=None,
                   help="TWOSIDES drug-DDI.csv: rebuild DDI pairs (40 least frequent side-effect types)")
    p.add_argument("--ddi-side-effects", type=int, default=40, help="with --twosides: how many rarest types to keep")
    if version == 4:
        p.add_argument("--icd-version-prefix", action="store_true",
                       help="prefix ICD codes with their version (9_4019, 10_I10) instead of mixing them (corrected)")
    return p


def prepare(version: int, argv: list[str]) -> int:
    opts = build_parser(version).parse_args(argv)
    if version == 3:
        opts.icd_version_prefix = False
    src = Path(opts.src).expanduser()
    if not src.is_dir():
        raise UserError(f"--src {src} is not a folder", fix="point --src at the folder holding the MIMIC CSVs")
    check_dataset_name(opts.name, f"mimic{version}")
    if opts.min_admissions < 1:
        raise UserError("--min-admissions must be >= 1", fix="use 1 (no filter) or 2 (published)")
    for flag in ("top_diag", "top_proc", "top_med"):  # a negative N used to mean "all" silently, like 0
        if getattr(opts, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(opts, flag)}",
                            fix="use 0 to keep every code, or N to keep the N most frequent")
    if opts.ddi_side_effects < 1:
        raise UserError(f"--ddi-side-effects must be >= 1, got {opts.ddi_side_effects}",
                        fix="use 40 (published: the 40 rarest side-effect types)")
    target = (Path(opts.out).expanduser() if opts.out else dataset_root()) / opts.name
    refuse_existing(target, opts.overwrite)  # before minutes of processing, not after
    stems = {3: ("PRESCRIPTIONS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "ADMISSIONS", "D_ICD_DIAGNOSES",
                 "D_ICD_PROCEDURES"),
             4: ("prescriptions", "diagnoses_icd", "procedures_icd", "admissions", "d_icd_diagnoses",
                 "d_icd_procedures")}[version]
    med_p, diag_p, proc_p = (find_table(src, s) for s in stems[:3])
    adm_p = find_table(src, stems[3], required=opts.visit_order == "admittime")
    dnames_p, pnames_p = (find_table(src, s, required=False) for s in stems[4:])
    report: dict = {"source": f"MIMIC-{'III' if version == 3 else 'IV'}", "options": vars(opts).copy(),
                    "files": {p.name: file_sha256(p) for p in (med_p, diag_p, proc_p) if p is not None}}

    time_col = "STARTDATE" if version == 3 else "STARTTIME"
    med_cols = [S, H, time_col, "NDC"] + (["ICUSTAY_ID"] if version == 3 else [])
    code_col = "ICD9_CODE" if version == 3 else "ICD_CODE"
    ver_cols = [] if version == 3 else ["ICD_VERSION"]
    print(f"reading {med_p.name}, {diag_p.name}, {proc_p.name} from {src}", file=sys.stderr)
    med = process_medications(read_table(med_p, med_cols, optional=("GSN",)), version, opts, report)
    diag = process_diagnoses(read_table(diag_p, [S, H, code_col] + ver_cols), version, opts, report)
    proc = process_procedures(read_table(proc_p, [S, H, "SEQ_NUM", code_col] + ver_cols), version, opts, report)
    admit = None
    if opts.visit_order == "admittime":
        admit = admissions_times(read_table(adm_p, [S, H, "ADMITTIME"]), report)
    visits = restrict_vocabularies({"diag": diag, "proc": proc, "med": med}, admit, opts, report)

    atc = dr.atc_names()
    vocabs = {"diag": first_appearance_vocab(visits, "diag", _code_names(dnames_p, version, opts.icd_version_prefix)),
              "proc": first_appearance_vocab(visits, "proc", _code_names(pnames_p, version, opts.icd_version_prefix)),
              "med": first_appearance_vocab(visits, "med", atc)}
    med_set = set(vocabs["med"]["code"])
    if opts.twosides:
        pairs = dr.ddi_pairs_from_twosides(opts.twosides, med_set, opts.ddi_side_effects)
        report["ddi_source"] = f"TWOSIDES {opts.twosides} (rarest {opts.ddi_side_effects} side-effect types)"
    else:
        pairs = dr.bundled_ddi_pairs(med_set)
        report["ddi_source"] = "bundled GAMENet TWOSIDES ATC3 pairs restricted to the medication vocabulary"
    pairs = pairs.rename(columns={"atc3_a": "med_a", "atc3_b": "med_b"})
    report["statistics"] = visit_statistics(visits, pairs)

    with atomic_dir(target, overwrite=opts.overwrite) as tmp:
        write_medrec_files(tmp, opts.name, visits, vocabs, pairs, report)
        licence = next((p for p in (src / "LICENSE.txt", src.parent / "LICENSE.txt") if p.is_file()), None)
        if licence is not None:  # the demos are ODbL: derived databases keep the licence (share-alike)
            shutil.copy(licence, tmp / "LICENSE.txt")
            (tmp / "NOTICE.txt").write_text(
                f"{opts.name} is derived from {report['source']} tables in {src.name}/ by recbole-ext "
                f"(prepare mimic{version}). The source's licence (LICENSE.txt, here ODbL 1.0 for the PhysioNet "
                "demos) applies to these files; see raw/README.md for attribution when present.\n")
        if (target / "raw").is_dir():  # bundled demos keep their raw tables inside the dataset folder
            shutil.copytree(target / "raw", tmp / "raw")
    print_report(report, target)
    return 0


def print_report(report: dict, target: Path) -> None:
    m = report["ndc_mapping"]
    st = report["statistics"]
    print(f"wrote {target}")
    print(f"  NDC mapping: {m['mapped_rows']}/{m['rows']} prescription rows mapped; {m['unmapped_rows']} rows "
          f"({m['unmapped_distinct_ndc']} of {m['distinct_ndc']} distinct NDCs) had no ATC3 and were dropped"
          + (f"; {m['mapped_via_gsn_fallback']} rows mapped via GSN" if m["mapped_via_gsn_fallback"] else ""))
    if report.get("atc3_without_smiles", {}).get("rows"):
        print(f"  {report['atc3_without_smiles']['rows']} rows of ATC3 classes without SMILES dropped")
    bad = {k: v for k, v in report.get("unparseable_rows", {}).items() if v}
    if bad:
        print(f"  unparseable rows dropped: {bad}")
    dates = {k: v for k, v in report.get("unparseable_dates", {}).items() if v}
    if dates:
        print(f"  unparseable dates (prescriptions: ordered last in their admission; admissions: no ADMITTIME): "
              f"{dates}")
    if report["admissions"].get("without_admittime"):
        print(f"  {report['admissions']['without_admittime']} visits without a readable ADMITTIME are ordered after "
              "their patient's dated visits, by HADM_ID")
    v = report.get("vocabulary")
    if v:
        dropped = ", ".join(f"{v[k]['held_out_entries_dropped']} {k} ({v[k]['held_out_codes_dropped']} codes)"
                            for k in ("diag", "proc", "med"))
        print(f"  vocabularies from the {v['training_patients']} training patients ({v['training_visits']} visits, "
              f"{v['rounds']} round(s)): dropped from validation/test visits {dropped}; {v['visits_dropped']} "
              f"visits and {v['patients_dropped']} patients dropped by the vocabulary filters")
    a = report["admissions"]
    print(f"  admissions with meds/diagnoses/procedures: {a['with_meds']}/{a['with_diagnoses']}/"
          f"{a['with_procedures']}; in all three: {a['in_all_three']}")
    print(f"  {st['patients']} patients, {st['visits']} visits, codes diag/proc/med "
          f"{st['n_diag_codes']}/{st['n_proc_codes']}/{st['n_med_codes']}, {st['ddi_pairs']} DDI pairs, "
          f"ground-truth DDI rate {st['ground_truth_ddi_rate']:.4f}")


def main_mimic3(argv: list[str]) -> int:
    return prepare(3, argv)


def main_mimic4(argv: list[str]) -> int:
    return prepare(4, argv)
