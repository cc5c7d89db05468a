"""recommend on checkpoints trained here: item titles, --out files, --all-users, run states, the shipped patient
examples and --help's patient format. One BPR and one RETAIN run (1 epoch each) serve every test of the module."""
from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from recbole_ext.errors import UserError
from recbole_ext.quick_start import run
from recbole_ext.run_status import write_status
from recbole_ext.serving import cli
from tests.conftest import write_atomic

ROOT = Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 30, 20


def _title(i: int) -> str:
    return f"Film number {i} (19{i:02d})"  # spaces: a token_seq field, as ml-100k's movie_title


@pytest.fixture(scope="module")
def bpr_run(tmp_path_factory):
    """BPR on a small dataset whose .item file has a title and a genre column."""
    root = tmp_path_factory.mktemp("titled")
    rows = [[f"u{u}", f"i{(u * 7 + j * 3) % N_ITEMS}", "1", str(j)] for u in range(N_USERS) for j in range(6)]
    write_atomic(root / "titled", "titled", "inter", ["user_id:token", "item_id:token", "rating:float",
                                                     "timestamp:float"], rows)
    write_atomic(root / "titled", "titled", "item", ["item_id:token", "genre:token", "title:token_seq"],
                 [[f"i{i}", f"g{i % 3}", _title(i)] for i in range(N_ITEMS)])
    return run("BPR", "titled", {"show_progress": False, "state": "WARNING", "epochs": 1, "data_path": str(root),
                                 "topk": [5], "valid_metric": "recall@5", "metrics": ["Recall"],
                                 "train_batch_size": 256, "run_dir": str(tmp_path_factory.mktemp("runs") / "bpr")})


@pytest.fixture(scope="module")
def retain_run(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a busy machine: OpenMP spin-waits cost more than they give
    try:
        return run("RETAIN", "synth-ehr-small", {"show_progress": False, "state": "WARNING", "epochs": 1,
                                                 "embedding_size": 16, "patients_per_batch": 32,
                                                 "medrec_bootstrap_rounds": 2,
                                                 "run_dir": str(tmp_path_factory.mktemp("runs") / "retain")})
    finally:
        torch.set_num_threads(threads)


def _text_rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines() if re.match(r"\d+\t", line)]


