"""Medication data: bundled datasets, MIMIC preparation, bad input, synthetic generator, split and collation."""
import gzip
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recbole_ext.data.medrec import load_medrec
from recbole_ext.data.medrec import split_patients
from recbole_ext.data.medrec_dataset import MedRecDataset
from recbole_ext.data.prepare import mimic, synthetic_ehr
from recbole_ext.errors import UserError

ROOT = Path(__file__).resolve().parent.parent / "dataset_atomic"
RAW3 = ROOT / "mimic3-demo" / "raw"
DEMO3 = ["--min-admissions", "1", "--gsn-fallback"]


@pytest.fixture(scope="module")
def raw3_copy(tmp_path_factory):
    """Plain-CSV copy of the bundled MIMIC-III demo tables, editable by tests."""
    d = tmp_path_factory.mktemp("raw3")
    for p in RAW3.glob("*.csv.gz"):
        with gzip.open(p, "rt") as fin:
            (d / p.name[:-3]).write_text(fin.read())
    return d


def _prep(src, out, *extra, name="m3"):
    return mimic.main_mimic3(["--src", str(src), "--out", str(out), "--name", name, *extra])


@pytest.mark.parametrize("name", ["mimic3-demo", "mimic4-demo", "synth-ehr-small"])
def test_bundled_datasets_load_and_are_consistent(name):
    data = load_medrec(ROOT / name)
    assert data.n_patients >= 80 and data.n_visits >= data.n_patients
    for kind in ("diag", "proc", "med"):
        csr = data.codes[kind]
        assert (csr.lengths() > 0).all()  # no empty visit of any kind
        assert csr.indices.min() >= 1 and csr.indices.max() <= data.n_codes(kind)
    assert (data.ddi_pairs[:, 0] < data.ddi_pairs[:, 1]).all()
    assert len(data.ddi_pairs) == json.loads((ROOT / name / f"{name}.json").read_text())["statistics"]["ddi_pairs"]
    # patients are contiguous and visits sorted inside a patient
    assert (np.diff(data.visit_patient) >= 0).all()


def test_bundled_demo_is_reproducible_from_raw(tmp_path):
    _prep(RAW3, tmp_path, *DEMO3, name="mimic3-demo")
    for suffix in ("visit", "diagvoc", "procvoc", "medvoc", "ddi"):
        new = (tmp_path / "mimic3-demo" / f"mimic3-demo.{suffix}").read_text()
        assert new == (ROOT / "mimic3-demo" / f"mimic3-demo.{suffix}").read_text(), suffix
    assert (tmp_path / "mimic3-demo" / "LICENSE.txt").is_file()


def test_prepare_mimic3_published_defaults(tmp_path, raw3_copy, capsys):
    _prep(raw3_copy, tmp_path)
    out = capsys.readouterr().out
    assert "had no ATC3 and were dropped" in out
    meta = json.loads((tmp_path / "m3" / "m3.json").read_text())
    m = meta["ndc_mapping"]
    assert m["unmapped_rows"] > 0 and m["mapped_rows"] + m["unmapped_rows"] == m["rows"]
    assert f"{m['unmapped_rows']} rows ({m['unmapped_distinct_ndc']} of {m['distinct_ndc']}" in out
    assert sum(m["top_unmapped_ndc"].values()) <= m["unmapped_rows"]
    data = load_medrec(tmp_path / "m3")
    # >= 2 admissions in the prescription table is the published filter; later filters may leave single visits
    assert meta["options"]["min_admissions"] == 2
    assert data.n_patients == meta["statistics"]["patients"]
    visit = pd.read_csv(tmp_path / "m3" / "m3.visit", sep="\t", dtype=str)
    assert list(visit.columns) == ["visit_id:token", "patient_id:token", "visit_order:float", "diag:token_seq",
                                   "proc:token_seq", "med:token_seq"]
    # published order: patients by numeric SUBJECT_ID, visits by numeric HADM_ID
    pid = visit["patient_id:token"].astype(int)
    assert (np.diff(pid.to_numpy()) >= 0).all()
    hadm = visit["visit_id:token"].astype(int).groupby(pid).apply(lambda s: s.is_monotonic_increasing)
    assert hadm.all()
    assert set(data.vocab["med"]["code"]).issubset(set(__import__(
        "recbole_ext.data.prepare.drug_resources", fromlist=["x"]).smiles_atc3_vocab()))


