"""Run a whole grid: skip what is finished, run the rest on an executor, stop cleanly.

One ``concurrent.futures`` path drives both engines (``submit``, then ``wait`` for each to
complete):

* local — a ``ProcessPoolExecutor`` of ``workers`` spawned processes; each runs one notebook at
  a time (papermill's event loop is not thread-safe), in a kernel of its own;
* Dask — ``distributed.Client(scheduler).get_executor()``; the workers must have ``sigma``
  installed and see the output folder (a shared file system).

The sweep folder ``<out>/<grid name>/`` is locked (``filelock``) while a sweep runs in it. A
run folder appears only when complete (:mod:`sigma.sweep.run`), so a killed sweep leaves none
half-written; a rerun skips finished runs and re-runs failed and stale ones (the notebook
changed since). On Ctrl-C the runs under way are stopped and discarded (their kernels too)
and :class:`SweepInterrupted` says how many runs are finished.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path

from sigma.sweep import skip_iri_grammars
from sigma.sweep.grid import Grid, load_grid, run_name
from sigma.sweep.notebook import notebook_sha256, read_notebook
from sigma.sweep.records import METRICS_PARAMETER, TMP_DIR
from sigma.sweep.run import (
    RunResult,
    RunSpec,
    fail_from_driver,
    is_finished,
    run_in_worker,
    run_state,
)

LOCK_FILE = ".lock"


class CannotRun(RuntimeError):
    """The sweep could not start: output folder not writable, folder locked, no cluster."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a sweep; the unfinished runs were discarded."""

    def __init__(self, sweep_dir: Path, total: int, finished: int, before: int, remote: bool):
        super().__init__(sweep_dir, total, finished, before)
        self.sweep_dir, self.total, self.finished, self.before = sweep_dir, total, finished, before
        self.remote = remote

    def __str__(self) -> str:
        unfinished = self.total - self.finished
        text = (
            f"interrupted: {self.finished} of {self.total} runs finished "
            f"({self.finished - self.before} in this sweep), {unfinished} unfinished "
            f"{'run was' if unfinished == 1 else 'runs were'} discarded; run the same command "
            "again to resume"
        )
        if self.remote:
            text += " (runs already started on the Dask cluster may still finish and be kept)"
        return text


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`: one :class:`~sigma.sweep.run.RunResult` per point."""

    sweep_dir: Path
    results: list[RunResult]

    def by_status(self, status: str) -> list[RunResult]:
        """The results with this status ("done", "skipped" or "failed")."""
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[RunResult]:
        """The runs that raised."""
        return self.by_status("failed")


def run_sweep(
    grid,
    out="reports/sweeps",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every point of ``grid`` (a path or a :class:`~sigma.sweep.grid.Grid`) not finished.

    out : parent of the sweep folder ``<out>/<grid name>/``.
    workers : runs at once on this machine (default: the number of cores).
    scheduler : address of a Dask scheduler (``tcp://host:8786``): send runs there instead.
    timeout : seconds allowed per notebook cell (positive).
    Raises ValueError for bad input before running anything, :class:`CannotRun` if the folder
    cannot be written or is locked by another sweep or the scheduler cannot be reached,
    :class:`SweepInterrupted` on Ctrl-C. Failed runs do not raise: see ``SweepResult.failed``.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ValueError(f"workers must be a whole number ≥ 1, got {workers!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e12
    ):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    import nbformat

    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    sweep_dir = prepare_output(Path(out) / grid.name)
    source = grid.source if grid.source is not None else read_notebook(grid.notebook)
    sha256 = notebook_sha256(source)
    notebook_json = nbformat.writes(source)
    specs = [
        RunSpec(
            name=run_name(p),
            parameters=p,
            notebook_json=notebook_json,
            notebook=grid.notebook.name,
            notebook_sha256=sha256,
            stem=grid.notebook.stem,
            sweep_dir=str(sweep_dir),
            defaults=grid.defaults(),
            wants_metrics_path=METRICS_PARAMETER in grid.declared,
            timeout=timeout,
        )
        for p in grid.points()
    ]
    with sweep_lock(sweep_dir):
        shutil.rmtree(sweep_dir / TMP_DIR, ignore_errors=True)  # left by a killed sweep
        states = {s.name: run_state(sweep_dir / s.name, s.stem, sha256) for s in specs}
        todo = [s for s in specs if states[s.name] != "finished"]
        stale = sum(states[s.name] == "stale" for s in todo)
        engine = f"Dask scheduler {scheduler}" if scheduler else f"{_workers(workers)} processes"
        changed = f" ({stale} of them for a changed notebook)" if stale else ""
        _log(
            f"{grid.name}: {len(specs)} runs, {len(specs) - len(todo)} finished before, "
            f"{len(todo)} to run{changed} on {engine} → {sweep_dir}",
            progress,
        )
        names = {s.name for s in todo}
        results = [RunResult(s.name, s.parameters, "skipped") for s in specs if s.name not in names]
        if todo:
            handler = signal.getsignal(signal.SIGINT)
            try:
                results += _run_all(todo, workers, scheduler, grid.name, progress)
            except KeyboardInterrupt:
                _ignore_sigint()  # until the clean-up is done: a second Ctrl-C cannot cut it short
                if not scheduler:  # runs already started on a cluster may still be writing there
                    shutil.rmtree(sweep_dir / TMP_DIR, ignore_errors=True)
                finished = sum(is_finished(sweep_dir / s.name, s.stem, sha256) for s in specs)
                raise SweepInterrupted(
                    sweep_dir, len(specs), finished, len(specs) - len(todo), bool(scheduler)
                ) from None
            finally:
                if handler is not None and _main_thread():
                    signal.signal(signal.SIGINT, handler)
        _remove_empty(sweep_dir / TMP_DIR)
    order = {s.name: i for i, s in enumerate(specs)}
    return SweepResult(sweep_dir, sorted(results, key=lambda r: order[r.name]))


def prepare_output(sweep_dir) -> Path:
    """Create the sweep folder and check that files can be written in it (absolute path).

    Raises :class:`CannotRun` naming the folder and why: a file in the way, read-only, no
    permission, no space.
    """
    sweep_dir = Path(sweep_dir).resolve()
    existing = next(p for p in (sweep_dir, *sweep_dir.parents) if p.exists())
    if not existing.is_dir():
        raise CannotRun(f"cannot create the output folder {sweep_dir}: {existing} is a file")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CannotRun(
            f"cannot create the output folder {sweep_dir}: {exc.strerror or exc}"
        ) from None
    probe = sweep_dir / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CannotRun(
            f"cannot write in the output folder {sweep_dir}: {exc.strerror or exc}"
        ) from None
    return sweep_dir


@contextlib.contextmanager
def sweep_lock(sweep_dir):
    """Hold the sweep folder's lock (``filelock``; released if this process dies).

    Raises :class:`CannotRun` if another sweep holds it.
    """
    import filelock

    lock = filelock.FileLock(Path(sweep_dir) / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise CannotRun(
            f"another sweep is running in {sweep_dir} (it holds {Path(sweep_dir) / LOCK_FILE})"
        ) from None
    except OSError as exc:
        raise CannotRun(f"cannot lock {Path(sweep_dir) / LOCK_FILE}: {exc}") from None
    try:
        yield lock
    finally:
        lock.release()


def _run_all(specs, workers, scheduler, label, progress) -> list[RunResult]:
    """Submit every run to the executor and collect them as they complete."""
    with _executor(workers, scheduler) as (executor, stop):
        futures = {}
        try:
            with _sigint_blocked():  # worker processes start with Ctrl-C ignored
                for spec in specs:
                    futures[executor.submit(run_in_worker, spec)] = spec
            results, pending = [], set(futures)
            with _bar(len(specs), label, progress) as bar:
                # as_completed, but waking up often: Python runs the Ctrl-C handler in the main
                # thread only, and a SIGINT the OS hands to another thread (tqdm's monitor,
                # Dask's event loop) would not end an unbounded wait.
                while pending:
                    done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    results += [_report(_outcome(f, futures[f]), bar) for f in done]
            return results
        except KeyboardInterrupt:
            _ignore_sigint()  # run_sweep restores Ctrl-C when it has cleaned up
            stop()
            raise


@contextlib.contextmanager
def _executor(workers, scheduler):
    """(executor, stop): a local process pool or a Dask client's executor; ``stop()`` ends the
    runs: Dask cancels them (those already running on a worker finish there); the local pool's
    processes and their kernels are terminated, which fails every pending future with
    BrokenProcessPool (cancelling them first would trip the pool's manager thread)."""
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise CannotRun("--scheduler needs the 'distributed' package") from None
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise CannotRun(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        with client:
            executor = client.get_executor(pure=False)
            yield executor, lambda: executor.shutdown(wait=False)
        return
    from concurrent.futures import ProcessPoolExecutor

    others = {p.pid for p in multiprocessing.active_children()}
    with ProcessPoolExecutor(
        _workers(workers),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
    ) as executor:
        yield executor, lambda: _stop_processes(others)


def _worker_init() -> None:
    """A local worker leaves Ctrl-C to the sweep, which stops it (SIGTERM) and its kernel; it
    reads notebooks without jsonschema's slow-to-import IRI grammars (:func:`skip_iri_grammars`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    skip_iri_grammars()


def _stop_processes(others: set[int], grace: float = 10.0) -> None:
    """Terminate this process's worker processes (not those in ``others``) and their kernels."""
    import psutil

    procs = []
    for child in multiprocessing.active_children():
        if child.pid in others:
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(child.pid)
            procs += [*proc.children(recursive=True), proc]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def _outcome(future, spec: RunSpec) -> RunResult:
    try:
        return future.result()
    except Exception as exc:  # the worker died or could not run the task at all
        return fail_from_driver(spec, exc)


@contextlib.contextmanager
def _sigint_blocked():
    """Hold Ctrl-C back (it is delivered on exit); processes started meanwhile inherit it."""
    if not _main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _ignore_sigint() -> None:
    if _main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _bar(total: int, label: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="run", disable=not progress, file=sys.stderr)


def _report(result: RunResult, bar) -> RunResult:
    if result.status == "failed":
        bar.write(f"✗ {result.name}: {result.error}", file=sys.stderr)
    bar.update(1)
    return result


def _log(message: str, enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
