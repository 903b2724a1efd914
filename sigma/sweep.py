"""Parameter sweeps: a YAML grid → one papermill run per point, in parallel, resumable.

A grid file names a notebook and lists values per parameter; the runs are the cartesian
product::

    notebook: notebooks/01_original.py   # relative to the working directory
    name: 01_original                    # optional: the sweep folder (default: notebook name)
    parameters:
      beta: [1.0, 10.0]
      epochs: [20]

``python -m sigma.sweep GRID [--workers N] [--scheduler ADDRESS] [--out reports/sweeps]``
writes ``<out>/<name>/<run>/`` per point, ``<run>`` being the sorted ``key=value`` pairs joined
by ``_`` (``beta=10_epochs=20``), holding the executed notebook, its HTML and ``metrics.json``
(:mod:`sigma.runs`). If the notebook declares ``metrics_path`` the runner sets it and the
notebook writes the record; otherwise the runner writes one with the parameters only.

* Validation first: every grid value is checked against the notebook's parameters cell (read
  with ``papermill.inspect_notebook``) — names, types, ranges — before anything runs.
* Resumable: a run folder appears only when complete (built in ``<sweep>/.tmp/`` and moved in
  with ``os.replace``); a rerun skips finished runs and retries failed ones.
* Failures: a run that raises is moved to ``<sweep>/failed/<run>/`` (``error.json``, and the
  notebook up to the failing cell); the sweep carries on and exits non-zero at the end.
* Engines: ``workers`` runs at once on this machine (each run is its own kernel process,
  driven by a thread here), or the runs go to an existing Dask cluster (``scheduler``), whose
  workers must have ``sigma`` installed and see the output folder (a shared file system).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sigma.reports import (
    TMP_DIR,
    describe_error,
    error_traceback,
    execute_notebook,
    read_notebook,
    render_html,
)
from sigma.runs import ERROR_FILE, FAILED_DIR, METRICS_FILE, read_record, record_metrics
from sigma.runs import write_json_atomic as _write_json

METRICS_PARAMETER = "metrics_path"  # set by the runner, never by a grid
TYPES = ("float", "int", "str", "bool")
_NUMBER = r"[-+]?(?:inf|∞|\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?)"
_INTERVAL = re.compile(rf"\bin\s*([\[(])\s*({_NUMBER})\s*,\s*({_NUMBER})\s*([\])])", re.I)
_BOUND = re.compile(rf"(?<![<>=!])(>=|<=|≥|≤|>|<)\s*({_NUMBER})(?![\w.])", re.I)
_SAFE_STR = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Range:
    """An interval of allowed values: lo < v (or ≤ when closed) and v < hi (or ≤)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False

    def __contains__(self, value) -> bool:
        above = value >= self.lo if self.lo_closed else value > self.lo
        below = value <= self.hi if self.hi_closed else value < self.hi
        return above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'≥' if self.lo_closed else '>'} {format_value(self.lo)}"
        if self.lo == -math.inf:
            return f"{'≤' if self.hi_closed else '<'} {format_value(self.hi)}"
        return (
            f"in {'[' if self.lo_closed else '('}{format_value(self.lo)}, "
            f"{format_value(self.hi)}{']' if self.hi_closed else ')'}"
        )


# Ranges of the package's usual parameter names, used when the notebook's comment gives none.
KNOWN_RANGES = {
    "alpha": Range(lo=0.0, lo_closed=True),  # prior precision
    "beta": Range(lo=0.0),  # noise precision
    "laplace_beta": Range(lo=0.0, lo_closed=True),  # notebook 01: 0 = from the residuals
    "epochs": Range(lo=1, lo_closed=True),
    "seed": Range(lo=0, lo_closed=True),
    "hidden_units": Range(lo=1, lo_closed=True),
    "batch_size": Range(lo=1, lo_closed=True),
    "test_size": Range(lo=0.0, hi=1.0),
}


