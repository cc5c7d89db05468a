"""recommend API and CLI on a fake loaded checkpoint (tiny, hand-checkable), plus every user-error path."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from recbole_ext.errors import UserError
from recbole_ext.retrieval.index import History
from recbole_ext.retrieval.patient import load_patient, patient_batch
from recbole_ext.serving import cli
from recbole_ext.serving import recommend as rec
from recbole_ext.serving.recommend import ROW_COLUMNS

# Items 1..5 (tokens i10..i50) in 2-d; user u1 = (1, 0) ranks them i10, i20, i30, i50, i40 and has seen i10.
ITEM_VECTORS = torch.tensor([[0, 0], [5, 0], [4, 1], [3, -2], [-1, 7], [0.5, 0.5]])
USER_VECTORS = torch.tensor([[0, 0], [1, 0], [0, 1]])


class IPModel(torch.nn.Module):
    def user_vectors(self, user_ids=None):
        return USER_VECTORS if user_ids is None else USER_VECTORS[user_ids]

    def item_vectors(self):
        return ITEM_VECTORS


class DenseOnlyModel(torch.nn.Module):
    def full_sort_predict(self, interaction):
        return (USER_VECTORS[interaction["user_id"]].float() @ ITEM_VECTORS.T.float()).view(-1)


def _dataset():
    users, items = ["[PAD]", "u1", "u2"], ["[PAD]", "i10", "i20", "i30", "i40", "i50"]
    return SimpleNamespace(uid_field="user_id", iid_field="item_id", item_num=len(items),
                           field2id_token={"user_id": np.array(users), "item_id": np.array(items)},
                           field2token_id={"user_id": {t: i for i, t in enumerate(users)},
                                           "item_id": {t: i for i, t in enumerate(items)}})


def _loaded(tmp_path, model=None, task="general", config=None):
    ckpt = tmp_path / "run" / "model.pth"
    ckpt.parent.mkdir(exist_ok=True)
    if not ckpt.exists():
        ckpt.write_bytes(b"weights")
    train = SimpleNamespace(inter_feat={"user_id": torch.tensor([1, 2, 2]), "item_id": torch.tensor([1, 4, 5])})
    config = {"model": type(model or IPModel()).__name__, "dataset": "toy", **(config or {})}
    return rec.LoadedCheckpoint(ckpt, model or IPModel(), _dataset(), train, config, task)


@pytest.fixture
def fake_load(monkeypatch, tmp_path):
    state = {}

    def load(path):
        if not Path(path).is_file():
            raise UserError(f"checkpoint {path} does not exist")
        return state["loaded"]

    def install(**kwargs):
        state["loaded"] = _loaded(tmp_path, **kwargs)
        return state["loaded"]

    monkeypatch.setattr(rec, "load_checkpoint", load)
    return install


def test_history_for_gathers_each_users_training_items():
    history = rec.history_for(np.array([2, 1, 3, 2]), np.array([1, 2, 2, 1, 2]), np.array([7, 4, 5, 8, 6]))
    assert history.indptr.tolist() == [0, 3, 5, 5, 8]
    assert history.items.tolist() == [4, 5, 6, 7, 8, 4, 5, 6]


def test_top_k_masks_seen_items_and_prints_external_tokens(tmp_path):
    loaded = _loaded(tmp_path)
    [u1] = rec.top_k_items(loaded, ["u1"], k=3)
    assert u1.items == ["i20", "i30", "i50"]  # i10 ranked first but seen in training
    np.testing.assert_allclose(u1.scores, [4, 3, 0.5])
    [u1_all] = rec.top_k_items(loaded, ["u1"], k=3, keep_seen=True)
    assert u1_all.items == ["i10", "i20", "i30"]
    # The index was written beside the checkpoint and is reused (not rebuilt) next time.
    folder = rec.index_folder(loaded.path)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["checkpoint_name"] == "model.pth" and json.loads((folder / "item_tokens.json").read_text())[1] == "i10"
    stamp = (folder / "index.faiss").stat().st_mtime_ns
    rec.top_k_items(loaded, ["u2"], k=2)
    assert (folder / "index.faiss").stat().st_mtime_ns == stamp


def test_stale_index_is_a_user_error_until_rebuilt(tmp_path):
    loaded = _loaded(tmp_path)
    rec.top_k_items(loaded, ["u1"], k=2)
    loaded.path.write_bytes(b"retrained weights")
    with pytest.raises(UserError, match="built from another checkpoint"):
        rec.top_k_items(loaded, ["u1"], k=2)
    assert rec.top_k_items(loaded, ["u1"], k=2, rebuild_index=True)[0].items == ["i20", "i30"]


def test_dense_fallback_matches_index_path(tmp_path, caplog):
    dense = rec.top_k_items(_loaded(tmp_path, model=DenseOnlyModel()), ["u1", "u2"], k=3)
    assert "scoring all items densely" in caplog.text
    indexed = rec.top_k_items(_loaded(tmp_path / "..", model=IPModel()), ["u1", "u2"], k=3)
    assert [r.items for r in dense] == [r.items for r in indexed] == [["i20", "i30", "i50"], ["i20", "i10", "i30"]]


def test_cli_prints_top_k_and_batches_a_users_file(fake_load, tmp_path, capsys):
    loaded = fake_load()
    assert cli.main(["--checkpoint", str(loaded.path), "--user", "u1", "--k", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "IPModel on toy (checkpoint run/model.pth): top-2 for 1 user, training items excluded",
        "user u1: top-2", "1\ti20\t4.0000", "2\ti30\t3.0000"]
    users = tmp_path / "users.txt"
    users.write_text("\ufeffu1\n# comment\nu2\n", encoding="utf-8")  # a BOM made the first token "unknown"
    assert cli.main(["--checkpoint", str(loaded.path), "--users-file", str(users), "--k", "1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["user"], x["items"]) for x in lines] == [("u1", ["i20"]), ("u2", ["i20"])]


@pytest.mark.parametrize("argv,match", [
    (["--user", "u1"], "required: --checkpoint"),
    (["--checkpoint", "X"], "one of the arguments"),
    (["--checkpoint", "{ckpt}", "--user", "nobody"], "unknown user"),
    (["--checkpoint", "{ckpt}", "--user", "[PAD]"], "unknown user"),
    (["--checkpoint", "{ckpt}", "--user", "u1", "--k", "0"], "--k must be >= 1"),
    (["--checkpoint", "{ckpt}", "--users-file", "{tmp}/none.txt"], "does not exist"),
    (["--checkpoint", "{ckpt}", "--users-file", "{tmp}"], "is a folder"),
    (["--checkpoint", "{ckpt}", "--patient", "{tmp}/p.json"], "not a medication model"),
    (["--checkpoint", "{tmp}/missing.pth", "--user", "u1"], "does not exist"),
])
def test_cli_user_errors_are_one_line(fake_load, tmp_path, argv, match):
    loaded = fake_load()
    (tmp_path / "p.json").write_text('{"visits": [{"diagnoses": ["d1"]}]}')
    argv = [a.format(ckpt=loaded.path, tmp=tmp_path) for a in argv]
    with pytest.raises(UserError, match=match) as err:
        cli.main(argv)
    assert "\n" not in err.value.one_line()


def test_medication_checkpoint_refuses_users(fake_load):
    loaded = fake_load(task="medrec")
    with pytest.raises(UserError, match="use --patient"):
        cli.main(["--checkpoint", str(loaded.path), "--user", "u1"])


# ----------------------------------------------------------------------------------------------- medication
class MedDataset(SimpleNamespace):
    pass


def _med_dataset():
    ddi = torch.zeros(4, 4)
    ddi[0, 2] = ddi[2, 0] = 1  # M1 x M3 interact
    ddi[1, 3] = ddi[3, 1] = 1  # M2 x M4 interact (M4 will not be recommended)
    return MedDataset(n_diag=2, n_proc=1, n_med=4, ddi_adj=ddi, diag_tokens=["[PAD]", "d1", "d2"],
                      proc_tokens=["[PAD]", "p1"], med_tokens=["[PAD]", "M1", "M2", "M3", "M4"],
                      med_names=["", "aspirin", "", "warfarin", "x"])


class FixedMedModel(torch.nn.Module):
    """Logits depend on the last visit's diagnoses so the test sees the batch really reached the model."""

    def forward(self, batch):
        self.seen = batch
        P, T = batch.visit_mask.shape
        logits = torch.full((P, T, 4), -3.0)
        logits[:, -1] = torch.tensor([2.0, 0.5, 1.0, -1.0])
        return logits