def test_prepare_admittime_order_and_gz_equivalence(tmp_path, raw3_copy):
    _prep(raw3_copy, tmp_path / "plain", *DEMO3, "--visit-order", "admittime")
    _prep(RAW3, tmp_path / "gz", *DEMO3, "--visit-order", "admittime")
    a = (tmp_path / "plain" / "m3" / "m3.visit").read_text()
    assert a == (tmp_path / "gz" / "m3" / "m3.visit").read_text()
    adm = pd.read_csv(raw3_copy / "ADMISSIONS.csv", dtype=str)
    t = dict(zip(adm["hadm_id"], pd.to_datetime(adm["admittime"])))
    v = pd.read_csv(tmp_path / "gz" / "m3" / "m3.visit", sep="\t", dtype=str)
    times = v["visit_id:token"].map(t)
    assert times.groupby(v["patient_id:token"]).apply(lambda s: s.is_monotonic_increasing).all()


def test_prepare_mimic4_version_prefix(tmp_path):
    raw4 = ROOT / "mimic4-demo" / "raw"
    mimic.main_mimic4(["--src", str(raw4), "--out", str(tmp_path), "--name", "m4", *DEMO3, "--icd-version-prefix"])
    data = load_medrec(tmp_path / "m4")
    codes = data.vocab["diag"]["code"]
    assert codes.str.match(r"^(9|10)_").all() and codes.str.startswith("10_").any()
    assert (data.vocab["diag"]["name"] != "").mean() > 0.9  # names from the bundled dictionary subset


def _write_variant(src: Path, dst: Path, table: str, edit):
    shutil.copytree(src, dst)
    df = pd.read_csv(dst / table, dtype=str)
    edit(df).to_csv(dst / table, index=False)
    return dst


def test_missing_column_is_a_user_error(tmp_path, raw3_copy):
    src = _write_variant(raw3_copy, tmp_path / "src", "PRESCRIPTIONS.csv", lambda d: d.drop(columns=["ndc"]))
    with pytest.raises(UserError, match=r"PRESCRIPTIONS.csv lacks column\(s\) \['NDC'\]"):
        _prep(src, tmp_path / "out")
    assert not (tmp_path / "out" / "m3").exists()


def test_missing_table_and_bad_src(tmp_path, raw3_copy):
    src = tmp_path / "src"
    shutil.copytree(raw3_copy, src)
    (src / "DIAGNOSES_ICD.csv").unlink()
    with pytest.raises(UserError, match="no DIAGNOSES_ICD.csv"):
        _prep(src, tmp_path / "out")
    with pytest.raises(UserError, match="is not a folder"):
        _prep(tmp_path / "nope", tmp_path / "out")


@pytest.mark.parametrize("extra,needle", [(["--top-diag", "-1"], "--top-diag must be >= 0, got -1"),
                                          (["--top-med", "-5"], "--top-med must be >= 0, got -5"),
                                          (["--ddi-side-effects", "0"], "--ddi-side-effects must be >= 1, got 0")])
