"""Background worker: takes queued runs from the store and trains them one at a time.

Process layout: the app starts one worker process (spawn start method); the
worker starts a fresh training process per run. A training process that dies
(SIGKILL, the kernel's OOM killer, a crash in native code) therefore cannot take
the worker with it. The worker marks a run killed by a signal "interrupted",
so it can resume from its last completed epoch, and a crashed one "failed".
A training process whose worker dies stops itself the same way.
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
import threading
import time
import types
from pathlib import Path

from core.errors import ConfigError, StoreError
from core.store import RunStore, pid_alive

log = logging.getLogger(__name__)

LOCK_NAME = "worker.lock"
POLL_S = 0.5
ORPHAN_POLL_S = 1.0  # how often a training process checks that its worker still exists
MEMORY_LIMIT_ENV = "MNIST_LAB_MEMORY_LIMIT_MB"  # optional cap per training process, in MiB above its start size
STORE_RETRY_S = 5.0  # wait after a store error (full or read-only disk) before the worker tries again
CANCEL_GRACE_S = 30.0  # a cancelled run gets this long to stop by itself before it is terminated
# Added to each training process's nice value. A training process keeps a core busy, so
# without this the app's server and browser sessions on the same machine wait behind it.
TRAINING_NICE = 10


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
    import torch

    from core.devices import configure_threads
    from core.runner import RunInterrupted, execute_run

    def interrupt(signum: int, frame) -> None:
        raise RunInterrupted(f"{signal.Signals(signum).name}: the app or its worker stopped while the run was training")

    signal.signal(signal.SIGTERM, interrupt)
    _stop_when_orphaned(os.getppid())
    _apply_memory_limit()
    os.nice(TRAINING_NICE)
    try:
        threads = configure_threads()  # $MNIST_LAB_THREADS, else one per core
    except ConfigError as error:
        threads = torch.get_num_threads()
        log.warning("run %d: %s; training with %d threads", run_id, error, threads)
    log.debug("run %d: %d CPU threads", run_id, threads)
    store = RunStore(store_root)
    store.set_pid(run_id, os.getpid())
    execute_run(store, run_id, data_dir=data_dir)


def _stop_when_orphaned(parent_pid: int) -> None:
    """Send SIGTERM to this process once its worker is gone, so a killed worker leaves no training behind.

    The run then ends as "interrupted" with its epochs kept, and the next
    worker trains the queue without a stray process competing for the CPU.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(ORPHAN_POLL_S)
        log.warning("worker %d is gone; stopping this training process", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _apply_memory_limit() -> None:
    """Cap this process's address space at its current size plus $MNIST_LAB_MEMORY_LIMIT_MB, when set.

    An allocation past the cap fails inside PyTorch, and the run ends as
    "out_of_memory" instead of the system's OOM killer picking a process.
    """
    value = os.environ.get(MEMORY_LIMIT_ENV)
    if not value:
        return
    try:
        limit_mb = int(value)
        if limit_mb <= 0:
            raise ValueError
    except ValueError:
        log.error("%s=%r is not a positive whole number of MiB; training without a memory limit", MEMORY_LIMIT_ENV, value)
        return
    import resource

    current = _address_space_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (current + limit_mb * 2**20, resource.RLIM_INFINITY))
    log.info("memory limit: %d MiB above the %d MiB this process uses", limit_mb, current // 2**20)


def _address_space_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmSize not found in /proc/self/status")


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
            try:
                run = store.claim_next_queued()
                if run is None:
                    time.sleep(POLL_S)
                    continue
                _supervise(store, run["id"], context, data_dir, parent_pid)
            except StoreError as error:
                log.error("store error, retrying in %.0f s: %s", STORE_RETRY_S, error)
                time.sleep(STORE_RETRY_S)
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
        store.finish(run_id, "interrupted", error=f"{stopped_reason}; {store.resume_note(run_id)}")
    else:
        # Killed by a signal (SIGKILL, the OOM killer) is an interruption from outside: the run can resume.
        # A non-zero exit code is a crash of the training code itself.
        status = "interrupted" if process.exitcode is not None and process.exitcode < 0 else "failed"
        reason = f"training process {process.pid} {describe_exit(process.exitcode)}"
        log.error("run %d: %s; marked %s", run_id, reason, status)
        store.finish(run_id, status, error=f"{reason}; {store.resume_note(run_id)}")


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
