"""The HTML page in a real headless browser (Debian's chromium): it loads offline, lists every run, sorts.

Sorting is driven through the page's own click handlers: ``#sort=<table>:<column>[:desc]`` in the URL makes the
page click that header (twice for descending) on load; ``--dump-dom`` then returns the DOM after the script ran.
"""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from recbole_ext.leaderboard import plan, stats, worker
from recbole_ext.leaderboard.report import write_report
from recbole_ext.leaderboard.spec import parse_spec
from tests.test_leaderboard_helpers import FAKE, REPO

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run sh tests/install-browser.sh (the README test command does)")
    return exe


def _browser(tmp_path: Path, *args: str, timeout: int = 90) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Tables(HTMLParser):
    """Rows (run key, cell texts) of every table, and the body's attributes."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list] = {}
        self.headers: dict[str, list] = {}
        self.body: dict = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
            self.headers[self._table] = []
        elif tag == "tr" and self._table:
            self._row = (attrs.get("data-run-key"), [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = [tag, attrs, ""]

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if self._cell[0] == "th":
                self.headers[self._table].append((self._cell[2].strip(), self._cell[1].get("aria-sort")))
            else:
                self._row[1].append(self._cell[2].strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row[1]:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_EXT_DATA", str(tmp_path / "data"))
    spec = parse_spec({"task": "medrec", "datasets": ["synth-ehr-small"], "seeds": [0, 1, 2, 10],
                       "models": ["A", {"name": "B", "grid": {"learning_rate": [0.1, 0.01]}},
                                  {"name": "Broken", "config": {"fake_fail": True}}]}, "page")
    hashes = {"synth-ehr-small": plan.DatasetHashes(None, None)}
    requests = plan.tuning_runs(spec, hashes, FAKE)
    rows = [worker.execute(r.to_payload()) for r in requests]  # in-process: this test is about the page
    chosen = stats.choose_configs(requests, rows)
    tables = stats.build_tables(spec.datasets, ["A", "B", "Broken"], requests, rows, chosen)
    chosen_keys = {r.run_key for r in requests if chosen.get((r.model, r.dataset)) == r.grid_point}
    write_report(tmp_path / "out", "page", spec.task, tables, rows, chosen_keys)
    return tmp_path / "out" / "leaderboard.html", rows


def _parse(dom: str) -> _Tables:
    parsed = _Tables()
    parsed.feed(dom)
    return parsed


def test_page_loads_shows_every_run_and_sorts(page, tmp_path):
    html_path, rows = page
    url = html_path.resolve().as_uri()
    text = html_path.read_text()
    assert "http://" not in text and "https://" not in text  # nothing to fetch: the page is self-contained

    loaded = _parse(_browser(tmp_path, "--dump-dom", url))
    assert "runs" in loaded.tables and "summary-0" in loaded.tables
    assert sorted(k for k, _ in loaded.tables["runs"]) == sorted(r["run_key"] for r in rows)  # every run
    assert len(rows) == 16 and sum(1 for _, cells in loaded.tables["runs"] if "failed" in cells) == 4
    assert [cells[0] for _, cells in loaded.tables["summary-0"]] == ["A", "B", "Broken"]

    heads = [h for h, _ in loaded.headers["runs"]]
    seed_col, valid_col = heads.index("seed"), heads.index("valid score")
    by_seed = _parse(_browser(tmp_path, "--dump-dom", f"{url}#sort=runs:{seed_col}:desc"))
    assert by_seed.body.get("data-sorted") == f"runs:{seed_col}:desc"
    seeds = [int(cells[seed_col]) for _, cells in by_seed.tables["runs"]]
    assert seeds == sorted(seeds, reverse=True) and seeds[0] == 10  # numeric, not text, order (10 > 2)
    assert dict(by_seed.headers["runs"])["seed"] == "descending"

    by_valid = _parse(_browser(tmp_path, "--dump-dom", f"{url}#sort=runs:{valid_col}"))
    scores = [cells[valid_col] for _, cells in by_valid.tables["runs"]]
    numbers = [float(s) for s in scores if s != "n/a"]
    assert numbers == sorted(numbers) and scores[-4:] == ["n/a"] * 4  # failed runs (no score) sort last
    assert sorted(k for k, _ in by_valid.tables["runs"]) == sorted(r["run_key"] for r in rows)

    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "leaderboard_page.png"
    _browser(tmp_path, "--window-size=1400,1800", f"--screenshot={shot}", f"{url}#sort=runs:{seed_col}:desc")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