def test_patient_json_to_visit_batch_and_ddi_flags(fake_load, tmp_path, capsys):
    loaded = fake_load(model=FixedMedModel(), task="medrec")
    loaded.dataset = _med_dataset()
    patient = tmp_path / "p.json"
    patient.write_text(json.dumps({"visits": [
        {"diagnoses": ["d1", "d2"], "procedures": ["p1"], "medications": ["M2", "M4"]},
        {"diagnoses": ["d2"], "procedures": [], "medications": ["M1"]}]}))
    result = rec.recommend(loaded.path, patient=patient)
    assert result.medications == ["M1", "M3", "M2"]  # sigmoid(2) > sigmoid(1) > sigmoid(.5) >= .5 > sigmoid(-1)
    assert result.ddi_pairs == [("M1", "M3")]
    batch = loaded.model.seen
    assert batch.diag.tolist() == [[[1, 2], [2, 0]]] and batch.proc.tolist() == [[[1], [0]]]
    assert batch.med.tolist() == [[[2, 4], [0, 0]]]  # the last visit's medications are not model input
    assert batch.target[0, 0].tolist() == [0, 1, 0, 1]
    assert cli.main(["--checkpoint", str(loaded.path), "--patient", str(patient)]) == 0
    out = capsys.readouterr().out
    assert "M1\t0.8808\taspirin\n" in out and "M2\t0.6225\n" in out
    assert "DDI\tM1\tM3" in out and "M4" not in out