def test_negative_filter_sizes_are_refused(tmp_path, raw3_copy, extra, needle):
    with pytest.raises(UserError, match=needle):
        _prep(raw3_copy, tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()


def test_unparseable_rows_are_counted_and_malformed_csv_rejected(tmp_path, raw3_copy, capsys):
    def corrupt(d):
        d.loc[:4, "hadm_id"] = "not-a-number"
        return d
    src = _write_variant(raw3_copy, tmp_path / "src", "DIAGNOSES_ICD.csv", corrupt)
    _prep(src, tmp_path / "out", *DEMO3)
    meta = json.loads((tmp_path / "out" / "m3" / "m3.json").read_text())
    assert meta["unparseable_rows"]["diagnoses"] == 5
    assert "unparseable rows dropped: {'diagnoses': 5}" in capsys.readouterr().out

    bad = tmp_path / "bad"
    shutil.copytree(raw3_copy, bad)
    with open(bad / "PROCEDURES_ICD.csv", "a") as fh:
        fh.write('1,2,3,"unterminated\n')
    with pytest.raises(UserError, match="cannot parse PROCEDURES_ICD.csv"):
        _prep(bad, tmp_path / "out2")


def test_all_ndc_unmapped_gives_clear_error_and_no_folder(tmp_path, raw3_copy):
    def scramble(d):
        d["ndc"] = "99999999999"
        return d
    src = _write_variant(raw3_copy, tmp_path / "src", "PRESCRIPTIONS.csv", scramble)
    with pytest.raises(UserError, match="no admission has medications"):
        _prep(src, tmp_path / "out")
    assert not (tmp_path / "out" / "m3").exists()
    assert not list((tmp_path / "out").glob(".m3*")) if (tmp_path / "out").exists() else True


def test_existing_folder_needs_overwrite(tmp_path, raw3_copy, monkeypatch):
    _prep(raw3_copy, tmp_path, *DEMO3)
    read = []
    monkeypatch.setattr(mimic, "read_table", lambda *a, **k: read.append(a) or pytest.fail("read before checking"))
    with pytest.raises(UserError, match="already exists"):  # said before any table is read (minutes on MIMIC)
        _prep(raw3_copy, tmp_path, *DEMO3)
    monkeypatch.undo()
    _prep(raw3_copy, tmp_path, *DEMO3, "--overwrite")


def test_two_copies_of_a_table_are_refused(tmp_path, raw3_copy):
    src = tmp_path / "src"
    shutil.copytree(raw3_copy, src)
    shutil.copy(RAW3 / "PRESCRIPTIONS.csv.gz", src / "PRESCRIPTIONS.csv.gz")
    with pytest.raises(UserError, match="holds PRESCRIPTIONS.csv and PRESCRIPTIONS.csv.gz"):
        _prep(src, tmp_path / "out", *DEMO3)


def _copy_dataset(tmp_path, name="mimic3-demo"):
    dst = tmp_path / name
    shutil.copytree(ROOT / name, dst, ignore=shutil.ignore_patterns("raw"))
    return dst


def test_reader_rejects_vocabulary_mismatch_empty_visits_and_bad_ddi(tmp_path):
    d = _copy_dataset(tmp_path)
    voc = d / "mimic3-demo.medvoc"
    lines = voc.read_text().splitlines()
    removed = lines[1].split("\t")[0]
    voc.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(UserError, match=f"not in the med vocabulary, e.g. '{removed}'"):
        load_medrec(d)

    d = _copy_dataset(tmp_path / "b")
    visit = pd.read_csv(d / "mimic3-demo.visit", sep="\t", dtype=str, keep_default_na=False)
    visit.loc[3, "med:token_seq"] = ""
    visit.to_csv(d / "mimic3-demo.visit", sep="\t", index=False)
    with pytest.raises(UserError, match="1 visit\\(s\\) have no medication"):
        load_medrec(d)

    d = _copy_dataset(tmp_path / "b2")
    visit = pd.read_csv(d / "mimic3-demo.visit", sep="\t", dtype=str, keep_default_na=False)
    visit.loc[5, ["diag:token_seq", "proc:token_seq"]] = ""
    visit.to_csv(d / "mimic3-demo.visit", sep="\t", index=False)
    with pytest.raises(UserError, match="neither diagnoses nor procedures"):
        load_medrec(d)

    d = _copy_dataset(tmp_path / "b3")
    visit = pd.read_csv(d / "mimic3-demo.visit", sep="\t", dtype=str, keep_default_na=False)
    first_proc = visit.loc[2, "proc:token_seq"].split()[0]
    visit.loc[2, "proc:token_seq"] += f" {first_proc}"  # a code listed twice in one visit
    visit.to_csv(d / "mimic3-demo.visit", sep="\t", index=False)
    visit_id = visit.loc[2, "visit_id:token"]
    with pytest.raises(UserError, match=f"proc code '{first_proc}' appears twice in visit '{visit_id}'"):
        load_medrec(d)

    d = _copy_dataset(tmp_path / "c")
    with open(d / "mimic3-demo.ddi", "a") as fh:
        fh.write("ZZZZ\tA01A\n")
    with pytest.raises(UserError, match="not in the medication vocabulary"):
        load_medrec(d)

    d = _copy_dataset(tmp_path / "d")
    (d / "mimic3-demo.visit").write_text("patient\tstuff\n1\t2\n")
    with pytest.raises(UserError, match="lacks columns"):
        load_medrec(d)
    d = _copy_dataset(tmp_path / "e")
    (d / "mimic3-demo.ddi").unlink()
    with pytest.raises(UserError, match="missing file .*mimic3-demo.ddi"):
        load_medrec(d)


def test_synthetic_generator_is_deterministic_and_planted(tmp_path):
    args = ["--patients", "120", "--diagnoses", "150", "--procedures", "60", "--medications", "40",
            "--conditions", "12", "--seed", "3", "--out", str(tmp_path)]
    synthetic_ehr.main(["--name", "a", *args])
    synthetic_ehr.main(["--name", "b", *args])
    synthetic_ehr.main(["--name", "c", *args[:-3], "4", "--out", str(tmp_path)])
    ta, tb, tc = ((tmp_path / n / f"{n}.visit").read_text() for n in "abc")
    assert ta == tb and ta != tc
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "diag_med_effect.npy"),
                                  np.load(tmp_path / "b" / "diag_med_effect.npy"))
    data = load_medrec(tmp_path / "a")
    assert data.n_codes("diag") == 150 and data.n_codes("med") == 40
    meta = json.loads((tmp_path / "a" / "a.json").read_text())
    assert meta["statistics"]["ground_truth_ddi_rate"] > 0


