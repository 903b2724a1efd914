"""Run records: what a notebook saves (its metrics) and the ``metrics.json`` the runner completes.

A notebook of a sweep declares ``metrics_path: str = ""`` in its parameters cell and ends with::

    from sigma.sweep.records import save_metrics
    save_metrics(metrics_path, {"test_rmse": rmse, "sigma_ggn_mean": std.mean(axis=0), ...})

which writes ``{"metrics": {...}}`` atomically (an empty path writes nothing: interactive use).
It never re-types its parameters: the runner (:mod:`sigma.sweep.run`) completes the file with
what papermill recorded, into the full record::

    {"metrics": {...}, "parameters": {...every declared parameter: defaults, then the injected
     values...}, "notebook": "01_original.py", "notebook_sha256": "hex", "wall_time_s": float,
     "finished_at": "2026-...Z", "git_commit": "hex" | null, "git_dirty": bool | null,
     "host": "...", "versions": {"python": ..., "tensorflow": ..., "keras": ..., ...}}

Non-finite floats are stored as ``null`` (JSON has no NaN). Every file is written through a
temporary file and ``os.replace``: a reader, or a killed writer, never sees half of one.
This module imports nothing heavier than NumPy.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import uuid
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
FAILED_DIR = "failed"  # <sweep>/failed/<run>/error.json: runs that raised
TMP_DIR = ".tmp"  # scratch folder inside an output folder; never read as a result
METRICS_PARAMETER = "metrics_path"  # the parameter the runner sets; never part of a record
# Recorded with every result; a name may be provided by several distributions (tensorflow-cpu).
VERSIONED_PACKAGES = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "sigma": ("keras-sigma", "sigma"),
}


class RecordError(ValueError):
    """A record file that cannot be read: its message starts with the file's path."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def save_metrics(path, metrics: dict) -> dict:
    """Write a notebook's metrics as ``{"metrics": {...}}`` to ``path``; return them JSON-safe.

    path : the notebook's ``metrics_path`` parameter; ``""`` or ``None`` writes nothing.
    metrics : {name: scalar, list, array or nested dict}; NumPy arrays and scalars become JSON
        lists and numbers (:func:`to_jsonable`).

    Raises TypeError naming the key of a value that cannot be stored as JSON (nothing is
    written then).
    """
    if not isinstance(metrics, dict):
        raise TypeError(f"metrics must be a dict of name → value, got {type(metrics).__name__}")
    safe = to_jsonable(metrics, "metrics")
    if path:
        write_json_atomic(path, {"metrics": safe})
    return safe


def complete_record(
    path,
    *,
    parameters: dict,
    metrics: dict | None = None,
    notebook: str | None = None,
    notebook_sha256: str | None = None,
    wall_time_s: float | None = None,
) -> dict:
    """The full record of one run, written atomically to ``path`` (``metrics.json``).

    metrics : what the notebook saved; ``None`` reads it from ``path`` if the notebook wrote
        it there (raising :class:`RecordError` if that file is unreadable), else ``{}``.
    The other fields are the run's: its parameters, the notebook's name and source hash and
    the wall time; the git state, host, time and package versions are added here.
    """
    if metrics is None:
        metrics = read_record(path)["metrics"] if Path(path).is_file() else {}
    commit, dirty = git_state()
    record = {
        "metrics": to_jsonable(metrics, "metrics"),
        "parameters": to_jsonable(parameters, "parameters"),
        "notebook": notebook,
        "notebook_sha256": notebook_sha256,
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 3),
        "finished_at": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "git_dirty": dirty,
        "host": platform.node(),
        "versions": package_versions(),
    }
    write_json_atomic(path, record)
    return record


def read_record(path, *, kind: str = "metrics") -> dict:
    """Read a ``metrics.json`` (kind="metrics") or ``error.json`` (kind="error").

    Raises :class:`RecordError` naming the file and what is wrong with it: empty, not text,
    not valid JSON (truncated), not a JSON object, or (metrics) a ``metrics`` or ``parameters``
    entry that is not an object. A metrics record always has a ``metrics`` dict.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise RecordError(path, "is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError(path, "is not UTF-8 text (a binary file?)") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, f"is not valid JSON, truncated or corrupted ({exc})") from None
    if not isinstance(record, dict):
        raise RecordError(path, f"holds a JSON {type(record).__name__}, not an object")
    for key in ("metrics", "parameters") if kind == "metrics" else ("parameters",):
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise RecordError(path, f"its {key!r} entry is a {type(record[key]).__name__}")
    if kind == "metrics":
        record["metrics"] = record.get("metrics") or {}
    return record


def to_jsonable(value, name: str = "value"):
    """``value`` with NumPy arrays/scalars, tuples and paths turned into JSON types.

    Dict keys become strings; non-finite floats become ``None``. ``name`` is the key path used
    in the TypeError raised for anything else (e.g. a Keras model).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, f"{name}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return to_jsonable(arr.tolist(), name)
    raise TypeError(f"{name} is a {type(value).__name__}, which cannot be stored in metrics.json")


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and ``os.replace``.

    A reader (or a killed writer) never sees a half-written file; if encoding fails (a NaN)
    the old file stays.
    """
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    return write_text_atomic(path, text, fsync=True)


def write_text_atomic(path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` (parents created) via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def git_state(cwd=None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the repository holding ``cwd`` (default: this package's folder).

    ``(None, None)`` when git or the repository is missing; dirty means tracked files differ
    from the commit.
    """
    cwd = Path(__file__).resolve().parent if cwd is None else Path(cwd)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return commit.stdout.strip(), dirty


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that shape a result (``None`` if not installed)."""
    versions = {"python": platform.python_version()}
    for name, distributions in VERSIONED_PACKAGES.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions
