"""Bundled drug vocabularies and maps for the medication-recommendation pipeline (GAMENet / SafeDrug / MoleRec line).

Everything is read from ``recbole_ext/resources/drug_maps/`` (MIT-licensed code vocabularies; see the README and
PROVENANCE.tsv there). No pickle is ever loaded; the NDC->RxCUI dict literal goes through ``ast.literal_eval``.

* ``smiles_atc3_vocab()``: the 131 ATC level-3 classes that have SMILES (MoleRec ``idx2SMILES``). The published
  pipeline keeps only these, which fixes the medication vocabulary on MIMIC-III and MIMIC-IV alike.
* ``ndc_to_atc3(...)``: NDC (11 digits) -> ATC3. The published pipeline goes NDC -> RxCUI -> ATC via GAMENet's
  ``ndc2atc_level4.csv``, which is not redistributable here (size, unclear terms). The default stand-in is MoleRec's
  ATC3->NDC table; ``rxcui_atc_file`` restores the exact published route when the user has that file.
* ``bundled_ddi_pairs()``: GAMENet's 467 TWOSIDES ATC3 pairs (448 of them inside the 131-class vocabulary).
* ``ddi_pairs_from_twosides(path)``: rebuild pairs from a user's TWOSIDES ``drug-DDI.csv`` with the published filter
  (the 40 least frequent side-effect types).
"""
from __future__ import annotations

import ast
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from recbole_ext.errors import UserError
from recbole_ext.utils.paths import RESOURCES_DIR

DRUG_MAPS = RESOURCES_DIR / "drug_maps"


def _need(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"bundled drug resource {path} is missing", fix="reinstall recbole-ext (package data)")
    return path


def normalise_ndc(ndc: pd.Series) -> pd.Series:
    """NDCs as 11-digit strings; anything else (empty, '0', non-digits, floats like '5.0') becomes <NA>."""
    s = ndc.astype("string").str.strip()
    s = s.str.replace(r"\.0$", "", regex=True)
    ok = s.str.fullmatch(r"\d{1,11}").fillna(False) & (s.str.strip("0") != "")
    return s.where(ok).str.zfill(11)


@lru_cache(maxsize=1)
def smiles_atc3_vocab() -> tuple[str, ...]:
    """ATC3 codes with SMILES (sorted), special tokens removed."""
    data = json.loads(_need(DRUG_MAPS / "molerec" / "atc3_to_smiles.json").read_text())
    return tuple(sorted(k for k in data if len(k) == 4))


@lru_cache(maxsize=1)
def atc_names() -> dict[str, str]:
    """ATC code -> English name (WHOCC ATC index via ethos-paper)."""
    df = pd.read_csv(_need(DRUG_MAPS / "ethos" / "atc_coding.csv.gz"), dtype=str)
    return dict(zip(df["atc_code"], df["atc_name"]))


def _molerec_ndc_atc3() -> pd.DataFrame:
    df = pd.read_csv(_need(DRUG_MAPS / "molerec" / "atc3_to_ndc.csv"), dtype=str)
    return df.rename(columns={"atc3": "atc3", "ndc": "ndc"})[["ndc", "atc3"]].drop_duplicates("ndc")


def _ndc_rxcui() -> pd.DataFrame:
    text = _need(DRUG_MAPS / "gamenet" / "ndc2rxnorm_mapping.txt").read_text()
    mapping = ast.literal_eval(text)  # a dict literal; literal_eval cannot execute code
    df = pd.DataFrame({"ndc": list(mapping.keys()), "rxcui": list(mapping.values())}, dtype="string")
    df = df[df["rxcui"].str.fullmatch(r"\d+").fillna(False)]
    return df


def _rxcui_atc_file(path: Path) -> pd.DataFrame:
    """GAMENet ``ndc2atc_level4.csv`` / SafeDrug ``RXCUI2atc4.csv``: an RXCUI column and an ATC column (ATC4 or ATC5)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"RXCUI->ATC file {path} not found", fix="pass the path of ndc2atc_level4.csv / RXCUI2atc4.csv")
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as exc:  # parser errors of any kind
        raise UserError(f"cannot parse {path}: {exc}", fix="it must be a CSV with RXCUI and ATC4/ATC5 columns") from None
    cols = {c.upper(): c for c in df.columns}
    atc_col = next((cols[c] for c in ("ATC4", "ATC5", "ATC") if c in cols), None)
    if "RXCUI" not in cols or atc_col is None:
        raise UserError(f"{path} has columns {list(df.columns)}; need RXCUI and one of ATC4/ATC5/ATC",
                        fix="use GAMENet's ndc2atc_level4.csv or SafeDrug's RXCUI2atc4.csv")
    rxcui = df[cols["RXCUI"]].astype("string").str.strip()
    atc = df[atc_col].astype("string").str.strip()
    # an RXCUI is an integer; an ATC code of level 4 or 5 starts with letter, two digits, letter (A01AB...)
    good = (rxcui.str.fullmatch(r"\d+") & atc.str.fullmatch(r"[A-Z]\d\d[A-Z][A-Z0-9]*")).fillna(False).astype(bool)
    if not good.all():
        first = int(np.flatnonzero(~good.to_numpy())[0])
        print(f"{path.name}: {int((~good).sum())} of {len(good)} rows without an integer RXCUI and an ATC code "
              f"were skipped (first: line {first + 2}: {rxcui.iloc[first]!r}, {atc.iloc[first]!r})", file=sys.stderr)
    out = pd.DataFrame({"rxcui": rxcui[good], "atc3": atc[good].str[:4]})
    if out.empty:
        raise UserError(f"{path} has no row with an integer RXCUI and an ATC code",
                        fix="use GAMENet's ndc2atc_level4.csv or SafeDrug's RXCUI2atc4.csv")
    return out.drop_duplicates("rxcui", keep="first")  # published pipeline keeps the first row per RXCUI


def ndc_to_atc3(rxcui_atc_file: str | Path | None = None) -> pd.DataFrame:
    """DataFrame ``ndc, atc3`` (one row per NDC).

    Default: MoleRec's NDC->ATC3 table. With ``rxcui_atc_file``: the published NDC->RxCUI (GAMENet) -> ATC route.
    """
    if rxcui_atc_file is None:
        return _molerec_ndc_atc3().reset_index(drop=True)
    merged = _ndc_rxcui().merge(_rxcui_atc_file(rxcui_atc_file), on="rxcui", how="inner")
    return merged[["ndc", "atc3"]].drop_duplicates("ndc").reset_index(drop=True)


def gsn_to_atc3() -> pd.DataFrame:
    """DataFrame ``gsn, atc3`` (one row per GSN, first ATC in file order), from ethos-paper's GSN/ATC/NDC table."""
    df = pd.read_csv(_need(DRUG_MAPS / "ethos" / "gsn_atc_ndc_mapping.csv.gz"), dtype=str)
    df = pd.DataFrame({"gsn": df["gsn"].str.strip().str.zfill(6), "atc3": df["atc"].str.strip().str[:4]}).dropna()
    return df.drop_duplicates("gsn").reset_index(drop=True)