def parse_range(text: str) -> Range | None:
    """The range stated in a parameter's comment, or None.

    Understood: ``in (0, 1)``, ``in [1, 100]``, ``in [0, inf)``, ``> 0``, ``≥ 1``, ``< 1``,
    ``≤ 1``. (Papermill skips a parameter line holding two ``=``: write ``≥``, not ``>=``.)
    """
    m = _INTERVAL.search(text)
    if m:
        lo, hi = _number(m.group(2)), _number(m.group(3))
        return Range(lo, hi, lo_closed=m.group(1) == "[", hi_closed=m.group(4) == "]")
    m = _BOUND.search(text)
    if m:
        op, value = m.group(1), _number(m.group(2))
        if op in (">", ">=", "≥"):
            return Range(lo=value, lo_closed=op != ">")
        return Range(hi=value, hi_closed=op != "<")
    return None


@dataclass(frozen=True)
class Parameter:
    """One assignment of a notebook's ``parameters`` cell."""

    name: str
    type: str | None  # "float", "int", "str", "bool", another annotation, or None if unknown
    default: object
    help: str
    range: Range | None
    range_source: str = ""


def declared_parameters(nb, where: str = "the notebook") -> dict[str, Parameter]:
    """The parameters a notebook declares, read with ``papermill.inspect_notebook``.

    The type is the annotation, else the type of the literal default. The range comes from the
    comment (:func:`parse_range`), else :data:`KNOWN_RANGES`. Raises ValueError if papermill
    cannot read an assignment of the cell (it skips lines with two ``=``).
    """
    import papermill

    found = papermill.inspect_notebook(nb)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is not None:
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as exc:
            raise ValueError(f"{where}: the parameters cell is not valid Python: {exc}") from exc
        for node in tree.body:
            target = node.target if isinstance(node, ast.AnnAssign) else None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            if isinstance(target, ast.Name) and target.id not in found:
                line = cell.source.splitlines()[node.lineno - 1].strip()
                raise ValueError(
                    f"{where}: papermill cannot read the parameter line {line!r} (it skips lines "
                    "holding more than one '='): remove the '=' from its comment (write ≥, ≤)"
                )
    params = {}
    for name, info in found.items():
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            default = None
        type_name = None if info["inferred_type_name"] == "None" else info["inferred_type_name"]
        if type_name is None and type(default).__name__ in TYPES:
            type_name = type(default).__name__
        rng, source = parse_range(info["help"]), "its comment in the parameters cell"
        if rng is None and name in KNOWN_RANGES:
            rng, source = KNOWN_RANGES[name], "sigma.sweep.KNOWN_RANGES"
        params[name] = Parameter(name, type_name, default, info["help"], rng, source)
    return params


def check_value(param: Parameter, value, where: str):
    """``value`` converted to the parameter's type, or ValueError saying what is wrong.

    float takes ints and numeric strings (PyYAML reads ``1e-3`` as a string) and must be
    finite; int, bool and str must be exactly that.
    """
    if value is None or isinstance(value, list | dict | tuple | set):
        raise ValueError(f"{where}: {value!r} is not a single value")
    kind = param.type
    if kind == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(
                    f"{where}: {value!r} is not a number ({param.name} is a float)"
                ) from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: {value!r} is not a number ({param.name} is a float)")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not finite")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {value!r} is not an int ({param.name} is an int)")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not true/false ({param.name} is a bool)")
    elif kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"{where}: {value!r} is not a string ({param.name} is a str)")
    elif kind is not None:
        raise ValueError(
            f"{where}: {param.name} is annotated {kind!r}; a sweep sets only float, int, str "
            "and bool parameters"
        )
    elif not isinstance(value, bool | int | float | str):
        raise ValueError(f"{where}: {value!r} is not a number, string or bool")
    if param.range is not None and not isinstance(value, str | bool) and value not in param.range:
        raise ValueError(
            f"{where}: {value!r} is out of range: {param.name} must be {param.range} "
            f"(from {param.range_source})"
        )
    return value