def test_synthetic_planted_effects_are_recoverable_from_training_data():
    """Risk differences estimated on the training split correlate with the planted diagnosis effects."""
    ds = MedRecDataset({"dataset": "synth-ehr-small", "data_path": str(ROOT / "synth-ehr-small"), "seed": 0})
    mh = ds.train_multi_hot()
    d, m = mh["diag"], mh["med"]
    n_d = d.sum(0)
    seen = n_d >= 5
    p_m_d = (d.T @ m)[seen] / n_d[seen, None]
    p_m_not = ((1 - d).T @ m)[seen] / (len(d) - n_d[seen])[:, None]
    rd = (p_m_d - p_m_not).ravel()
    planted = np.load(ROOT / "synth-ehr-small" / "diag_med_effect.npy")[seen].ravel()
    assert np.corrcoef(rd, planted)[0, 1] > 0.5
    assert rd[planted > 0].mean() > 0.2 > rd[planted == 0].mean()


def test_synthetic_bad_options():
    with pytest.raises(UserError, match="--patients must be"):
        synthetic_ehr.main(["--patients", "2"])


def test_split_by_patient_published_proportions():
    s = split_patients(6350)
    assert [len(s[p]) for p in ("train", "test", "valid")] == [4233, 1058, 1059]
    assert s["train"][0] == 0 and s["test"][0] == 4233 and s["valid"][0] == 4233 + 1058
    r = split_patients(100, "random", seed=5)
    allp = np.concatenate([r["train"], r["valid"], r["test"]])
    assert sorted(allp) == list(range(100))
    assert len(set(r["train"]) & set(r["test"])) == 0 and len(set(r["valid"]) & set(r["test"])) == 0
    np.testing.assert_array_equal(r["train"], split_patients(100, "random", seed=5)["train"])
    assert not np.array_equal(r["train"], split_patients(100, "random", seed=6)["train"])
    assert [len(split_patients(4)[p]) for p in ("train", "test", "valid")] == [2, 1, 1]
    with pytest.raises(UserError, match="at least 4"):
        split_patients(3)


def test_dataset_attributes_and_collation():
    ds = MedRecDataset({"dataset": "mimic3-demo", "data_path": str(ROOT / "mimic3-demo"), "seed": 0})
    d = ds.data
    assert (ds.n_diag, ds.n_proc, ds.n_med) == (d.n_codes("diag"), d.n_codes("proc"), d.n_codes("med"))
    assert ds.ddi_adj.shape == (ds.n_med, ds.n_med) and (ds.ddi_adj == ds.ddi_adj.T).all()
    assert ds.ddi_adj.diagonal().sum() == 0 and int(ds.ddi_adj.sum()) == 2 * len(d.ddi_pairs)
    assert ds.med_tokens[0] == "[PAD]" and len(ds.med_tokens) == ds.n_med + 1
    # phases partition the patients
    parts = [set(ds.split_patients(p)) for p in ("train", "valid", "test")]
    assert sum(map(len, parts)) == d.n_patients and not (parts[0] & parts[1] or parts[0] & parts[2])

    rows = np.array([2, 0, 5])
    b = ds.collate("train", rows)
    pats = ds.split_patients("train")[rows]
    lens = d.patient_visit_ptr[pats + 1] - d.patient_visit_ptr[pats]
    assert b.visit_mask.sum(1).tolist() == lens.tolist()
    assert b.diag.shape[:2] == b.visit_mask.shape == (3, lens.max())
    for i, p in enumerate(pats):
        for t in range(lens[i]):
            v = d.patient_visit_ptr[p] + t
            for kind, tensor in (("diag", b.diag), ("proc", b.proc), ("med", b.med)):
                csr = d.codes[kind]
                want = csr.indices[csr.indptr[v]:csr.indptr[v + 1]]
                got = tensor[i, t][tensor[i, t] > 0].numpy()
                np.testing.assert_array_equal(got, want)
            assert set(np.flatnonzero(b.target[i, t].numpy()) + 1) == set(
                d.codes["med"].indices[d.codes["med"].indptr[v]:d.codes["med"].indptr[v + 1]])
    assert (b.target[~b.visit_mask] == 0).all() and (b.diag[~b.visit_mask] == 0).all()
    assert b.patient_ids.tolist() == rows.tolist()
    assert b.flat_target().shape == (int(lens.sum()), ds.n_med)

    dg, pr, md = ds.train_visits()
    assert len(dg) == len(ds.phase_visits("train")) and all(x.min() >= 1 for x in md)
    # the co-prescription graph has an edge exactly where two medications share a TRAINING visit; the demo has
    # pairs prescribed together only in validation/test visits, which an all-visit graph would add
    def pairs(phases):
        rows = np.concatenate([ds.phase_visits(p) for p in phases])
        return {(a, b) for meds in d.codes["med"].take(rows).as_lists() for a in meds - 1 for b in meds - 1 if a != b}
    adj = ds.ehr_adj()
    assert adj.shape == (ds.n_med, ds.n_med) and adj.diagonal().sum() == 0
    assert {tuple(e) for e in adj.nonzero().tolist()} == pairs(["train"])
    assert pairs(["valid", "test"]) - pairs(["train"])


