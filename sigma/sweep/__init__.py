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
import importlib.util as _util
import sys as _sys

_SUBMODULES = ("records", "notebook", "grid", "table", "plots", "run", "engine", "report", "cli")
__all__ = [*_SUBMODULES, "MissingExtra", "require_notebooks_extra", "skip_iri_grammars"]
# What the machinery imports beyond sigma's own dependencies: the "notebooks" extra
# (import name -> distribution). records.py needs none of them (notebooks save metrics with it).
NOTEBOOKS_EXTRA = {
    "papermill": "papermill",
    "nbformat": "nbformat",
    "nbconvert": "nbconvert",
    "jupytext": "jupytext",
    "ipykernel": "ipykernel",
    "pandas": "pandas",
    "filelock": "filelock",
    "yaml": "pyyaml",
    "matplotlib": "matplotlib",
}


class MissingExtra(ImportError):
    """A package of the ``notebooks`` extra is not installed; the message says what to install."""


def require_notebooks_extra() -> None:
    """Raise :class:`MissingExtra` naming every missing package of the ``notebooks`` extra and
    the command that installs them (instead of a ModuleNotFoundError deep inside a sweep)."""
    missing = [dist for mod, dist in NOTEBOOKS_EXTRA.items() if _util.find_spec(mod) is None]
    if missing:
        raise MissingExtra(
            "sigma.sweep (papermill sweeps and HTML reports) needs the 'notebooks' extra; "
            f"missing: {', '.join(missing)}. Install it with: pip install 'keras-sigma[notebooks]' "
            "(or `make env` in a clone of the repository)"
        )


def skip_iri_grammars() -> bool:
    """In a process of the sweep's own (its command line, a worker), before nbformat loads:
    keep jsonschema from importing ``rfc3987_syntax``. jsonschema ≥ 4.25 imports it, when
    installed (jupyter-events asks for it), for its "iri" format checker, and it compiles 39
    grammars on import: about 3 s of CPU in every process that reads a notebook, although
    nbformat never checks formats. Marked absent, jsonschema leaves that one checker out
    (as it does when the package is not installed). Returns whether it was marked; a process
    that has already loaded jsonschema is left as it is."""
    if "jsonschema" in _sys.modules or "rfc3987_syntax" in _sys.modules:
        return False
    _sys.modules["rfc3987_syntax"] = None  # `import rfc3987_syntax` raises ImportError
    return True


def __getattr__(name):
    if name in _SUBMODULES:
        if name not in ("records", "cli"):
            require_notebooks_extra()
        return _importlib.import_module(f"sigma.sweep.{name}")
    raise AttributeError(f"module 'sigma.sweep' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