@pytest.mark.parametrize("text,match", [
    ("{not json", "not valid JSON"),
    ('{"visits": []}', "non-empty list of visits"),
    ('{"visits": [3]}', "visit 1 is a int"),
    ('{"visits": [{"diagnosis": ["d1"]}]}', "unknown key"),
    ('{"visits": [{"diagnoses": "d1"}]}', "must be a list"),
    ('{"visits": [{"diagnoses": ["d1", "d2", "d1"]}]}', "visit 1 lists diagnoses code 'd1' twice"),
    ('{"visits": [{"diagnoses": ["d1"], "medications": [7, "7"]}, {"diagnoses": ["d1"]}]}',
     "visit 1 lists medications code '7' twice"),
    ('{"visits": [{"diagnoses": ["d1"]}, {"medications": ["M1"]}]}', "neither diagnoses nor procedures"),
])
def test_malformed_patient_files(tmp_path, text, match):
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_patient(path)


def test_unknown_patient_codes_are_named():
    with pytest.raises(UserError, match="diagnoses code 'd9' is not in this checkpoint's diagnoses vocabulary"):
        patient_batch(load_patient({"visits": [{"diagnoses": ["d1", "d9"]}]}), _med_dataset())
    with pytest.raises(UserError, match="does not exist"):
        load_patient("/nonexistent/patient.json")


def test_history_rows_helper():
    assert History.from_pairs([1, 0, 1], [5, 6, 7], 3).rows().tolist() == [0, 1, 1]


def test_asking_for_another_index_type_rebuilds_it(tmp_path):
    loaded = _loaded(tmp_path)
    rec.top_k_items(loaded, ["u1"], k=2)
    [u1] = rec.top_k_items(loaded, ["u1"], k=2, index_options={"faiss_index": "HNSW8", "faiss_ef_search": 32})
    assert u1.items == ["i20", "i30"]
    meta = json.loads((rec.index_folder(loaded.path) / "meta.json").read_text())
    assert meta["factory"] == "HNSW8" and meta["ef_search"] == 32


