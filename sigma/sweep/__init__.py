"""sigma.sweep: notebooks run over parameter grids with papermill, recorded, and reported.

Modules, each depending only on those above it:

* :mod:`~sigma.sweep.records` — ``metrics.json``: what a notebook saves
  (:func:`~sigma.sweep.records.save_metrics`), the record the runner completes (parameters,
  notebook hash, git state, versions, wall time), atomic JSON writes;
* :mod:`~sigma.sweep.notebook` — one notebook: read, hash, execute (papermill, quiet kernel),
  render to offline HTML;
* :mod:`~sigma.sweep.grid` — a YAML grid checked against the notebook's parameters cell;
* :mod:`~sigma.sweep.table` — a sweep folder read back as pandas tables;
* :mod:`~sigma.sweep.plots` — plots of those tables (σ, coverage, evidence against β, error
  against epochs);
* :mod:`~sigma.sweep.run` — one run: execute, record, move into place (or into ``failed/``);
* :mod:`~sigma.sweep.engine` — a whole grid on a local process pool or a Dask cluster;
  resumable, locked, clean on Ctrl-C;
* :mod:`~sigma.sweep.report` — notebooks at their defaults, HTML, the ``index.html``;
* :mod:`~sigma.sweep.cli` — ``python -m sigma.sweep grid|run|render|index`` and exit codes.

Nothing here imports TensorFlow or the numerical core (``import sigma.sweep`` is fast); the
core never imports this package. Submodules load on first use (``sigma.sweep.records``).
"""

import importlib as _importlib

_SUBMODULES = ("records", "notebook", "grid", "table", "plots", "run", "engine", "report", "cli")
__all__ = list(_SUBMODULES)


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"sigma.sweep.{name}")
    raise AttributeError(f"module 'sigma.sweep' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
