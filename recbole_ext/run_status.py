"""Whether a run finished: ``status.json`` in its run directory.

A run writes ``{"state": "running", ...}`` before its first epoch, ``"complete"`` after ``result.json``, and
``"interrupted"`` (Ctrl-C) or ``"failed"`` (any other error) when it stops early. Whatever serves or resumes a run
reads the state here instead of guessing from which files exist, because ``model.pth`` is written at every
improved epoch and so exists long before the run ends.

Run directories written before this file existed have no ``status.json``; their ``result.json`` (written last)
then stands for "complete".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file

STATUS_FILE = "status.json"
STATES = ("running", "interrupted", "failed", "complete")
UNKNOWN = "unknown"  # no status.json and no result.json: a checkpoint copied out of its run directory


def write_status(run_dir: str | os.PathLike, state: str, **fields) -> None:
    """Replace ``run_dir/status.json`` atomically with ``{"state": state, **fields}`` (fields: plain data)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    with atomic_file(Path(run_dir) / STATUS_FILE) as fh:
        json.dump({"state": state, **fields}, fh, indent=2)


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's status: ``{"state": ..., ...}``; a legacy run with ``result.json`` only reads as complete, a
    folder with neither file as ``unknown``. A damaged status file is a UserError naming it."""
    folder = Path(run_dir)
    path = folder / STATUS_FILE
    if not path.is_file():
        return {"state": "complete" if (folder / "result.json").is_file() else UNKNOWN}
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON: {exc}", fix="remove it if the run is known to be complete") \
            from None
    if not isinstance(status, dict) or status.get("state") not in STATES:
        raise UserError(f"{path} does not hold a run state ({', '.join(STATES)})",
                        fix="remove it if the run is known to be complete")
    return status


def checkpoint_status(checkpoint: str | os.PathLike) -> dict:
    """The status of the run a checkpoint file belongs to (the folder holding it)."""
    return read_status(Path(checkpoint).resolve().parent)