def test_a_run_directory_stands_for_its_checkpoint(tmp_path, monkeypatch):
    from recbole_ext import quick_start

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pth").write_bytes(b"weights")
    seen = {}

    def load_run(path):
        seen["path"] = path
        raise UserError("stop here")

    monkeypatch.setattr(quick_start, "load_run", load_run)
    with pytest.raises(UserError, match="stop here"):
        rec.load_checkpoint(run)
    assert seen["path"] == run / "model.pth"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a folder without a model.pth"):
        rec.load_checkpoint(tmp_path / "empty")


class ShiftedItemsModel(IPModel):
    """The same checkpoint after the item features were prepared again: other item vectors, same ids."""

    def item_vectors(self):
        return ITEM_VECTORS * torch.tensor([-1.0, 1.0])  # u1 = (1, 0) now ranks i40 first, i50 second


def test_an_index_built_from_other_item_vectors_is_rebuilt(tmp_path, caplog):
    before = rec.top_k_items(_loaded(tmp_path), ["u1"], k=2)[0].items
    after = rec.top_k_items(_loaded(tmp_path, model=ShiftedItemsModel()), ["u1"], k=2)[0].items
    assert before == ["i20", "i30"] and after == ["i40", "i50"]  # not the stale ranking
    assert "item vectors differ" in caplog.text


def test_an_explicit_index_does_not_inherit_the_runs_search_settings(tmp_path):
    """A run trained with an IVF index and faiss_nprobe could not be served with --index Flat."""
    loaded = _loaded(tmp_path, config={"faiss_index": "IVF1,Flat", "faiss_nprobe": 1})
    flat = rec.top_k_items(loaded, ["u1"], k=2, index_options={"faiss_index": "Flat"})
    assert flat[0].items == ["i20", "i30"]


def test_k_beyond_the_catalogue_returns_the_catalogue(tmp_path):
    """--k 10**12 allocated a [users, k] result (3.6 TiB) and died with a MemoryError traceback."""
    [u1] = rec.top_k_items(_loaded(tmp_path), ["u1"], k=10**12)
    assert u1.items == ["i20", "i30", "i50", "i40"]  # every unseen item


def test_an_index_naming_items_beyond_the_catalogue_is_refused(tmp_path):
    loaded = _loaded(tmp_path)
    rec.top_k_items(loaded, ["u1"], k=2)
    ids = rec.index_folder(loaded.path) / "item_ids.npy"
    np.save(ids, np.load(ids) + 5000)
    with pytest.raises(UserError, match="names item ids beyond the checkpoint's 5 items"):  # was an IndexError
        rec.top_k_items(loaded, ["u1"], k=2)


def test_rebuilding_an_index_where_a_file_stands_leaves_nothing_behind(tmp_path):
    loaded = _loaded(tmp_path)
    folder = rec.index_folder(loaded.path)
    folder.write_text("not an index")
    rec.top_k_items(loaded, ["u1"], k=2, rebuild_index=True)
    assert folder.is_dir() and sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------------- patients: threshold, k, codes
def _fixed_med_checkpoint(fake_load, tmp_path):
    loaded = fake_load(model=FixedMedModel(), task="medrec")
    loaded.dataset = _med_dataset()
    return loaded, {"visits": [{"diagnoses": ["d1"], "medications": ["M2"]}, {"diagnoses": ["d2"]}]}


@pytest.mark.parametrize("threshold,k,expected", [
    (None, None, ["M1", "M3", "M2"]),         # the run's threshold (0.5 here: none in the config)
    (None, 2, ["M1", "M3"]),                  # --k caps the thresholded set at its most probable
    (0.7, None, ["M1", "M3"]),                # sigmoid(1) = 0.73 >= 0.7 > sigmoid(0.5) = 0.62
    (0.0, 4, ["M1", "M3", "M2", "M4"]),       # --threshold 0 --k K: the K most probable
    (0.7, 5, ["M1", "M3"]),                   # a cap above the set's size takes the set
])
def test_patient_threshold_and_k(fake_load, tmp_path, threshold, k, expected):
    loaded, patient = _fixed_med_checkpoint(fake_load, tmp_path)
    result = rec.medication_set(loaded, patient, threshold=threshold, k=k)
    assert result.medications == expected
    assert result.threshold == (0.5 if threshold is None else threshold) and result.k == k


