"""Whether a run finished: ``status.json`` in its run directory.

A run writes ``{"state": "running", ...}`` before its first epoch, ``"complete"`` after ``result.json``, and
``"interrupted"`` (Ctrl-C) or ``"failed"`` (any other error) when it stops early. Whatever serves or resumes a run
reads the state here instead of guessing from which files exist, because ``model.pth`` is written at every
improved epoch and so exists long before the run ends.

Run directories written before this file existed have no ``status.json``; their ``result.json`` (written last)
then stands for "complete".

:func:`status_marked` is how a run (and a resumed run) keeps the file true: running while its body runs, then
complete, interrupted or failed. A running run also records ``epochs_done`` (finished epochs) and
``resume_from_epoch`` (where ``python run.py resume`` would continue from ``last.pth``, the resume state
``recbole_ext.training.resume_state`` writes), and its process id and host, so that a run killed without a chance
to say so (SIGKILL, power loss) can be told from one that is still going. :func:`check_resumable` is the one
place that decides whether a folder can be resumed.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
from pathlib import Path

from recbole_ext.errors import UserError
from recbole_ext.utils.io import atomic_file

STATUS_FILE = "status.json"
RESUME_FILE = "last.pth"  # the state after the last saved epoch; removed when the run completes
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


# ---- keeping status.json true while a run runs ------------------------------------------------------------------

PROGRESS_FIELDS = ("epochs_done", "resume_from_epoch")  # carried from one status to the next


def mark_running(run_dir: str | os.PathLike, **progress) -> None:
    """``running``, with this process's id and host and the progress fields (``epochs_done``, ...)."""
    write_status(run_dir, "running", pid=os.getpid(), host=socket.gethostname(), **progress)


def progress_of(status: dict) -> dict:
    return {k: status[k] for k in PROGRESS_FIELDS if k in status}


def resume_command(run_dir: str | os.PathLike) -> str:
    return f"python run.py resume {run_dir}"


@contextlib.contextmanager
def ctrl_c_deferred():
    """Hold Ctrl-C (SIGINT) back while the body runs and act on it afterwards, so two writes that must agree (the
    resume state and the status naming its epoch) are never split. Python handles signals in the main thread
    only, so elsewhere the body just runs; a replaced handler, not a blocked signal mask, because torch's own
    threads would still take a process-directed signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and previous is not signal.SIG_IGN:
        if callable(previous):
            previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt here
        else:
            raise KeyboardInterrupt


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C, with where it stands in its message. Still a KeyboardInterrupt, so callers that
    stop on Ctrl-C keep doing so; the CLI prints the message as its one line."""

    def __init__(self, run_dir: str | os.PathLike, progress: dict):
        self.run_dir = str(run_dir)
        # finished epochs, so also the last finished one counted from 1, as the console's epoch lines count
        self.epoch = progress.get("epochs_done", 0)
        resume_from = progress.get("resume_from_epoch")
        if resume_from is None or not (Path(run_dir) / RESUME_FILE).is_file():
            message = (f"interrupted before any epoch was saved for resuming ({self.epoch} finished); the run "
                       f"directory is {run_dir}")
        elif resume_from == self.epoch:
            message = f"interrupted after epoch {self.epoch}; resume with: {resume_command(run_dir)}"
        else:  # resume_every > 1 (or eval_step > 1): the resume state is some epochs older
            message = (f"interrupted after epoch {self.epoch} (the resume state holds epochs 1-{resume_from}); "
                       f"resume with: {resume_command(run_dir)}")
        super().__init__(message)


@contextlib.contextmanager
def status_marked(run_dir: str | os.PathLike):
    """Mark ``run_dir`` running for the body, then complete (and drop the resume state, no longer needed),
    interrupted (re-raised as :class:`RunInterrupted`) or failed (the error's first line recorded, re-raised).

    A user mistake (UserError) puts back the status the folder had before (a resume refused on a changed dataset
    leaves the run resumable); a fresh run's caller removes the folder instead."""
    run_dir = Path(run_dir)
    previous = read_status(run_dir) if (run_dir / STATUS_FILE).is_file() else None
    mark_running(run_dir, **progress_of(previous or {}))
    try:
        yield
    except UserError as exc:
        if exc.mistake:
            if previous is not None:
                write_status(run_dir, previous.pop("state"), **previous)
            raise
        write_status(run_dir, "failed", error=exc.message[:300], **progress_of(read_status(run_dir)))
        raise
    except KeyboardInterrupt:
        progress = progress_of(read_status(run_dir))
        write_status(run_dir, "interrupted", **progress)
        raise RunInterrupted(run_dir, progress) from None
    except Exception as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        write_status(run_dir, "failed", error=f"{type(exc).__name__}: {first_line}",
                     **progress_of(read_status(run_dir)))
        raise
    write_status(run_dir, "complete")
    (run_dir / RESUME_FILE).unlink(missing_ok=True)  # finished run directories do not carry a second model


def _alive_here(status: dict) -> bool:
    """Whether the process a running status names still runs on this host (elsewhere: assumed alive)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname():
        return True
    if not isinstance(pid, int) or pid == os.getpid():
        return False  # the process resuming it cannot be the one that wrote it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def check_resumable(run_dir: str | os.PathLike) -> Path:
    """The resume state (``last.pth``) of a run that can be resumed; a one-line UserError otherwise."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise UserError(f"{run_dir} is not a folder", fix="pass a run directory, e.g. runs/BPR-ml-100k-<time>")
    status = read_status(folder)
    state, resume_file = status["state"], folder / RESUME_FILE
    if state == UNKNOWN and not resume_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no {STATUS_FILE}, result.json or {RESUME_FILE})",
                        fix="pass the folder a run wrote under runs/")
    if state == "complete":
        raise UserError(f"the run in {run_dir} is complete; there is nothing to resume",
                        fix=f"its results are in {folder / 'result.json'}; start a new run to train again")
    if state == "running" and _alive_here(status):
        where = f"process {status.get('pid')} on {status.get('host')}"
        raise UserError(f"the run in {run_dir} is still running ({where})",
                        fix=f"wait for it or stop it (Ctrl-C marks it interrupted); if that process is gone (its "
                            f"machine went down), remove {folder / STATUS_FILE} and resume again")
    if not resume_file.is_file():
        raise UserError(f"the run in {run_dir} has no resume state ({RESUME_FILE}): it stopped before its first "
                        f"validated epoch was saved", fix="start the run again")
    return resume_file
