"""Background worker: takes queued runs from the store and trains them one at a time.

Process layout: the app starts one worker process (spawn start method); the
worker starts a fresh training process per run. A training process that dies
(SIGKILL, out of memory, a crash in native code) therefore cannot take the
worker with it, and the worker marks its run failed with the exit reason.
An exclusive lock file keeps one worker per store, however many app
processes or sessions start one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import time
import types
from pathlib import Path

from core.store import RunStore, pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "worker.lock"
POLL_S = 0.5
CANCEL_GRACE_S = 30.0  # a cancelled run gets this long to stop by itself before it is terminated


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
            stream=sys.stderr,
        )


def training_process_main(store_root: str, run_id: int, data_dir: str | None) -> None:
    """Entry point of a training process: execute one run that the worker already claimed."""
    _configure_logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the app's terminal reaches the worker, which stops this process
    from core.runner import execute_run

    store = RunStore(store_root)
    store.set_pid(run_id, os.getpid())
    execute_run(store, run_id, data_dir=data_dir)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not report an exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed; the system may have run out of memory)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


def try_lock(store_root: str | os.PathLike):
    """Return an open, exclusively locked lock file, or None when another worker holds it."""
    path = Path(store_root) / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def worker_running(store_root: str | os.PathLike) -> bool:
    handle = try_lock(store_root)
    if handle is None:
        return True
    handle.close()  # closing releases the lock
    return False


_stop_requested = False


def _request_stop(signum: int, frame) -> None:
    global _stop_requested
    _stop_requested = True


def _should_continue(parent_pid: int | None) -> bool:
    return not _stop_requested and (parent_pid is None or pid_alive(parent_pid))


def worker_main(store_root: str, data_dir: str | None, parent_pid: int | None) -> int:
    """Train queued runs until the parent process (the app) exits; return 0.

    With ``parent_pid=None`` (``python -m core worker``) it runs until interrupted.
    """
    _configure_logging()
    signal.signal(signal.SIGTERM, _request_stop)
    if parent_pid is not None:
        # Ctrl-C in the app's terminal reaches this process group too. The app stops the
        # worker itself with SIGTERM at exit, which marks the current run interrupted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = RunStore(store_root)
    lock = try_lock(store.root)
    if lock is None:
        log.info("another worker already serves %s; exiting", store.root)
        return 0
    log.info("worker %d started for %s", os.getpid(), store.root)

    recovered = store.recover_stale_runs(heartbeat_timeout_s=float("inf"))
    for run_id in recovered:
        log.warning("run %d: marked interrupted; its training process was gone at worker start", run_id)

    context = multiprocessing.get_context("spawn")
    try:
        while _should_continue(parent_pid):
            run = store.claim_next_queued()
            if run is None:
                time.sleep(POLL_S)
                continue
            _supervise(store, run["id"], context, data_dir, parent_pid)
    except KeyboardInterrupt:
        log.info("worker %d interrupted", os.getpid())
    finally:
        lock.close()
    log.info("worker %d stopped", os.getpid())
    return 0


def _supervise(store: RunStore, run_id: int, context, data_dir: str | None, parent_pid: int | None) -> None:
    """Run one training process, enforce cancel, and make sure the run ends in a final status."""
    log.info("run %d: starting training process", run_id)
    process = context.Process(
        target=training_process_main, args=(str(store.root), run_id, data_dir), name=f"train-run-{run_id}", daemon=False
    )
    process.start()
    store.set_pid(run_id, process.pid)
    cancel_seen_at = None
    stopped_reason = None

    while process.is_alive():
        process.join(timeout=POLL_S)
        if not _should_continue(parent_pid):
            stopped_reason = "the app or its worker stopped while the run was training"
            process.terminate()
            process.join(timeout=10)
            break
        if cancel_seen_at is None and store.cancel_requested(run_id):
            cancel_seen_at = time.monotonic()
        if cancel_seen_at is not None and time.monotonic() - cancel_seen_at > CANCEL_GRACE_S:
            log.warning("run %d: did not stop %d s after cancel; terminating it", run_id, CANCEL_GRACE_S)
            process.terminate()
            process.join(timeout=10)
            stopped_reason = "cancelled"

    if process.is_alive():
        process.kill()
        process.join()

    run = store.get_run(run_id)
    if run["status"] != "running":
        log.info("run %d: %s", run_id, run["status"])
        return
    if stopped_reason == "cancelled":
        store.finish(run_id, "cancelled", error="cancelled; the training process was terminated")
    elif stopped_reason:
        store.finish(run_id, "interrupted", error=f"{stopped_reason}; the {run['epochs_completed']} completed epochs are kept")
    else:
        reason = f"training process {process.pid} {describe_exit(process.exitcode)}"
        log.error("run %d: %s", run_id, reason)
        store.finish(run_id, "failed", error=f"{reason}; the {run['epochs_completed']} completed epochs are kept")


@contextlib.contextmanager
def _main_module_hidden():
    """Hide ``__main__`` from spawn while a child starts.

    Streamlit and AppTest execute each page as ``__main__``. Spawn would re-run
    that page in the child to rebuild ``__main__`` and so start the app's code
    again there. The worker's target is importable, so the child needs no main module.
    """
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def start_worker(store_root: str | os.PathLike, data_dir: str | None) -> multiprocessing.Process | None:
    """Start a worker process for this store unless one is already running; return it or None."""
    if worker_running(store_root):
        return None
    context = multiprocessing.get_context("spawn")
    process = context.Process(
        target=worker_main, args=(str(store_root), data_dir, os.getpid()), name="mnist-lab-worker", daemon=False
    )
    with _main_module_hidden():
        process.start()
    # multiprocessing joins non-daemon children at interpreter exit, and the worker waits
    # for its parent, so stop it first; atexit runs this before multiprocessing's own hook.
    atexit.register(stop_worker, process)
    log.info("started worker process %d for %s", process.pid, store_root)
    return process


def stop_worker(process: multiprocessing.Process, timeout_s: float = 15.0) -> None:
    """Ask a worker to stop (SIGTERM), which marks its current run interrupted, then wait for it."""
    if process.is_alive():
        process.terminate()
        process.join(timeout=timeout_s)
    if process.is_alive():
        process.kill()
        process.join()
