"""Results store: one SQLite file in WAL mode, one row per finished run.

Only the coordinating process writes, and each finished run is one INSERT in one transaction, so a kill at any
moment (of a worker or of the whole command) leaves either the complete row or no row; a run without a row is
simply redone next time. Runs in progress are never written: there is no 'running' state to clean up.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from recbole_ext.errors import UserError

SCHEMA_VERSION = 1  # columns added since are added to an older store on open (_ADDED_COLUMNS)

_COLUMNS = [
    # name, SQL type, JSON-encoded?
    ("run_key", "TEXT PRIMARY KEY", False),
    ("status", "TEXT NOT NULL CHECK (status IN ('ok', 'failed'))", False),
    ("model", "TEXT NOT NULL", False),
    ("dataset", "TEXT NOT NULL", False),
    ("seed", "INTEGER NOT NULL", False),
    ("grid_id", "TEXT NOT NULL", False),
    ("grid_point", "TEXT NOT NULL", True),
    ("config_dict", "TEXT NOT NULL", True),
    ("run_fn", "TEXT NOT NULL", False),
    ("error", "TEXT", False),
    ("traceback", "TEXT", False),
    ("task", "TEXT", False),
    ("valid_metric", "TEXT", False),
    ("valid_bigger", "INTEGER", False),
    ("best_valid_score", "REAL", False),
    ("best_valid_result", "TEXT", True),
    ("test_result", "TEXT", True),
    ("per_user_test", "TEXT", True),    # {"users": [...], "metrics": {metric: [...]}}; NULL: none
    ("history", "TEXT", True),
    ("effective_config", "TEXT", True),
    ("protocol", "TEXT", True),
    ("dataset_sha256", "TEXT", False),
    ("ddi_sha256", "TEXT", False),
    ("code_version", "TEXT", False),
    ("library_versions", "TEXT", True),
    ("host", "TEXT", False),
    ("backend", "TEXT", False),
    ("run_wall_time_s", "REAL", False),   # RunResult.wall_time_s (training + evaluation)
    ("run_peak_rss_mb", "REAL", False),   # RunResult.peak_rss_mb
    ("wall_time_s", "REAL", False),       # whole worker, imports included
    ("peak_rss_mb", "REAL", False),       # whole worker process (ru_maxrss)
    ("started_at", "TEXT", False),
    ("finished_at", "TEXT NOT NULL", False),
    # added after schema 1 was released; an older store gains them (NULL) on open
    ("phase", "TEXT", False),             # tune (a tuning trial) | final (a tuned board's chosen config) | grid
    ("study", "TEXT", False),             # a trial's Optuna study (its name; the study lives in this same file)
    ("trial", "INTEGER", False),          # a trial's number in its study
    ("pruned", "INTEGER", False),         # 1: the pruner stopped this trial (its best_valid_score is so far)
]
_ADDED_COLUMNS = {"per_user_test", "phase", "study", "trial", "pruned"}
COLUMN_NAMES = [c[0] for c in _COLUMNS]
_JSON_COLUMNS = {c[0] for c in _COLUMNS if c[2]}


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.conn.execute("PRAGMA synchronous=FULL")
            self._create()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable results store: {exc}",
                            fix="point --out at a fresh folder or remove the file") from None
        if mode.lower() != "wal":
            raise UserError(f"{self.path}: SQLite refused WAL mode ({mode})",
                            fix="put --out on a local file system")

    def _create(self):
        cols = ",\n  ".join(f"{name} {sqltype}" for name, sqltype, _ in _COLUMNS)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS runs (\n  {cols}\n)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise UserError(f"{self.path} has schema version {row[0]}, this recbole-ext writes {SCHEMA_VERSION}",
                            fix="use a fresh --out folder")
        existing = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        for name, sqltype, _ in _COLUMNS:
            if name in _ADDED_COLUMNS and name not in existing:
                self.conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sqltype}")
                existing.add(name)
        missing = set(COLUMN_NAMES) - existing
        if missing:
            raise UserError(f"{self.path}: table 'runs' lacks columns {sorted(missing)}",
                            fix="use a fresh --out folder")

    def close(self):
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def record(self, row: dict):
        """Write one finished run (ok or failed) in one transaction; a newer row for the same key replaces it."""
        unknown = set(row) - set(COLUMN_NAMES)
        if unknown:
            raise ValueError(f"unknown result fields {sorted(unknown)}")
        values = [json.dumps(row.get(c), sort_keys=True) if c in _JSON_COLUMNS else row.get(c)
                  for c in COLUMN_NAMES]
        placeholders = ",".join("?" * len(COLUMN_NAMES))
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute(f"INSERT OR REPLACE INTO runs ({','.join(COLUMN_NAMES)}) VALUES ({placeholders})",
                              values)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _decode(self, cursor) -> list[dict]:
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            for c in _JSON_COLUMNS & set(row):
                row[c] = json.loads(row[c]) if row[c] is not None else None
            out.append(row)
        return out

    def rows(self, run_keys=None) -> list[dict]:
        if run_keys is None:
            return self._decode(self.conn.execute("SELECT * FROM runs ORDER BY finished_at"))
        keys = list(run_keys)
        out = []
        for start in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[start:start + 500]
            out.extend(self._decode(self.conn.execute(
                f"SELECT * FROM runs WHERE run_key IN ({','.join('?' * len(chunk))})", chunk)))
        return out

    def rows_of_phase(self, phase: str) -> list[dict]:
        """Every row of one phase (``tune``: a tuned board's trials), without reading the others."""
        return self._decode(self.conn.execute("SELECT * FROM runs WHERE phase = ? ORDER BY finished_at", (phase,)))

    def finished_keys(self, status: str = "ok") -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT run_key FROM runs WHERE status=?", (status,))}
