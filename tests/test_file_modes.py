"""Everything the product writes gets the mode a plain ``open()`` / ``mkdir`` would give under the user's umask
(temporary files renamed into place used to keep mkstemp's 0600 and mkdtemp's 0700)."""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import pytest

from recbole_ext.utils.io import atomic_dir, atomic_file, current_umask


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_modes(folder: Path) -> tuple[int, int]:
    """(file mode, folder mode) that open() and mkdir give here and now."""
    (folder / "plain.txt").write_text("x")
    (folder / "plain_dir").mkdir()
    return mode(folder / "plain.txt"), mode(folder / "plain_dir")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_atomic_writes_get_the_modes_of_plain_writes(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        file_mode, dir_mode = plain_modes(tmp_path)
        with atomic_file(tmp_path / "result.json") as fh:
            fh.write("{}")
        with atomic_dir(tmp_path / "dataset") as folder:
            (folder / "a.inter").write_text("x")
    assert file_mode == 0o666 & ~mask and dir_mode == 0o777 & ~mask
    assert mode(tmp_path / "result.json") == file_mode
    assert mode(tmp_path / "dataset") == dir_mode and mode(tmp_path / "dataset" / "a.inter") == file_mode


def test_a_run_directory_is_readable_by_colleagues_under_umask_022(tmp_path, tiny_data, quiet):
    from recbole_ext.quick_start import run

    with umask(0o022):
        result = run("BPR", "tiny", {**quiet, "data_path": str(tiny_data), "topk": [10], "valid_metric": "recall@10",
                                     "runs_root": str(tmp_path / "runs")})
    run_dir = Path(result.run_dir)
    written = [run_dir, *run_dir.rglob("*")]
    assert {"model.pth", "config.yaml", "result.json", "run.log"} <= {p.name for p in written}
    wrong = {str(p.relative_to(tmp_path)): oct(mode(p)) for p in written
             if mode(p) != (0o755 if p.is_dir() else 0o644)}
    assert wrong == {}