def check_parameters(nb, values: dict, where: str = "the notebook") -> dict:
    """Check single values for a notebook's parameters (``reports run -p``); returns them typed."""
    if not values:
        return {}
    declared = declared_parameters(nb, where)
    checked = {}
    for name, value in values.items():
        _check_name(name, declared, where)
        checked[name] = check_value(declared[name], value, f"{where}: parameter {name!r}")
    return checked


@dataclass(frozen=True)
class Grid:
    """A validated grid: the notebook, the sweep's name and the typed values per parameter."""

    notebook: Path
    name: str
    parameters: dict[str, tuple]
    declared: dict[str, Parameter] = field(repr=False, compare=False)
    source: object = field(default=None, repr=False, compare=False)  # the NotebookNode

    def points(self) -> list[dict]:
        """The runs: the cartesian product of the values, one dict per run."""
        keys = list(self.parameters)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*self.parameters.values())
        ]


def load_grid(path) -> Grid:
    """Read and validate a grid YAML file (see the module docstring).

    Raises ValueError naming the bad key or value: unknown top-level keys, a parameter the
    notebook does not declare (listing those it does), a value of the wrong type or out of
    range, an empty or duplicated list, ``metrics_path`` in the grid.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"grid file {path} does not exist")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping with 'notebook' and 'parameters'")
    unknown = sorted(set(spec) - {"notebook", "name", "parameters"})
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(map(repr, unknown))}; "
            "a grid has 'notebook', 'parameters' and optionally 'name'"
        )
    for key in ("notebook", "parameters"):
        if key not in spec:
            raise ValueError(f"{path}: missing {key!r}")
    if not isinstance(spec["notebook"], str):
        raise ValueError(f"{path}: 'notebook' must be a path, got {spec['notebook']!r}")
    notebook = Path(spec["notebook"])
    if not notebook.is_file():
        raise ValueError(
            f"{path}: notebook {notebook} not found (relative paths are taken from the working "
            f"directory, {Path.cwd()})"
        )
    name = spec.get("name", notebook.stem)
    if not isinstance(name, str) or not _SAFE_STR.fullmatch(name):
        raise ValueError(f"{path}: 'name' must be a folder name (letters, digits, . _ + -)")
    nb = read_notebook(notebook)
    declared = declared_parameters(nb, str(notebook))
    values = validate_grid(spec["parameters"], declared, f"{path}")
    return Grid(notebook, name, values, declared, nb)


def validate_grid(parameters, declared: dict[str, Parameter], where: str = "grid") -> dict:
    """Check a {name: [values]} mapping against declared parameters; return typed tuples."""
    if not isinstance(parameters, dict) or not parameters:
        raise ValueError(
            f"{where}: 'parameters' must map each parameter name to a list of values, "
            f"got {parameters!r}"
        )
    checked = {}
    for name, values in parameters.items():
        _check_name(name, declared, where, grid=True)
        if not isinstance(values, list) or not values:
            raise ValueError(
                f"{where}: parameter {name!r} must be a non-empty list of values, got "
                f"{values!r} (write [{values!r}] for a single value)"
            )
        typed, seen = [], {}
        for i, value in enumerate(values):
            v = check_value(declared[name], value, f"{where}: parameter {name!r}, value {i}")
            if isinstance(v, str) and not _SAFE_STR.fullmatch(v):
                raise ValueError(
                    f"{where}: parameter {name!r}, value {i}: {v!r} cannot go in a run folder "
                    "name: use letters, digits and . _ + - (not starting with a dot)"
                )
            label = format_value(v)
            if label in seen:
                raise ValueError(
                    f"{where}: parameter {name!r} lists {seen[label]!r} and {value!r}, the "
                    "same value twice"
                )
            seen[label] = value
            typed.append(v)
        checked[name] = tuple(typed)
    longest = run_name({k: max(v, key=lambda x: len(format_value(x))) for k, v in checked.items()})
    if len(longest.encode()) > 200:
        raise ValueError(f"{where}: run names would be too long for a folder ({longest[:60]}...)")
    return checked


def _check_name(name, declared: dict[str, Parameter], where: str, grid: bool = False) -> None:
    if grid and name == METRICS_PARAMETER:
        raise ValueError(f"{where}: {METRICS_PARAMETER!r} is set by the sweep runner; remove it")
    if name not in declared:
        names = ", ".join(n for n in declared if n != METRICS_PARAMETER) or "none"
        raise ValueError(
            f"{where}: parameter {name!r} is not declared in the notebook's parameters cell; "
            f"declared: {names}"
        )


def format_value(value) -> str:
    """A value as it appears in a run name: 10.0 → '10', 0.5 → '0.5', True → 'true'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def run_name(parameters: dict) -> str:
    """The run folder name: sorted ``key=value`` joined by ``_`` (``beta=10_epochs=20``)."""
    return "_".join(f"{k}={format_value(parameters[k])}" for k in sorted(parameters))


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (picklable; the notebook travels as JSON)."""

    name: str
    parameters: dict
    notebook_json: str
    stem: str  # file names inside the run folder: <stem>.ipynb, <stem>.html
    sweep_dir: str  # absolute
    wants_metrics_path: bool
    timeout: float | None = None


@dataclass
class RunResult:
    """How one run ended: status is "done", "skipped" (finished before) or "failed"."""

    name: str
    parameters: dict
    status: str
    seconds: float = 0.0
    error: str | None = None


@dataclass
class SweepResult:
    """The outcome of :func:`run_sweep`."""

    sweep_dir: Path
    results: list[RunResult]

    def by_status(self, status: str) -> list[RunResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[RunResult]:
        return self.by_status("failed")


def is_finished(run_dir, stem: str) -> bool:
    """A run is finished when its notebook, HTML and metrics.json are all there."""
    run_dir = Path(run_dir)
    return all((run_dir / f).is_file() for f in (f"{stem}.ipynb", f"{stem}.html", METRICS_FILE))


def execute_run(spec: RunSpec) -> RunResult:
    """Run one point of the grid: execute, render, check metrics, then move into place.

    Everything is built in ``<sweep>/.tmp/<run>.<random>/``; the folder is moved to
    ``<sweep>/<run>/`` when complete, or to ``<sweep>/failed/<run>/`` with ``error.json`` if
    anything raised. Never raises for a failing notebook: the result says what happened.
    """
    import nbformat

    sweep_dir = Path(spec.sweep_dir)
    final = sweep_dir / spec.name
    if is_finished(final, spec.stem):
        return RunResult(spec.name, spec.parameters, "skipped")
    start = time.time()
    tmp = sweep_dir / TMP_DIR / f"{spec.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    ipynb = tmp / f"{spec.stem}.ipynb"
    params = dict(spec.parameters)
    if spec.wants_metrics_path:
        params[METRICS_PARAMETER] = str(tmp / METRICS_FILE)
    try:
        try:
            execute_notebook(
                nbformat.reads(spec.notebook_json, 4), ipynb, params, timeout=spec.timeout
            )
            _retarget(ipynb, tmp, final)
            complete_metrics(tmp / METRICS_FILE, spec.parameters, spec.wants_metrics_path, start)
            render_html(ipynb, tmp / f"{spec.stem}.html")
        except Exception as exc:
            seconds = time.time() - start
            if ipynb.exists():
                with contextlib.suppress(Exception):  # the error record matters more
                    render_html(ipynb, tmp / f"{spec.stem}.html")
            error = describe_error(exc)
            _write_json(tmp / ERROR_FILE, _error_record(spec, error, error_traceback(exc), seconds))
            _publish(tmp, sweep_dir / FAILED_DIR / spec.name)
            return RunResult(spec.name, spec.parameters, "failed", round(seconds, 1), error)
        _publish(tmp, final)
        shutil.rmtree(sweep_dir / FAILED_DIR / spec.name, ignore_errors=True)
        return RunResult(spec.name, spec.parameters, "done", round(time.time() - start, 1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_metrics(path, parameters: dict, written_by_notebook: bool, start: float) -> dict:
    """Make sure ``metrics.json`` exists and records the run's parameters.

    If the notebook wrote it: a grid parameter recorded with another value than the run set
    raises (the notebook did not use the injected value); missing ones are added. If the
    notebook does not declare ``metrics_path``, a record with the parameters is written.
    """
    path = Path(path)
    if not written_by_notebook:
        return record_metrics(path, parameters, {}, start=start)
    if not path.is_file():
        raise RuntimeError(
            f"the notebook declares {METRICS_PARAMETER} but wrote no {METRICS_FILE}: end it "
            f"with sigma.runs.record_metrics({METRICS_PARAMETER}, parameters=..., metrics=...)"
        )
    record = read_record(path)
    recorded = record.setdefault("parameters", {})
    for key, value in parameters.items():
        if key in recorded and recorded[key] != value:
            raise RuntimeError(
                f"the notebook recorded {key}={recorded[key]!r} but the run set {key}={value!r}: "
                "it does not use the injected parameter"
            )
        recorded.setdefault(key, value)
    _write_json(path, record)
    return record


def run_sweep(
    grid,
    out="reports/sweeps",
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run every point of ``grid`` (a path or a :class:`Grid`) not finished yet.

    out : parent of the sweep folder ``<out>/<grid name>/``.
    workers : runs at once on this machine (default: the number of cores).
    scheduler : address of a Dask scheduler (``tcp://host:8786``): send runs there instead.
    timeout : seconds allowed per notebook cell.
    Raises ValueError for a bad grid before running anything, RuntimeError if another sweep
    holds the folder. Failed runs do not raise: see ``SweepResult.failed``.
    """
    if not isinstance(grid, Grid):
        grid = load_grid(grid)
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    sweep_dir = (Path(out) / grid.name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    source = json.dumps(grid.source if grid.source is not None else read_notebook(grid.notebook))
    wants = METRICS_PARAMETER in grid.declared
    specs = [
        RunSpec(run_name(p), p, source, grid.notebook.stem, str(sweep_dir), wants, timeout)
        for p in grid.points()
    ]
    with _locked(sweep_dir):
        shutil.rmtree(sweep_dir / TMP_DIR, ignore_errors=True)  # left by a killed sweep
        skipped = [s for s in specs if is_finished(sweep_dir / s.name, s.stem)]
        todo = [s for s in specs if s.name not in {k.name for k in skipped}]
        engine = (
            f"Dask scheduler {scheduler}" if scheduler else f"{_workers(workers)} local workers"
        )
        _log(
            f"{grid.name}: {len(specs)} runs, {len(skipped)} finished before, {len(todo)} to run "
            f"on {engine} → {sweep_dir}",
            progress,
        )
        results = [RunResult(s.name, s.parameters, "skipped") for s in skipped]
        if todo:
            run = _run_dask if scheduler else _run_local
            results += run(todo, scheduler if scheduler else _workers(workers), grid.name, progress)
        _remove_empty(sweep_dir / TMP_DIR)
    order = {s.name: i for i, s in enumerate(specs)}
    return SweepResult(sweep_dir, sorted(results, key=lambda r: order[r.name]))


def _run_local(specs, workers: int, label: str, progress: bool) -> list[RunResult]:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=workers) as pool, _bar(len(specs), label, progress) as bar:
        futures = [pool.submit(execute_run, s) for s in specs]
        try:
            return [_report(f.result(), bar) for f in as_completed(futures)]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


