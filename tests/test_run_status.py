"""status.json: what a run directory says about whether its run finished."""
from __future__ import annotations

import json

import pytest

from recbole_ext.errors import UserError
from recbole_ext.run_status import checkpoint_status, read_status, write_status


def test_written_state_is_read_back(tmp_path):
    write_status(tmp_path, "running", epoch=3)
    assert read_status(tmp_path) == {"state": "running", "epoch": 3}
    write_status(tmp_path, "complete")
    assert checkpoint_status(tmp_path / "model.pth")["state"] == "complete"


def test_legacy_run_with_result_only_is_complete_and_bare_folder_unknown(tmp_path):
    assert read_status(tmp_path)["state"] == "unknown"
    (tmp_path / "result.json").write_text("{}")
    assert read_status(tmp_path)["state"] == "complete"
    write_status(tmp_path, "interrupted")  # the status file wins over result.json
    assert read_status(tmp_path)["state"] == "interrupted"


def test_bad_state_refused_and_damaged_file_one_line(tmp_path):
    with pytest.raises(ValueError):
        write_status(tmp_path, "done")
    (tmp_path / "status.json").write_text(json.dumps({"state": "finished"}))
    with pytest.raises(UserError, match="does not hold a run state"):
        read_status(tmp_path)
    (tmp_path / "status.json").write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        read_status(tmp_path)
