"""Run store: one SQLite file (WAL mode) for runs and metrics, one folder per run for weights.

Paths are built from integer run ids only; run names are data and never touch the filesystem.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import sqlite3
import time
import unicodedata
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Iterator

from core.errors import StoreError

STORE_ENV = "MNIST_LAB_STORE"
DEFAULT_STORE = "runs"
MAX_NAME_LENGTH = 100
MAX_RUN_ID = 2**63 - 1  # the largest SQLite INTEGER PRIMARY KEY
STATUSES = ("queued", "running", "completed", "failed", "cancelled", "diverged", "out_of_memory", "interrupted")
ACTIVE_STATUSES = ("queued", "running")
# Runs that stopped for a reason outside their config; they continue from their last completed epoch.
RESUMABLE_STATUSES = ("interrupted", "failed", "cancelled", "out_of_memory")
LOW_DISK_BYTES = 1 << 20  # below this much free space an I/O error is reported as a full disk
TRAINING_STATE_NAME = "last.safetensors"  # per run folder: weights, optimizer and RNG state after the last epoch
# Unicode bidirectional embedding, override and isolate controls, which can make a name display reversed.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    arch TEXT NOT NULL,
    model_config TEXT NOT NULL,
    train_config TEXT NOT NULL,
    params INTEGER,
    flops INTEGER,
    receptive_field TEXT,
    device TEXT,
    status TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'app',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat_at REAL,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    progress REAL NOT NULL DEFAULT 0,
    epochs_completed INTEGER NOT NULL DEFAULT 0,
    best_epoch INTEGER,
    best_val_accuracy REAL,
    test_accuracy REAL,
    test_loss REAL,
    confusion TEXT,
    wall_time_s REAL,
    checkpoint TEXT,
    error TEXT,
    seed_group INTEGER
);
CREATE TABLE IF NOT EXISTS step_metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch REAL NOT NULL,
    train_loss REAL NOT NULL,
    lr REAL,
    wall_time_s REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS epoch_metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    train_accuracy REAL,
    val_loss REAL,
    val_accuracy REAL,
    lr REAL,
    images_per_s REAL,
    epoch_time_s REAL,
    wall_time_s REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS ensembles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    members TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""

# Columns added after the first release; stores created before them get them on open.
# seed_group is the id of the first run of a group started together with different seeds.
ADDED_RUN_COLUMNS = {"flops": "INTEGER", "receptive_field": "TEXT", "seed_group": "INTEGER"}
MAX_SEEDS = 20  # runs one "repeat with seeds" action may start
MAX_ENSEMBLE_MEMBERS = 20

EPOCH_FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "images_per_s", "epoch_time_s", "wall_time_s")


def resolve_store_dir(store_dir: str | os.PathLike | None = None) -> Path:
    """Return the store directory: the argument, else $MNIST_LAB_STORE, else ./runs."""
    return Path(store_dir or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def clean_run_name(name: str | None) -> str | None:
    """Strip a run name and reject one that is too long or cannot be shown as one line of text."""
    if name is None:
        return None
    name = name.strip()
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH:
        raise StoreError(f"run name is {len(name)} characters long; use at most {MAX_NAME_LENGTH} characters")
    for char in name:
        category = unicodedata.category(char)
        if category == "Cs":
            # A lone surrogate: how Python passes on bytes that are not UTF-8 (a file name in another encoding).
            raise StoreError("run name is not valid UTF-8 text; type the name again or leave it empty")
        if category in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS:
            raise StoreError(
                f"run name contains control characters (U+{ord(char):04X} here); "
                "remove newlines, tabs and text-direction marks"
            )
    return name


def check_run_id(run_id: object) -> int:
    """Return ``run_id`` as an int, or raise StoreError unless it is a whole number from 1 to MAX_RUN_ID.

    Run ids name folders on disk, so text such as "1/../.." and floats are rejected, not converted.
    """
    try:
        if isinstance(run_id, bool):
            raise TypeError
        value = operator.index(run_id)  # int and numpy integers; not float, str or None
    except TypeError:
        raise StoreError(f"invalid run id {run_id!r}; run ids are whole numbers such as 12") from None
    if not 1 <= value <= MAX_RUN_ID:
        raise StoreError(f"invalid run id {value}; run ids are whole numbers from 1 to {MAX_RUN_ID}")
    return value


def is_run_id(text: str) -> bool:
    """Tell whether a command-line model argument is a run id (ASCII digits only) rather than a name or path."""
    return text.isascii() and text.isdigit()


def describe_store_error(db_path: Path, error: sqlite3.Error) -> str:
    """Return a message for an SQLite error that names the cause (full, read-only, busy) and the fix."""
    text = str(error)
    # A write that hits ENOSPC in the WAL file reaches Python as "disk I/O error", so free space decides.
    if "is full" in text or ("disk I/O error" in text and _free_bytes(db_path.parent) < LOW_DISK_BYTES):
        return f"the run store {db_path} is full ({text}); free disk space, then retry. Stored runs are kept"
    if "readonly" in text or "read-only" in text or _read_only(db_path.parent):
        return (
            f"the run store {db_path} is read-only ({text}); make the folder writable or point "
            f"${STORE_ENV} or --store at a writable folder. Stored runs are kept"
        )
    if "locked" in text or "busy" in text:
        return f"the run store {db_path} is busy ({text}); another process holds it. Retry in a moment"
    return f"run store {db_path} failed: {text}"


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return LOW_DISK_BYTES  # unknown: a folder that cannot be queried is treated as full


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY) or not os.access(folder, os.W_OK)
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill(0) succeeds for a zombie (exited but not yet reaped) too, so on Linux /proc/PID/stat decides.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(") ")[-1].split()[0] != "Z"
        except OSError:
            return True
    return True


class RunStore:
    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = resolve_store_dir(root)
        self.db_path = self.root / "runs.sqlite"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.connect() as conn:
                conn.executescript(SCHEMA)
                existing = {row["name"] for row in conn.execute("PRAGMA table_info(runs)")}
                for column, kind in ADDED_RUN_COLUMNS.items():
                    if column not in existing:
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the run store at {self.root}: {error}; check that the folder is writable") from error

    # -- connections -------------------------------------------------------

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """Yield a connection inside one transaction, committed on success and rolled back on error."""
        try:
            with closing(sqlite3.connect(self.db_path, timeout=30)) as conn:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("PRAGMA synchronous=NORMAL")
                with conn:
                    yield conn
        except sqlite3.Error as error:
            raise StoreError(describe_store_error(self.db_path, error)) from error

    def run_dir(self, run_id: int) -> Path:
        """Return the weights folder of a run: checkpoints/RUN_ID under the store root."""
        return self.root / "checkpoints" / str(check_run_id(run_id))

    def training_state_path(self, run_id: int) -> Path:
        return self.run_dir(run_id) / TRAINING_STATE_NAME

    # -- writing -----------------------------------------------------------

    def create_run(
        self,
        model_config: dict[str, Any],
        train_config: dict[str, Any],
        *,
        name: str | None = None,
        status: str = "queued",
        source: str = "app",
        params: int | None = None,
        pid: int | None = None,
    ) -> int:
        name = clean_run_name(name)
        with self.connect() as conn:
            run_id = self._insert_run(conn, model_config, train_config, name, status, source, params, pid)
            if not name:
                conn.execute("UPDATE runs SET name = ? WHERE id = ?", (f"{model_config['arch']}-{run_id}", run_id))
        return run_id

    def create_seed_group(
        self,
        model_config: dict[str, Any],
        train_config: dict[str, Any],
        seeds: list[int],
        *,
        name: str | None = None,
        status: str = "queued",
        source: str = "app",
        pid: int | None = None,
    ) -> list[int]:
        """Store one run per seed of the same config, in one transaction, as a group; return their ids.

        The group's id is its first run's id. Runs are named "NAME seed S", where NAME
        defaults to "ARCH-gID". Only the first run gets ``status`` and ``pid`` when
        the status is "running" (the CLI trains them one after another); the others are queued.
        """
        name = clean_run_name(name)
        if not 1 <= len(seeds) <= MAX_SEEDS:
            raise StoreError(f"a seed group has 1 to {MAX_SEEDS} runs, got {len(seeds)} seeds")
        if len(set(seeds)) != len(seeds):
            raise StoreError(f"the seeds of a group must differ, got {seeds}")
        ids: list[int] = []
        with self.connect() as conn:
            for index, seed in enumerate(seeds):
                first = index == 0
                run_status = status if first or status != "running" else "queued"
                run_id = self._insert_run(
                    conn, model_config, {**train_config, "seed": seed}, None, run_status, source, None, pid if first else None
                )
                ids.append(run_id)
            base = name or f"{model_config['arch']}-g{ids[0]}"
            for run_id, seed in zip(ids, seeds):
                conn.execute("UPDATE runs SET name = ?, seed_group = ? WHERE id = ?", (f"{base} seed {seed}", ids[0], run_id))
        return ids

    def _insert_run(self, conn, model_config, train_config, name, status, source, params, pid) -> int:
        now = time.time()
        cursor = conn.execute(
            "INSERT INTO runs (name, arch, model_config, train_config, params, device, status, source,"
            " created_at, started_at, heartbeat_at, pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name or "",
                model_config["arch"],
                json.dumps(model_config),
                json.dumps(train_config),
                params,
                train_config.get("device"),
                status,
                source,
                now,
                now if status == "running" else None,
                now if status == "running" else None,
                pid,
            ),
        )
        return cursor.lastrowid

    def mark_running(self, run_id: int, pid: int) -> dict[str, Any]:
        """Mark a queued run as running in process ``pid`` (the CLI training a seed group in order); return it."""
        now = time.time()
        with self.connect() as conn:
            updated = conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, started_at = ?, heartbeat_at = ? WHERE id = ? AND status = 'queued'",
                (pid, now, now, check_run_id(run_id)),
            ).rowcount
        if not updated:
            raise StoreError(f"run {run_id} is not queued (status {self.get_run(run_id)['status']}); another process took it")
        return self.get_run(run_id)

    def claim_next_queued(self) -> dict[str, Any] | None:
        """Mark the oldest queued run as running and return it, atomically across processes."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            conn.execute(
                "UPDATE runs SET status = 'running', started_at = ?, heartbeat_at = ? WHERE id = ?",
                (now, now, row["id"]),
            )
        return self.get_run(row["id"])

    def set_pid(self, run_id: int, pid: int) -> None:
        with self.connect() as conn:
            conn.execute("UPDATE runs SET pid = ?, heartbeat_at = ? WHERE id = ?", (pid, time.time(), run_id))

    def record_start(
        self,
        run_id: int,
        *,
        params: int,
        device: str,
        total_steps: int,
        flops: int | None = None,
        receptive_field: tuple[int, int] | None = None,
    ) -> None:
        field = json.dumps(list(receptive_field)) if receptive_field is not None else None
        with self.connect() as conn:
            conn.execute(
                "UPDATE runs SET params = ?, device = ?, total_steps = ?, flops = ?, receptive_field = ?, heartbeat_at = ?"
                " WHERE id = ?",
                (params, device, total_steps, flops, field, time.time(), run_id),
            )

    def add_step_points(self, run_id: int, points: list[dict[str, Any]], *, progress: float) -> None:
        with self.connect() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO step_metrics (run_id, step, epoch, train_loss, lr, wall_time_s)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(run_id, p["step"], p["epoch"], p["train_loss"], p.get("lr"), p.get("wall_time_s")) for p in points],
            )
            conn.execute("UPDATE runs SET progress = ?, heartbeat_at = ? WHERE id = ?", (progress, time.time(), run_id))

    def add_epoch(self, run_id: int, metrics: dict[str, Any]) -> None:
        with self.connect() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO epoch_metrics (run_id, epoch, {', '.join(EPOCH_FIELDS)})"
                f" VALUES (?, ?, {', '.join('?' * len(EPOCH_FIELDS))})",
                (run_id, metrics["epoch"], *[metrics.get(k) for k in EPOCH_FIELDS]),
            )
            conn.execute(
                "UPDATE runs SET epochs_completed = ?, heartbeat_at = ?,"
                " best_val_accuracy = MAX(COALESCE(best_val_accuracy, 0), ?) WHERE id = ?",
                (metrics["epoch"], time.time(), metrics["val_accuracy"], run_id),
            )

    def finish(self, run_id: int, status: str, **fields: Any) -> None:
        """Set a final status plus any result columns (test_accuracy, error, checkpoint, ...)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if "confusion" in fields and fields["confusion"] is not None:
            fields["confusion"] = json.dumps(fields["confusion"])
        columns = {"status": status, "finished_at": time.time(), **fields}
        assignments = ", ".join(f"{k} = ?" for k in columns)
        with self.connect() as conn:
            conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*columns.values(), run_id))
            # A run that ended early still shows how long it trained.
            conn.execute(
                "UPDATE runs SET wall_time_s = finished_at - started_at"
                " WHERE id = ? AND wall_time_s IS NULL AND started_at IS NOT NULL",
                (run_id,),
            )

    def reopen_for_resume(self, run_id: int, *, status: str = "queued", pid: int | None = None) -> dict[str, Any]:
        """Put a stopped run back in the queue (or mark it running for the CLI) so it continues; return it.

        Only runs in RESUMABLE_STATUSES qualify. Their stored epochs stay and
        the training state file decides where training continues.
        """
        if status not in ACTIVE_STATUSES:
            raise ValueError(f"a resumed run is queued or running, not {status!r}")
        run_id = check_run_id(run_id)
        now = time.time()
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if row is None:
                raise StoreError(f"run {run_id} not found in {self.root}")
            if row["status"] not in RESUMABLE_STATUSES:
                raise StoreError(
                    f"run {run_id} is {row['status']}; only {', '.join(RESUMABLE_STATUSES)} runs can be resumed"
                )
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = NULL, error = NULL, cancel_requested = 0, wall_time_s = NULL,"
                " pid = ?, started_at = COALESCE(started_at, ?), heartbeat_at = ? WHERE id = ?",
                (status, pid, now, now, int(run_id)),
            )
        return self.get_run(run_id)

    def resume_note(self, run_id: int) -> str:
        """Return the sentence an early-ended run's error ends with: what is kept and what resuming does."""
        epochs = self.get_run(run_id)["epochs_completed"]
        if self.training_state_path(run_id).is_file():
            return f"the {epochs} completed epochs are kept; resume to continue after epoch {epochs}"
        if epochs:
            return f"the {epochs} completed epochs are kept, but without a saved training state resuming starts again at epoch 1"
        return "no epoch had completed; resume to start it again"

    def truncate_metrics(self, run_id: int, *, epoch: int, step: int) -> None:
        """Drop metrics recorded after ``epoch``/``step``, the part of an interrupted epoch a resumed run trains again."""
        with self.connect() as conn:
            conn.execute("DELETE FROM step_metrics WHERE run_id = ? AND step > ?", (run_id, step))
            conn.execute("DELETE FROM epoch_metrics WHERE run_id = ? AND epoch > ?", (run_id, epoch))
            best = conn.execute("SELECT MAX(val_accuracy) FROM epoch_metrics WHERE run_id = ?", (run_id,)).fetchone()[0]
            conn.execute("UPDATE runs SET epochs_completed = ?, best_val_accuracy = ? WHERE id = ?", (epoch, best, run_id))

    def request_cancel(self, run_id: int) -> str:
        """Cancel a queued run at once, or ask a running one to stop; return the new status."""
        run_id = check_run_id(run_id)
        with self.connect() as conn:
            row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"run {run_id} not found")
            if row["status"] == "queued":
                conn.execute(
                    "UPDATE runs SET status = 'cancelled', finished_at = ?, error = 'cancelled before it started'"
                    " WHERE id = ?",
                    (time.time(), run_id),
                )
                return "cancelled"
            if row["status"] == "running":
                conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            return row["status"]

    def cancel_requested(self, run_id: int) -> bool:
        with self.connect() as conn:
            row = conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def delete_run(self, run_id: int) -> list[str]:
        """Delete a finished run, its metrics and its weights; return the names of ensembles deleted with it.

        Active runs must be cancelled first. An ensemble that contains the run cannot be
        evaluated without it, so it is deleted too.
        """
        run = self.get_run(run_id)
        if run["status"] in ACTIVE_STATUSES:
            raise StoreError(f"run {run_id} is {run['status']}; cancel it before deleting it")
        key = f"run:{run['id']}"
        orphaned = [e for e in self.list_ensembles() if key in e["members"]]
        with self.connect() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run["id"],))
            conn.executemany("DELETE FROM ensembles WHERE id = ?", [(e["id"],) for e in orphaned])
        folder = self.run_dir(run_id)
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
        return [e["name"] for e in orphaned]

    # -- ensembles ---------------------------------------------------------

    def create_ensemble(self, members: list[str], *, name: str | None = None) -> int:
        """Store an ensemble of model keys ("run:12", "shipped:cnn"); return its id.

        The ensemble averages its members' class probabilities. Its name defaults to
        "ensemble-ID".
        """
        name = clean_run_name(name)
        members = list(dict.fromkeys(members))  # drop repeats, keep the order
        if not 2 <= len(members) <= MAX_ENSEMBLE_MEMBERS:
            raise StoreError(f"an ensemble needs 2 to {MAX_ENSEMBLE_MEMBERS} different models, got {len(members)}")
        for member in members:
            kind, _, value = member.partition(":")
            if kind == "run":
                check_run_id(int(value) if is_run_id(value) else value)
            elif kind != "shipped" or not value:
                raise StoreError(f"invalid ensemble member {member!r}; use run:ID for a run or shipped:NAME for a shipped model")
        for existing in self.list_ensembles():
            if set(existing["members"]) == set(members):
                raise StoreError(f"ensemble {existing['id']} ({existing['name']}) already has exactly these members; use that one")
        with self.connect() as conn:
            cursor = conn.execute(
                "INSERT INTO ensembles (name, members, created_at) VALUES (?, ?, ?)", (name or "", json.dumps(members), time.time())
            )
            ensemble_id = cursor.lastrowid
            if not name:
                conn.execute("UPDATE ensembles SET name = ? WHERE id = ?", (f"ensemble-{ensemble_id}", ensemble_id))
        return ensemble_id

    def list_ensembles(self) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute("SELECT * FROM ensembles ORDER BY id").fetchall()
        return [{**dict(row), "members": json.loads(row["members"])} for row in rows]

    def get_ensemble(self, ensemble_id: int) -> dict[str, Any]:
        ensemble_id = check_run_id(ensemble_id)
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM ensembles WHERE id = ?", (ensemble_id,)).fetchone()
        if row is None:
            raise StoreError(f"ensemble {ensemble_id} not found in {self.root}")
        return {**dict(row), "members": json.loads(row["members"])}

    def delete_ensemble(self, ensemble_id: int) -> None:
        ensemble = self.get_ensemble(ensemble_id)
        with self.connect() as conn:
            conn.execute("DELETE FROM ensembles WHERE id = ?", (ensemble["id"],))

    def recover_stale_runs(self, *, heartbeat_timeout_s: float = 600.0) -> list[int]:
        """Mark running runs whose process is gone (or silent too long) as interrupted; return their ids."""
        recovered = []
        now = time.time()
        for run in self.list_runs(statuses=("running",)):
            process_gone = run["pid"] is not None and not pid_alive(run["pid"])
            silent = run["heartbeat_at"] is not None and now - run["heartbeat_at"] > heartbeat_timeout_s
            if not (process_gone or silent):
                continue
            reason = (
                f"training process {run['pid']} stopped without finishing"
                if process_gone
                else f"no progress reported for {now - run['heartbeat_at']:.0f} s"
            )
            with self.connect() as conn:
                updated = conn.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                    (now, f"{reason}; {self.resume_note(run['id'])}", run["id"]),
                ).rowcount
            if updated:
                recovered.append(run["id"])
        return recovered

    # -- reading -----------------------------------------------------------

    def get_run(self, run_id: int) -> dict[str, Any]:
        run_id = check_run_id(run_id)
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"run {run_id} not found in {self.root}")
        return _decode(row)

    def list_runs(self, *, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM runs"
        args: tuple = ()
        if statuses:
            query += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = tuple(statuses)
        with self.connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [_decode(r) for r in rows]

    def step_metrics(self, run_ids: list[int]) -> list[dict[str, Any]]:
        return self._metrics("step_metrics", "step", run_ids)

    def epoch_metrics(self, run_ids: list[int]) -> list[dict[str, Any]]:
        return self._metrics("epoch_metrics", "epoch", run_ids)

    def _metrics(self, table: str, order: str, run_ids: list[int]) -> list[dict[str, Any]]:
        if not run_ids:
            return []
        marks = ", ".join("?" * len(run_ids))
        with self.connect() as conn:
            rows = conn.execute(
                f"SELECT * FROM {table} WHERE run_id IN ({marks}) ORDER BY run_id, {order}", [int(i) for i in run_ids]
            ).fetchall()
        return [dict(r) for r in rows]


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    run = dict(row)
    for key in ("model_config", "train_config", "confusion", "receptive_field"):
        if run.get(key):
            run[key] = json.loads(run[key])
    return run