# papermill drives its kernel through an asyncio loop that is not safe to share between threads
# of one process ("This event loop is already running"): a Dask worker with several threads
# runs its notebooks one at a time; run more worker processes for parallelism.
_ONE_NOTEBOOK_PER_PROCESS = threading.Lock()


def _execute_run_in_worker(spec: RunSpec) -> RunResult:
    with _ONE_NOTEBOOK_PER_PROCESS:
        loop = asyncio.new_event_loop()  # this thread's own, never the worker's running loop
        asyncio.set_event_loop(loop)
        try:
            return execute_run(spec)
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _run_dask(specs, address: str, label: str, progress: bool) -> list[RunResult]:
    from distributed import Client, as_completed

    results = []
    with Client(address) as client, _bar(len(specs), label, progress) as bar:
        futures = client.map(
            _execute_run_in_worker,
            specs,
            pure=False,
            key=[f"sigma-run-{s.name}-{uuid.uuid4().hex[:6]}" for s in specs],
        )
        spec_of = {f.key: s for f, s in zip(futures, specs, strict=True)}
        for future in as_completed(futures):
            spec = spec_of[future.key]
            try:
                result = future.result()
            except Exception as exc:  # the worker died or could not run the task at all
                result = _fail_from_driver(spec, exc)
            results.append(_report(result, bar))
    return results