def test_header_and_item_titles_in_text_and_json(bpr_run, capsys):
    argv = ["--checkpoint", bpr_run.run_dir, "--user", "u1", "--user", "u2", "--k", "3"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"BPR on titled (run {bpr_run.run_dir}): top-3 for 2 users, training items "
                                   "excluded, title shown")
    rows = _text_rows(out)
    assert len(rows) == 6 and all(title == _title(int(item[1:])) for _, item, _, title in rows)
    assert cli.main(argv + ["--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("BPR on titled")  # the header leaves stdout to the JSON lines
    first = json.loads(captured.out.splitlines()[0])
    assert first["title"] == [_title(int(i[1:])) for i in first["items"]]
    assert first["items"] == [item for _, item, _, _ in rows[:3]]


def test_show_field_chooses_or_hides_the_column(bpr_run, capsys):
    argv = ["--checkpoint", bpr_run.run_dir, "--user", "u1", "--k", "2"]
    assert cli.main(argv + ["--show-field", "genre"]) == 0
    assert all(genre == f"g{int(item[1:]) % 3}" for _, item, _, genre in _text_rows(capsys.readouterr().out))
    assert cli.main(argv + ["--show-field", "none"]) == 0
    assert all(len(row) == 3 for row in _text_rows(capsys.readouterr().out))
    with pytest.raises(UserError, match=r"--show-field year: .*titled.item has no such column \(it has: genre, "
                                        r"title\)"):
        cli.main(argv + ["--show-field", "year"])


def test_out_writes_every_users_rows_in_one_file(bpr_run, tmp_path, capsys):
    out = tmp_path / "all.csv"
    out.write_text("an older file")
    assert cli.main(["--checkpoint", bpr_run.run_dir, "--all-users", "--k", "4", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {N_USERS * 4} rows ({N_USERS} users) to {out}"
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["user", "rank", "item", "score", "title"]
    assert sorted({r["user"] for r in rows}) == sorted(f"u{u}" for u in range(N_USERS))
    assert [r["rank"] for r in rows[:4]] == ["1", "2", "3", "4"]
    assert all(r["title"] == _title(int(r["item"][1:])) for r in rows)
    assert [p.name for p in tmp_path.iterdir()] == ["all.csv"]  # replaced in one rename, no temporary left

    # .jsonl: the same rows for the users asked for
    lines = tmp_path / "two.jsonl"
    assert cli.main(["--checkpoint", bpr_run.run_dir, "--user", "u3", "--user", "u0", "--k", "4",
                     "--out", str(lines)]) == 0
    got = [json.loads(line) for line in lines.read_text().splitlines()]
    want = [r for r in rows if r["user"] in ("u3", "u0")]
    assert [(g["user"], g["rank"], g["item"], g["title"]) for g in got] == \
        sorted([(r["user"], int(r["rank"]), r["item"], r["title"]) for r in want], key=lambda x: (x[0] != "u3", x[1]))
    assert all(isinstance(g["score"], float) for g in got)


def test_parquet_out_when_pyarrow_is_installed(bpr_run, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    out = tmp_path / "r.parquet"
    assert cli.main(["--checkpoint", bpr_run.run_dir, "--user", "u1", "--k", "2", "--out", str(out)]) == 0
    assert pd.read_parquet(out).columns.tolist() == ["user", "rank", "item", "score", "title"]


def test_incomplete_copy_of_a_trained_run_is_refused_unless_allowed(bpr_run, tmp_path, capsys):
    copy = tmp_path / "run-copy"
    shutil.copytree(bpr_run.run_dir, copy)
    argv = ["--checkpoint", str(copy), "--user", "u1", "--k", "2"]
    assert cli.main(argv) == 0  # result.json without status.json: a run from before status.json, complete
    assert capsys.readouterr().err == ""
    write_status(copy, "interrupted", epochs_done=1)
    with pytest.raises(UserError, match="run run-copy is interrupted .*--allow-incomplete"):
        cli.main(argv)
    assert cli.main(argv + ["--allow-incomplete"]) == 0
    captured = capsys.readouterr()
    assert "warning: run run-copy is interrupted" in captured.err and len(_text_rows(captured.out)) == 2
    write_status(copy, "complete")
    bare = tmp_path / "elsewhere" / "model.pth"
    bare.parent.mkdir()
    shutil.copy(copy / "model.pth", bare)
    assert cli.main(["--checkpoint", str(bare), "--user", "u1", "--k", "2"]) == 0
    captured = capsys.readouterr()
    assert "has no run status beside it" in captured.err and "(checkpoint elsewhere/model.pth)" in captured.out


def test_the_shipped_patient_example_on_a_trained_medication_model(retain_run, capsys):
    example = ROOT / "examples" / "patient.json"
    assert cli.main(["--checkpoint", retain_run.run_dir, "--patient", str(example), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert captured.err.startswith(f"RETAIN on synth-ehr-small (run {retain_run.run_dir}): medications for the "
                                   f"last visit in {example}, probability >= 0.5 (the run's threshold)")
    assert result["threshold"] == 0.5 and result["k"] is None
    assert all(p >= 0.5 for p in result["probabilities"])
    assert cli.main(["--checkpoint", retain_run.run_dir, "--patient", str(example), "--json", "--k", "3",
                     "--threshold", "0"]) == 0
    top = json.loads(capsys.readouterr().out)
    assert len(top["medications"]) == 3 and top["probabilities"] == sorted(top["probabilities"], reverse=True)
    assert top["probabilities"][0] >= max(result["probabilities"], default=0.0)


def test_an_unknown_code_names_the_vocabulary_file_and_the_closest_codes(retain_run, tmp_path):
    patient = tmp_path / "p.json"
    patient.write_text(json.dumps({"visits": [{"diagnoses": ["D04000", "D0001"]}]}))
    with pytest.raises(UserError) as err:
        cli.main(["--checkpoint", retain_run.run_dir, "--patient", str(patient)])
    line = err.value.one_line()
    assert "diagnoses code 'D04000' is not in the diagnoses vocabulary" in line
    assert "dataset_atomic/synth-ehr-small/synth-ehr-small.diagvoc (closest known: D0400," in line


def test_help_documents_the_patient_file_and_its_example_is_valid_for_mimic3_demo():
    from types import SimpleNamespace

    from recbole_ext.data.medrec import load_medrec
    from recbole_ext.retrieval.patient import load_patient, patient_batch

    text = cli.build_parser().format_help()
    start = text.index('{"visits"')
    shown = json.loads(text[start:text.index("\n\n", start)])
    shipped = json.loads((ROOT / "examples" / "patient-mimic3-demo.json").read_text())
    assert shown == shipped and "995.91" in json.dumps(shown)  # a dotted ICD code, as people write them
    data = load_medrec(ROOT / "dataset_atomic" / "mimic3-demo", "mimic3-demo")
    vocab = SimpleNamespace(n_med=data.n_codes("med"),
                            **{f"{k}_tokens": ["[PAD]"] + data.vocab[k]["code"].tolist() for k in ("diag", "proc",
                                                                                                   "med")})
    batch = patient_batch(load_patient(shipped), vocab)
    assert (batch.diag[0, 0] > 0).sum() == 2 and (batch.proc > 0).sum() == 2
