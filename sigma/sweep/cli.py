"""The command line: ``python -m sigma.sweep grid|run|render|index`` (see :data:`EPILOG`).

Every command exits with one of the codes below, so a script or ``make`` can tell a failed
run from a bad grid from an unwritable folder from Ctrl-C. Errors are one line naming the
argument or file and what was expected, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

OK = 0
RUNS_FAILED = 1  # some runs or notebooks raised, or some files could not be read (skipped)
BAD_INPUT = 2  # a bad grid, parameter, notebook or argument: nothing ran
CANNOT_RUN = 3  # the output folder cannot be written, another sweep holds it, no cluster
INTERRUPTED = 130  # Ctrl-C: finished runs are kept, unfinished ones discarded

EPILOG = f"""\
commands:
  grid GRID.yaml   run every point of a grid not finished yet, into OUT/<name>/<run>/
                   (resumable: Ctrl-C or a kill keeps finished runs, a rerun does the rest;
                   a run re-runs when the notebook's source changed)
  run NB...        execute notebooks at their defaults (-p name=value to change one) into
                   OUT/<name>.ipynb, .html and .nocode.html, with a progress bar over cells
  render           render HTML for executed notebooks under OUT that lack it
  index            write OUT/index.html linking every report and a table per sweep

exit codes:
  {OK}    everything ran (or was finished before)
  {RUNS_FAILED}    some runs or notebooks raised (recorded; see failed/<run>/error.json), or
       some files could not be read and were skipped (named on stderr and in the index)
  {BAD_INPUT}    bad input: grid file, parameter value, notebook or option; nothing ran
  {CANNOT_RUN}    could not run: output folder not writable, another sweep holds its lock,
       Dask scheduler unreachable
  {INTERRUPTED}  interrupted (Ctrl-C): finished runs kept, unfinished ones discarded; rerun to
       resume
"""


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    from sigma.sweep import MissingExtra

    try:
        args = _parser().parse_args(argv)  # -p name=value reads the value as YAML
        from sigma.sweep.engine import CannotRun, SweepInterrupted
    except MissingExtra as exc:
        _error(str(exc))
        return CANNOT_RUN
    try:
        return args.handler(args)
    except SweepInterrupted as exc:
        _error(str(exc), prefix="")
        return INTERRUPTED
    except KeyboardInterrupt:
        _error("interrupted; nothing half-written was kept: run the same command again", "")
        return INTERRUPTED
    except CannotRun as exc:
        _error(str(exc))
        return CANNOT_RUN
    except ValueError as exc:
        _error(str(exc))
        return BAD_INPUT
    except OSError as exc:  # e.g. the output folder turned read-only
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"could not write{where}: {exc.strerror or exc}")
        return CANNOT_RUN


def _grid(args) -> int:
    from sigma.sweep.engine import run_sweep
    from sigma.sweep.records import ERROR_FILE, FAILED_DIR

    result = run_sweep(
        args.grid,
        args.out,
        workers=args.workers,
        scheduler=args.scheduler or None,
        timeout=args.timeout,
        progress=not args.quiet,
    )
    done, skipped = result.by_status("done"), result.by_status("skipped")
    print(
        f"{len(done)} done, {len(skipped)} skipped (finished before), {len(result.failed)} failed "
        f"→ {result.sweep_dir}",
        file=sys.stderr,
    )
    if not result.failed:
        return OK
    print(f"failed runs (details in {result.sweep_dir / FAILED_DIR}/<run>/{ERROR_FILE}):",
          file=sys.stderr)  # fmt: skip
    for r in result.failed:
        print(f"  {r.name}: {r.error}", file=sys.stderr)
    return RUNS_FAILED


def _run(args) -> int:
    from sigma.sweep.engine import prepare_output
    from sigma.sweep.grid import check_parameters
    from sigma.sweep.notebook import read_notebook
    from sigma.sweep.report import run_notebooks

    for path in args.notebooks:  # bad input before anything is created
        if not Path(path).is_file():
            raise ValueError(f"notebook {path} does not exist")
        check_parameters(read_notebook(path), dict(args.parameter), where=str(path))
    results = run_notebooks(
        args.notebooks,
        prepare_output(args.out),
        dict(args.parameter),
        timeout=args.timeout,
        progress=not args.quiet,
    )
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(f"FAILED {r['name']}: {r['error']}", file=sys.stderr)
    return RUNS_FAILED if failed else OK


def _render(args) -> int:
    from sigma.sweep.report import render_missing

    written = render_missing(args.out)
    for path in written.paths:
        print(f"rendered {path}", file=sys.stderr)
    return _skipped(written.skipped)


def _index(args) -> int:
    from sigma.sweep.report import write_index

    written = write_index(args.out)
    print(f"wrote {written.path}", file=sys.stderr)
    return _skipped(written.skipped)


def _skipped(skipped) -> int:
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return RUNS_FAILED if skipped else OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sigma.sweep",
        description="Parameter sweeps of notebooks (papermill) and their HTML reports.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{grid,run,render,index}")
    p = sub.add_parser("grid", help="run the points of a grid YAML file (resumable)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("grid", help="grid YAML file (notebook + parameters)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="runs at once on this machine (default: the number of cores)")  # fmt: skip
    p.add_argument("--scheduler", default=None, help="Dask scheduler address: run there")
    p.add_argument("--out", default="reports/sweeps", help="parent of the sweep folder")
    _common(p)
    p.set_defaults(handler=_grid)

    p = sub.add_parser("run", help="execute notebooks at their defaults and render HTML",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("notebooks", nargs="+", help="jupytext .py (or .ipynb) notebooks")
    p.add_argument("-p", "--parameter", action="append", type=_assignment, default=[],
                   metavar="NAME=VALUE", help="change a parameter (a YAML value)")  # fmt: skip
    p.add_argument("--out", default="reports", help="reports folder (default: reports)")
    _common(p)
    p.set_defaults(handler=_run)

    for name, handler, text in (
        ("render", _render, "render HTML for executed notebooks lacking it"),
        ("index", _index, "write OUT/index.html linking every HTML page"),
    ):
        p = sub.add_parser(name, help=text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.add_argument("--out", default="reports", help="reports folder (default: reports)")
        p.set_defaults(handler=handler)
    return parser


def _common(p) -> None:
    p.add_argument("--timeout", type=_seconds, default=None,
                   help="seconds allowed per notebook cell, > 0 (default: no limit)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return value


def _assignment(text: str) -> tuple[str, object]:
    from sigma.sweep import require_notebooks_extra

    require_notebooks_extra()  # pyyaml: a MissingExtra, which argparse lets through to main
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML") from None


def _error(message: str, prefix: str = "error: ") -> None:
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