def test_missing_dataset_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path))
    with pytest.raises(UserError, match="prepare it"):
        MedRecDataset({"dataset": "nope", "seed": 0})


def test_twosides_builder_keeps_rarest_side_effects(tmp_path):
    from recbole_ext.data.prepare import drug_resources as dr

    cid = dr._cid_atc3()
    first = cid.drop_duplicates("cid").head(6).reset_index(drop=True)  # six CIDs with known ATC3 classes
    c = first["cid"].tolist()
    rows = [(c[0], c[1], "C_common", "x")] * 5 + [(c[2], c[3], "C_rare", "y")] + [(c[4], c[5], "C_mid", "z")] * 2
    path = tmp_path / "drug-DDI.csv"
    pd.DataFrame(rows, columns=["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"]).to_csv(
        path, index=False)
    vocab = set(cid["atc3"])
    two = dr.ddi_pairs_from_twosides(path, vocab, n_rarest_side_effects=2)
    pairs = {tuple(sorted(p)) for p in two[["atc3_a", "atc3_b"]].itertuples(index=False)}

    def combos(x, y):
        return {tuple(sorted((p, q))) for p in cid[cid.cid == x].atc3 for q in cid[cid.cid == y].atc3 if p != q}

    assert pairs == combos(c[2], c[3]) | combos(c[4], c[5])  # the 2 rarest types: C_rare and C_mid, not C_common
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="lacks columns"):
        dr.ddi_pairs_from_twosides(tmp_path / "bad.csv", vocab)
    unprefixed = [(x.replace("CID", "").lstrip("0"), y.replace("CID", "").lstrip("0"), s, n) for x, y, s, n in rows]
    pd.DataFrame(unprefixed, columns=["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"]).to_csv(
        tmp_path / "nomatch.csv", index=False)
    with pytest.raises(UserError, match="no pair of .*nomatch.csv maps to two medications"):  # was 0 pairs, rc 0
        dr.ddi_pairs_from_twosides(tmp_path / "nomatch.csv", vocab)