def _fail_from_driver(spec: RunSpec, exc: BaseException) -> RunResult:
    sweep_dir = Path(spec.sweep_dir)
    tmp = sweep_dir / TMP_DIR / f"{spec.name}.{uuid.uuid4().hex[:8]}"
    error = describe_error(exc)
    _write_json(tmp / ERROR_FILE, _error_record(spec, error, error_traceback(exc), None))
    _publish(tmp, sweep_dir / FAILED_DIR / spec.name)
    return RunResult(spec.name, spec.parameters, "failed", 0.0, error)


def _error_record(spec: RunSpec, error: str, traceback: str, seconds) -> dict:
    from sigma.runs import git_state, package_versions

    commit, dirty = git_state()
    return {
        "run": spec.name,
        "parameters": spec.parameters,
        "error": error,
        "traceback": traceback,
        "seconds": None if seconds is None else round(seconds, 3),
        "git_commit": commit,
        "git_dirty": dirty,
        "versions": package_versions(),
    }


def _publish(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an old ``dst`` (never half)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = src.parent / f"{src.name}.old"
        os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(src, dst)


def _retarget(ipynb: Path, tmp: Path, final: Path) -> None:
    """In the executed notebook, name the run folder it ends up in rather than the scratch one."""
    old, new = json.dumps(str(tmp))[1:-1], json.dumps(str(final))[1:-1]  # as escaped in JSON
    text = ipynb.read_text(encoding="utf-8")
    if old in text:
        ipynb.write_text(text.replace(old, new), encoding="utf-8")


@contextlib.contextmanager
def _locked(sweep_dir: Path):
    """Hold an exclusive lock on the sweep folder (released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(sweep_dir / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another sweep is running in {sweep_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _number(text: str) -> float:
    text = text.replace("∞", "inf")
    value = float(text)
    return (
        int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sigma.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("grid", help="grid YAML file (notebook + parameters)")
    parser.add_argument("--workers", type=int, default=None, help="runs at once (default: cores)")
    parser.add_argument("--scheduler", default=None, help="Dask scheduler address: run there")
    parser.add_argument("--out", default="reports/sweeps", help="parent of the sweep folder")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        result = run_sweep(
            args.grid,
            args.out,
            workers=args.workers,
            scheduler=args.scheduler or None,
            timeout=args.timeout,
            progress=not args.quiet,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done, skipped = result.by_status("done"), result.by_status("skipped")
    print(
        f"{len(done)} done, {len(skipped)} skipped (finished before), {len(result.failed)} failed "
        f"→ {result.sweep_dir}",
        file=sys.stderr,
    )
    if result.failed:
        print(
            f"failed runs (details in {result.sweep_dir / FAILED_DIR}/<run>/{ERROR_FILE}):",
            file=sys.stderr,
        )
        for r in result.failed:
            print(f"  {r.name}: {r.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