def bundled_ddi_pairs(vocab: set[str] | None = None) -> pd.DataFrame:
    """GAMENet's TWOSIDES ATC3 pairs (``atc3_a, atc3_b``), optionally restricted to ``vocab``."""
    df = pd.read_csv(_need(DRUG_MAPS / "gamenet" / "ddi_pairs_atc3.csv"), dtype=str)
    if vocab is not None:
        df = df[df["atc3_a"].isin(vocab) & df["atc3_b"].isin(vocab)]
    return df.reset_index(drop=True)


def _cid_atc3() -> pd.DataFrame:
    """STITCH CID -> ATC3 (long format) from GAMENet's drug-atc.csv (ragged rows: CID, ATC5, ATC5, ...)."""
    rows = _need(DRUG_MAPS / "gamenet" / "drug-atc.csv").read_text().splitlines()
    cids, atcs = [], []
    for line in rows:  # 746 short lines: a resource file, not patient data
        parts = [p.strip() for p in line.split(",") if p.strip()]
        for atc in parts[1:]:
            cids.append(parts[0])
            atcs.append(atc[:4])
    return pd.DataFrame({"cid": cids, "atc3": atcs}).drop_duplicates()


def ddi_pairs_from_twosides(path: str | Path, vocab: set[str], n_rarest_side_effects: int = 40) -> pd.DataFrame:
    """ATC3 DDI pairs from TWOSIDES ``drug-DDI.csv`` (columns STITCH 1, STITCH 2, Polypharmacy Side Effect, ...).

    Published filter: count CID pairs per side-effect type, sort descending, keep the *last* ``n_rarest`` types
    (i.e. the least frequent ones; the original code calls them "severe"), then map both CIDs to ATC3 and keep
    distinct pairs inside ``vocab``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"TWOSIDES file {path} not found", fix="pass the path of drug-DDI.csv")
    try:
        df = pd.read_csv(path, dtype=str)
    except Exception as exc:
        raise UserError(f"cannot parse {path}: {exc}", fix="it must be the TWOSIDES drug-DDI.csv") from None
    need = ["STITCH 1", "STITCH 2", "Polypharmacy Side Effect"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks columns {missing} (has {list(df.columns)})",
                        fix="use the Decagon/SafeDrug drug-DDI.csv with its header")
    counts = df.groupby("Polypharmacy Side Effect").size().sort_values(ascending=False, kind="stable")
    keep = set(counts.index[-n_rarest_side_effects:])
    sel = df[df["Polypharmacy Side Effect"].isin(keep)][["STITCH 1", "STITCH 2"]].drop_duplicates()
    cid = _cid_atc3()
    a = sel.merge(cid.rename(columns={"cid": "STITCH 1", "atc3": "atc3_a"}), on="STITCH 1")
    ab = a.merge(cid.rename(columns={"cid": "STITCH 2", "atc3": "atc3_b"}), on="STITCH 2")
    ab = ab[ab["atc3_a"].isin(vocab) & ab["atc3_b"].isin(vocab) & (ab["atc3_a"] != ab["atc3_b"])]
    lo = ab[["atc3_a", "atc3_b"]].min(axis=1)
    hi = ab[["atc3_a", "atc3_b"]].max(axis=1)
    out = pd.DataFrame({"atc3_a": lo, "atc3_b": hi}).drop_duplicates().sort_values(["atc3_a", "atc3_b"])
    if out.empty:  # a DDI-controlled model would train against no interaction at all
        raise UserError(f"no pair of {path} maps to two medications of the vocabulary ({len(df)} rows, "
                        f"{len(sel)} CID pairs of the {len(keep)} rarest side effects)",
                        fix="use the Decagon/SafeDrug drug-DDI.csv, whose STITCH ids look like CID000002173")
    return out.reset_index(drop=True)