def test_rxcui_atc_route(tmp_path, raw3_copy, capsys):
    from recbole_ext.data.prepare import drug_resources as dr

    m = dr._ndc_rxcui().head(400)
    pd.DataFrame({"RXCUI": m["rxcui"], "ATC4": "N02BE"}).to_csv(tmp_path / "rx.csv", index=False)
    table = dr.ndc_to_atc3(tmp_path / "rx.csv")
    assert set(table["atc3"]) == {"N02B"} and len(table) >= 300
    bad_rows = pd.DataFrame({"RXCUI": ["abc", "1"] + m["rxcui"].tolist()[2:], "ATC4": ["N02BE", "X"] + ["N02BE"] * 398})
    bad_rows.to_csv(tmp_path / "rx_bad.csv", index=False)
    table = dr.ndc_to_atc3(tmp_path / "rx_bad.csv")  # the malformed rows are skipped (and said), not mapped
    assert set(table["atc3"]) == {"N02B"}
    assert "2 of 400 rows without an integer RXCUI and an ATC code were skipped" in capsys.readouterr().err
    pd.DataFrame({"RXCUI": ["1"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match="need RXCUI and one of ATC4/ATC5/ATC"):
        dr.ndc_to_atc3(tmp_path / "bad.csv")


def test_planted_probabilities_are_the_reference(capsys):
    from recbole_ext.evaluation.medrec_metrics import medrec_scores

    ds = MedRecDataset({"dataset": "synth-ehr-small", "data_path": str(ROOT / "synth-ehr-small"), "seed": 0})
    prob, target, patient = synthetic_ehr.planted_probabilities(ds, "test")
    assert prob.shape == target.shape == (len(ds.phase_visits("test")), ds.n_med)
    adj = ds.ddi_adj.numpy()
    oracle = medrec_scores(prob, target, patient, adj)
    popularity = np.broadcast_to(ds.train_multi_hot()["med"].mean(0), prob.shape)  # a history-free baseline
    base = medrec_scores(popularity + 0.5 - np.sort(popularity[0])[-5], target, patient, adj)  # its top-5 drugs
    assert oracle["jaccard"] > 0.3 and oracle["prauc"] > base["prauc"] + 0.2 and oracle["jaccard"] > base["jaccard"]
    synthetic_ehr.main(["--name", "synth-ehr-small", "--out", str(ROOT), "--oracle"])
    printed = {ln.split()[0]: float(ln.split()[1]) for ln in capsys.readouterr().out.splitlines()[1:]}
    assert set(printed) == {"jaccard", "prauc", "f1", "ddi_rate", "avg_med"}
    assert abs(printed["jaccard"] - oracle["jaccard"]) < 0.05  # bootstrap mean near the full-split value
    with pytest.raises(UserError, match="not a synthetic-ehr dataset"):
        synthetic_ehr.main(["--name", "mimic3-demo", "--out", str(ROOT), "--oracle"])


@pytest.mark.parametrize("damage,needle", [(lambda b: b[:100], "cannot read the planted effects"),
                                           (lambda b: b"garbage", "is not a .npy file")])
def test_oracle_on_damaged_planted_effects_is_one_error(damage, needle, tmp_path):
    d = tmp_path / "synth-ehr-small"
    shutil.copytree(ROOT / "synth-ehr-small", d)
    f = d / "diag_med_effect.npy"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(UserError, match=needle):  # was a numpy ValueError traceback
        synthetic_ehr.main(["--name", "synth-ehr-small", "--out", str(tmp_path), "--oracle"])


def _edited(tmp_path, suffix, edit):
    d = _copy_dataset(tmp_path)
    path = d / f"mimic3-demo.{suffix}"
    path.write_text(edit(path.read_text()))
    return d


@pytest.mark.parametrize("suffix,edit,needle", [
    ("medvoc", lambda t: t.splitlines()[0] + "\n" + t, "the header line appears again as line 2"),
    ("visit", lambda t: t.replace("\t0.0\t", "\tinf\t", 1), "visit_order on line 2 is not a finite number"),
    ("visit", lambda t: "\n".join([t.splitlines()[0], "\t" + t.splitlines()[1].split("\t", 1)[1]]
                                  + t.splitlines()[2:]) + "\n", "empty visit_id on line 2"),
])
def test_reader_refuses_header_repeats_and_unusable_visit_fields(suffix, edit, needle, tmp_path):
    with pytest.raises(UserError, match=needle):
        load_medrec(_edited(tmp_path, suffix, edit))


def test_trailing_tabs_are_named_not_shifted(tmp_path):
    """pandas made the first column the index when data lines had one field more than the header, and the
    reader then reported a wrong cause ('visit_order is not a number', codes missing from the vocabulary)."""
    for suffix in ("visit", "medvoc", "ddi"):
        d = _edited(tmp_path / suffix, suffix, lambda t: "\n".join(
            [ln + "\t" if i else ln for i, ln in enumerate(t.splitlines())]) + "\n")
        with pytest.raises(UserError, match=f"mimic3-demo.{suffix}: data lines have more tab-separated fields"):
            load_medrec(d)


def _raw_copy(raw3_copy, tmp_path, table, edit):
    """A copy of the demo's plain CSVs with ``table`` rewritten by ``edit(DataFrame) -> DataFrame``."""
    src = tmp_path / "src"
    shutil.copytree(raw3_copy, src)
    df = pd.read_csv(src / f"{table}.csv", dtype=str, keep_default_na=False)
    edit(df).to_csv(src / f"{table}.csv", index=False)
    return src


def _set(column, row, value):
    def edit(df):
        df.loc[row, column] = value
        return df
    return edit


@pytest.mark.parametrize("table,edit,extra,needle", [
    # one admission under two subjects: the written dataset had a duplicate visit_id, refused only when loaded
    ("DIAGNOSES_ICD", lambda df: df.assign(subject_id=df["subject_id"].where(df.index != 0, "10017")), (),
     "diagnoses: HADM_ID"),
    ("ADMISSIONS", lambda df: df.assign(admittime="not-a-date"), ("--visit-order", "admittime"),
     "none of the 107 visits has a readable ADMITTIME (129 admissions rows could not be parsed)"),
    ("ADMISSIONS", lambda df: pd.concat([df, df.iloc[:1].assign(admittime="2100-01-01 00:00:00")]),
     ("--visit-order", "admittime"), "has 2 rows with different ADMITTIMEs"),
    ("PRESCRIPTIONS", lambda df: df.drop(columns=["gsn"]), (), "--gsn-fallback needs the GSN column"),
    ("PRESCRIPTIONS", lambda df: df.iloc[:0], (), "prescription rows by step: {'rows_read': 0"),
])
def test_inconsistent_mimic_tables_are_one_error_and_no_folder(table, edit, extra, needle, raw3_copy, tmp_path):
    src = _raw_copy(raw3_copy, tmp_path, table, edit)
    with pytest.raises(UserError, match=re.escape(needle)):
        _prep(src, tmp_path / "out", *DEMO3, *extra)
    assert not (tmp_path / "out" / "m3").exists()


@pytest.mark.parametrize("table,edit,counted", [
    ("PROCEDURES_ICD", _set("seq_num", 0, "first"), "procedures"),        # used to reorder the visit's codes
    ("DIAGNOSES_ICD", _set("subject_id", 0, "-10006"), "diagnoses"),       # ids are positive
    ("DIAGNOSES_ICD", _set("hadm_id", 0, "99999999999999999999"), "diagnoses"),  # overflowed int64
])
def test_unusable_ids_and_orders_are_counted_not_kept(table, edit, counted, raw3_copy, tmp_path):
    src = _raw_copy(raw3_copy, tmp_path, table, edit)
    _prep(src, tmp_path / "out", *DEMO3)
    report = json.loads((tmp_path / "out" / "m3" / "m3.json").read_text())
    assert report["unparseable_rows"][counted] == 1
    data = load_medrec(tmp_path / "out" / "m3")
    assert all(int(v) > 0 for v in data.visit_tokens) and all(int(p) > 0 for p in data.patient_tokens)


def test_unreadable_admittimes_are_reported(raw3_copy, tmp_path, capsys):
    src = _raw_copy(raw3_copy, tmp_path, "ADMISSIONS", _set("admittime", 0, "not-a-date"))
    _prep(src, tmp_path / "out", *DEMO3, "--visit-order", "admittime")
    out = capsys.readouterr().out
    assert "'admissions': 1" in out and "1 visits without a readable ADMITTIME" in out


def test_no_ffill_keeps_prescriptions_without_an_icu_stay(raw3_copy, tmp_path):
    """ICUSTAY_ID only orders rows; a non-ICU prescription (no ICUSTAY_ID) has every field the pipeline uses."""
    _prep(raw3_copy, tmp_path / "out", *DEMO3, "--no-ffill")
    steps = json.loads((tmp_path / "out" / "m3" / "m3.json").read_text())["medication_steps"]
    no_icu = pd.read_csv(raw3_copy / "PRESCRIPTIONS.csv", dtype=str)["icustay_id"].isna().sum()
    assert no_icu > 1000 and steps["after_fill_dropna_dedup"] > steps["rows_read"] - no_icu


# -- --vocab-from train ------------------------------------------------------------------------------------------
def _training_rows(data):
    """Visit rows of the patients the medication task trains on (the ordered split of the loaded dataset)."""
    ptr = data.patient_visit_ptr
    return np.concatenate([np.arange(ptr[p], ptr[p + 1]) for p in split_patients(data.n_patients)["train"]])


def _held_out_patients(data):
    return set(data.patient_tokens) - set(data.patient_tokens[split_patients(data.n_patients)["train"]])


def _with_diagnoses(raw3_copy, tmp_path, rows):
    """The demo's CSVs with diagnosis rows (subject, hadm, code) appended."""
    def edit(df):
        extra = pd.DataFrame([{"row_id": str(900000 + i), "subject_id": s, "hadm_id": h, "seq_num": "99",
                               "icd9_code": c} for i, (s, h, c) in enumerate(rows)])
        return pd.concat([df, extra], ignore_index=True)
    return _raw_copy(raw3_copy, tmp_path, "DIAGNOSES_ICD", edit)


def test_vocab_from_train_drops_codes_seen_only_in_held_out_patients(raw3_copy, tmp_path, capsys):
    """A code that only validation/test patients have is in the default vocabulary, not in the training one; the
    visit keeps its other codes, and a visit left without diagnoses is dropped. The vocabularies are exactly the
    codes of the visits that training (the split of the written dataset) will use."""
    demo = load_medrec(ROOT / "mimic3-demo")
    visits = pd.read_csv(ROOT / "mimic3-demo" / "mimic3-demo.visit", sep="\t", dtype=str)
    last, second_last = visits["patient_id:token"].unique()[-2:][::-1]
    assert {last, second_last} <= _held_out_patients(demo)
    keep_visit = visits[visits["patient_id:token"] == last]["visit_id:token"].iloc[0]
    empty_visit = visits[visits["patient_id:token"] == second_last]["visit_id:token"].iloc[0]
    src = _with_diagnoses(raw3_copy, tmp_path, [(last, keep_visit, "ZZZ01")])
    # every diagnosis of one held-out visit replaced by codes no training patient has
    diag = pd.read_csv(src / "DIAGNOSES_ICD.csv", dtype=str, keep_default_na=False)
    diag.loc[diag["hadm_id"] == empty_visit, "icd9_code"] = "ZZZ03"
    diag.to_csv(src / "DIAGNOSES_ICD.csv", index=False)

    _prep(src, tmp_path / "all", *DEMO3)
    _prep(src, tmp_path / "train", *DEMO3, "--vocab-from", "train")
    out = capsys.readouterr().out
    every, train = load_medrec(tmp_path / "all" / "m3"), load_medrec(tmp_path / "train" / "m3")
    assert {"ZZZ01", "ZZZ03"} <= set(every.vocab["diag"]["code"])
    assert not {"ZZZ01", "ZZZ03"} & set(train.vocab["diag"]["code"])
    assert empty_visit in set(every.visit_tokens) and empty_visit not in set(train.visit_tokens)

    def diag_of(data, visit):
        ids = data.codes["diag"].take(np.flatnonzero(data.visit_tokens == visit))
        return set(data.vocab["diag"]["code"].to_numpy()[ids.indices - 1])
    kept = diag_of(train, keep_visit)
    assert kept and kept == diag_of(every, keep_visit) & set(train.vocab["diag"]["code"])
    rows = _training_rows(train)
    for kind in ("diag", "proc", "med"):  # every code of the vocabulary is used by a training visit, and only those
        assert np.array_equal(np.unique(train.codes[kind].take(rows).indices), np.arange(1, train.n_codes(kind) + 1))
    report = json.loads((tmp_path / "train" / "m3" / "m3.json").read_text())["vocabulary"]
    assert report["diag"]["held_out_entries_dropped"] >= 2 and report["visits_dropped"] >= 1
    assert report["training_patients"] == len(split_patients(train.n_patients)["train"])
    assert f"dropped from validation/test visits {report['diag']['held_out_entries_dropped']} diag" in out
    assert "vocabulary" not in json.loads((tmp_path / "all" / "m3" / "m3.json").read_text())


def test_vocab_from_train_counts_top_n_on_training_patients(raw3_copy, tmp_path):
    """A code frequent among validation/test patients but seen once in training is in the overall top 30 and not in
    the training top 30 (though in the training vocabulary without a top-N); the kept codes are the most frequent
    ones of the training visits."""
    demo = load_medrec(ROOT / "mimic3-demo")
    visits = pd.read_csv(ROOT / "mimic3-demo" / "mimic3-demo.visit", sep="\t", dtype=str)
    held_out = list(visits["patient_id:token"].unique()[-10:])
    rows = [(p, v, "ZZZ02") for p, v in zip(visits["patient_id:token"], visits["visit_id:token"]) if p in held_out]
    rows.append((visits["patient_id:token"].iloc[0], visits["visit_id:token"].iloc[0], "ZZZ02"))  # once in training
    assert len(rows) > 11 and set(held_out) <= _held_out_patients(demo)
    src = _with_diagnoses(raw3_copy, tmp_path, rows)

    _prep(src, tmp_path / "all", *DEMO3, "--top-diag", "30")
    _prep(src, tmp_path / "train", *DEMO3, "--top-diag", "30", "--vocab-from", "train")
    _prep(src, tmp_path / "seen", *DEMO3, "--vocab-from", "train")
    every, train = load_medrec(tmp_path / "all" / "m3"), load_medrec(tmp_path / "train" / "m3")
    assert "ZZZ02" in set(every.vocab["diag"]["code"]) and "ZZZ02" not in set(train.vocab["diag"]["code"])
    assert "ZZZ02" in set(load_medrec(tmp_path / "seen" / "m3").vocab["diag"]["code"])

    # counts (one per visit and code, as the table's de-duplicated rows) over the training visits' raw diagnoses
    diag = pd.read_csv(src / "DIAGNOSES_ICD.csv", dtype=str).drop_duplicates(["hadm_id", "icd9_code"])
    counts = diag[diag["hadm_id"].isin(set(train.visit_tokens[_training_rows(train)]))]["icd9_code"].value_counts()
    vocab = set(train.vocab["diag"]["code"])
    assert len(vocab) == 30 and counts["ZZZ02"] == 1  # the held-out patients stayed held out
    assert counts[counts.index.isin(vocab)].min() >= counts[~counts.index.isin(vocab)].max()


def test_training_vocabulary_with_a_random_split_warns(raw3_copy, tmp_path):
    _prep(raw3_copy, tmp_path, *DEMO3, "--vocab-from", "train")
    cfg = {"dataset": "m3", "data_path": str(tmp_path / "m3"), "seed": 0}
    with pytest.warns(UserWarning, match="prepared with --vocab-from train"):
        MedRecDataset({**cfg, "medrec_split": "random"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MedRecDataset(cfg)  # the ordered split is the one the vocabularies were built for