def test_patient_threshold_defaults_to_the_runs(fake_load, tmp_path, capsys):
    loaded, patient = _fixed_med_checkpoint(fake_load, tmp_path)
    loaded.config["medrec_threshold"] = 0.8
    assert rec.medication_set(loaded, patient).medications == ["M1"]  # sigmoid(2) = 0.88 alone above 0.8
    path = tmp_path / "p.json"
    path.write_text(json.dumps(patient))
    assert cli.main(["--checkpoint", str(loaded.path), "--patient", str(path), "--k", "1", "--threshold", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("probability >= 0, at most 1") and out[1:3] == ["recommended medications: 1",
                                                                             "M1\t0.8808\taspirin"]


def _icd_dataset():
    return MedDataset(n_diag=3, n_proc=1, n_med=1, ddi_adj=torch.zeros(1, 1),
                      diag_tokens=["[PAD]", "99591", "I509", "4019"], proc_tokens=["[PAD]", "3893"],
                      med_tokens=["[PAD]", "N02B"])


def test_icd_codes_match_with_or_without_their_dot():
    dataset = _icd_dataset()
    dotted = {"visits": [{"diagnoses": ["995.91", "I50.9", "401.9"], "procedures": ["38.93"]}]}
    plain = {"visits": [{"diagnoses": ["99591", "I509", "4019"], "procedures": ["3893"]}]}
    a, b = patient_batch(load_patient(dotted), dataset), patient_batch(load_patient(plain), dataset)
    assert a.diag.tolist() == b.diag.tolist() == [[[1, 2, 3]]]  # ICD-9 diagnosis, ICD-10, ICD-9 procedure
    assert a.proc.tolist() == b.proc.tolist() == [[[1]]]
    with pytest.raises(UserError, match="visit 1 lists one diagnoses code twice: 995.91 and 99591"):
        patient_batch(load_patient({"visits": [{"diagnoses": ["995.91", "99591"]}]}), dataset)


def test_codes_that_collide_without_dots_are_never_guessed():
    dataset = _icd_dataset()
    dataset.diag_tokens = ["[PAD]", "12.34", "123.4", "99591"]  # two entries become 1234 without dots
    with pytest.raises(UserError, match="'1234' is ambiguous .* matches 12.34 and 123.4"):
        patient_batch(load_patient({"visits": [{"diagnoses": ["1234"]}]}), dataset)
    # a code written exactly as one entry is that entry
    assert patient_batch(load_patient({"visits": [{"diagnoses": ["123.4"]}]}), dataset).diag.tolist() == [[[2]]]


def test_unknown_code_names_the_vocabulary_file_the_form_and_the_closest_codes():
    files = {"diagnoses": "data/x/x.diagvoc"}
    with pytest.raises(UserError) as err:
        patient_batch(load_patient({"visits": [{"diagnoses": ["995.92", "zz"]}]}), _icd_dataset(), files)
    line = err.value.one_line()
    assert "diagnoses code '995.92' is not in the diagnoses vocabulary data/x/x.diagvoc" in line
    assert "closest known: 99591," in line and "also unknown: zz" in line
    assert "e.g. 99591 or I509" in line and "995.91 matches 99591" in line


# ----------------------------------------------------------------------------------- options, output, run state
@pytest.mark.parametrize("argv,match", [
    (["--patient", "{tmp}/p.json", "--keep-seen"], "--keep-seen applies to --user"),
    (["--patient", "{tmp}/p.json", "--show-field", "title"], "--show-field applies to --user"),
    (["--patient", "{tmp}/p.json", "--threshold", "1.5"], r"--threshold must be a probability in \[0, 1\]"),
    (["--user", "u1", "--threshold", "0.3"], "--threshold applies to --patient"),
    (["--user", "u1", "--out", "{tmp}/r.txt"], "unknown format .txt"),
    (["--user", "u1", "--out", "{tmp}/r.csv", "--json"], "--json and --out"),
    (["--all-users", "--user", "u1"], "not allowed with argument"),
])
def test_options_that_would_be_ignored_are_refused_before_loading(tmp_path, monkeypatch, argv, match):
    monkeypatch.setattr(rec, "load_checkpoint", lambda path: pytest.fail("loaded before the options were checked"))
    argv = ["--checkpoint", str(tmp_path)] + [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(UserError, match=match):
        cli.main(argv)


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    from recbole_ext.serving import output

    monkeypatch.setattr(output.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="writing parquet needs pyarrow.*pip install pyarrow"):
        output.output_format(tmp_path / "r.parquet")


def test_unknown_users_are_refused_or_skipped_and_counted(fake_load, capsys):
    loaded = fake_load()
    argv = ["--checkpoint", str(loaded.path), "--user", "u1", "--user", "u9", "--user", "u10", "--k", "1"]
    with pytest.raises(UserError, match=r"unknown user\(s\) for this checkpoint: u9, u10 \(2 of the 3 users"):
        cli.main(argv)
    assert capsys.readouterr().out == ""  # refused before anything was printed
    assert cli.main(argv + ["--skip-unknown"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped 2 unknown users: u9, u10" in captured.err
    assert captured.out.splitlines()[1:] == ["user u1: top-1", "1\ti20\t4.0000"]
    assert "for 1 user," in captured.out.splitlines()[0]
    with pytest.raises(UserError, match="none of the users asked for is known"):
        cli.main(["--checkpoint", str(loaded.path), "--user", "u9", "--skip-unknown"])


@pytest.mark.parametrize("state,fields,match", [
    ("interrupted", {"epochs_done": 3}, r"^run run is interrupted \(training stopped after 3 finished epochs\); its "
                                        r"model.pth is the best checkpoint so far.*python run.py resume run, or pass "
                                        "--allow-incomplete"),
    ("failed", {"error": "RuntimeError: boom"}, r"^run run failed \(RuntimeError: boom\)"),
    ("running", {}, r"^run run is still running.*wait for it to finish"),
])
def test_a_run_that_did_not_complete_is_refused_unless_allowed(fake_load, capsys, state, fields, match):
    from recbole_ext.run_status import write_status

    loaded = fake_load()
    write_status(loaded.path.parent, state, **fields)
    argv = ["--checkpoint", str(loaded.path), "--user", "u1", "--k", "1"]
    with pytest.raises(UserError, match=match):
        cli.main(argv)
    assert cli.main(argv + ["--allow-incomplete"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: run run ") and captured.err.count("\n") == 1
    assert "serving its best checkpoint so far" in captured.err and "user u1: top-1" in captured.out
    with pytest.warns(UserWarning, match="best checkpoint so far"):
        rec.recommend(loaded.path, users=["u1"], k=1, allow_incomplete=True)


def test_a_complete_run_is_served_quietly_and_a_bare_checkpoint_with_a_warning(fake_load, capsys):
    from recbole_ext.run_status import write_status

    loaded = fake_load()
    argv = ["--checkpoint", str(loaded.path), "--user", "u1", "--k", "1"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "warning: run/model.pth has no run status beside it" in captured.err
    assert captured.out.startswith("IPModel on toy (checkpoint run/model.pth)")
    write_status(loaded.path.parent, "complete")
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("IPModel on toy (run run)")


@pytest.mark.parametrize("name", ["r.csv", "r.jsonl"])
def test_a_failed_out_write_leaves_the_earlier_file_whole(tmp_path, name):
    from recbole_ext.serving.output import write_rows

    path = tmp_path / name
    path.write_text("earlier results\n")
    class Unwritable:
        def __str__(self):
            raise ValueError("no text")

    rows = [{"user": "u1", "rank": 1, "item": "i1", "score": 1.0},
            {"user": "u1", "rank": 2, "item": "i2", "score": Unwritable()}]
    with pytest.raises((TypeError, ValueError)):  # the second row cannot be written: the write fails half-way
        write_rows(path, rows, ROW_COLUMNS)
    assert path.read_text() == "earlier results\n" and [p.name for p in tmp_path.iterdir()] == [name]
    write_rows(path, rows[:1], ROW_COLUMNS)
    assert "i1" in path.read_text()
