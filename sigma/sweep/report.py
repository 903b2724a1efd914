"""Reports: notebooks executed at their defaults, HTML for every executed notebook, an index.

* :func:`run_notebooks` — ``notebooks/<name>.py`` → ``<out>/<name>.ipynb``, ``<name>.html``
  (with code) and ``<name>.nocode.html`` (outputs and text only), each replaced atomically.
* :func:`render_missing` — HTML for executed notebooks that lack it (sweep runs included).
* :func:`write_index` — ``<out>/index.html`` linking every HTML page under ``<out>``, with a
  table per sweep (the parameters that vary, the metrics, the notebook version of each run).

A file that cannot be read (a truncated, empty, binary or non-object ``metrics.json``, a
corrupted ``error.json`` or ``.ipynb``) does not stop the others: it is skipped, named with
what is wrong in ``skipped`` and, in the index, in a visible "Skipped files" section.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sigma.sweep.grid import check_parameters
from sigma.sweep.notebook import (
    describe_error,
    execute_notebook,
    is_failed,
    read_notebook,
    render_html,
)
from sigma.sweep.records import FAILED_DIR, TMP_DIR, git_state, write_text_atomic
from sigma.sweep.table import load_failures, load_sweep

NOCODE_SUFFIX = ".nocode.html"
INDEX_FILE = "index.html"
SWEEPS_DIR = "sweeps"


@dataclass
class Written:
    """What :func:`render_missing` or :func:`write_index` wrote, and the files it skipped."""

    paths: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, what is wrong)

    @property
    def path(self) -> Path:
        """The one file written (the index)."""
        return self.paths[0]


def run_notebooks(
    notebooks,
    out="reports",
    parameters: dict | None = None,
    *,
    timeout: float | None = None,
    progress: bool = False,
) -> list[dict]:
    """Execute each notebook at its defaults (updated by ``parameters``) into ``out``.

    A notebook that raises is still written and rendered (the error is in it) and the next one
    runs. ``parameters`` are checked against each notebook's parameters cell first
    (:func:`sigma.sweep.grid.check_parameters`: ValueError naming the bad one). progress shows
    papermill's bar over each notebook's cells. Returns one dict per notebook: name, ok,
    seconds, error, html.
    """
    out = Path(out)
    checked = []
    for path in map(Path, notebooks):
        nb = read_notebook(path)
        checked.append((path, nb, check_parameters(nb, parameters or {}, where=str(path))))
    tmp_root = out / TMP_DIR
    results = []
    for path, nb, params in checked:
        name = path.stem
        tmp = tmp_root / f"{name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        files = {s: tmp / f"{name}{s}" for s in (".ipynb", ".html", NOCODE_SUFFIX)}
        print(f"▶ {path} → {out / name}.html", file=sys.stderr, flush=True)
        start, error = time.time(), None
        try:
            try:
                execute_notebook(nb, files[".ipynb"], params, timeout=timeout, progress=progress)
            except Exception as exc:
                error = describe_error(exc)
                if not files[".ipynb"].exists():
                    raise
            render_html(files[".ipynb"], files[".html"], code=True)
            render_html(files[".ipynb"], files[NOCODE_SUFFIX], code=False)
            for suffix, file in files.items():
                os.replace(file, out / f"{name}{suffix}")
        except Exception as exc:  # papermill could not even start: nothing to render
            error = describe_error(exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        seconds = round(time.time() - start, 1)
        status = "ok" if error is None else f"FAILED: {error}"
        print(f"  {name}: {status} ({seconds} s)", file=sys.stderr, flush=True)
        results.append(
            {"name": name, "ok": error is None, "seconds": seconds, "error": error,
             "html": out / f"{name}.html"}
        )  # fmt: skip
    _remove_if_empty(tmp_root)
    return results


def render_missing(out="reports") -> Written:
    """Render HTML for every executed notebook under ``out`` whose HTML is missing or older.

    Top-level notebooks get both ``<name>.html`` and ``<name>.nocode.html``; notebooks in
    sub-folders (sweep runs) get ``<name>.html``. Hidden and scratch folders are skipped, and
    so is (named in ``skipped``) a notebook that cannot be read.
    """
    out = Path(out)
    done = Written()
    for ipynb in sorted(_visible_files(out, "*.ipynb")):
        targets = [(ipynb.with_suffix(".html"), True)]
        if ipynb.parent == out:
            targets.append((ipynb.with_name(ipynb.stem + NOCODE_SUFFIX), False))
        for html_path, code in targets:
            if not html_path.exists() or html_path.stat().st_mtime < ipynb.stat().st_mtime:
                try:
                    done.paths.append(render_html(ipynb, html_path, code=code))
                except Exception as exc:  # unreadable, or nbconvert fails on it: go on
                    done.skipped.append((ipynb, _reason(exc, ipynb)))
                    break
    return done


def write_index(out="reports") -> Written:
    """Write ``out/index.html``: links to every HTML page under ``out``, offline.

    Sections: the notebooks (with code / without code / .ipynb, and whether they raised), one
    table per sweep (``out/sweeps/<name>/``: a row per finished run with the parameters that
    vary, the metrics and the notebook version — the first 12 hex digits of its source hash —
    then the failed runs with their error), any other HTML page, and the files skipped.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    linked: set[Path] = set()
    parts, skipped = [], []

    def link(path: Path, text: str) -> str:
        linked.add(path.resolve())
        rel = quote(path.relative_to(out).as_posix(), safe="/=+,")
        return f'<a href="{rel}">{html.escape(text)}</a>'

    rows = []
    for page in sorted(out.glob("*.html")):
        if page.name == INDEX_FILE or page.name.endswith(NOCODE_SUFFIX):
            continue
        nocode, ipynb = page.with_name(page.stem + NOCODE_SUFFIX), page.with_suffix(".ipynb")
        cells = [link(page, page.stem)]
        cells.append(link(nocode, "without code") if nocode.exists() else "")
        cells.append(link(ipynb, ".ipynb") if ipynb.exists() else "")
        status = "ok"
        if ipynb.exists():
            try:
                status = '<span class="bad">raised an error</span>' if is_failed(ipynb) else "ok"
            except ValueError as exc:
                skipped.append((ipynb, _reason(exc, ipynb)))
                status = '<span class="bad">unreadable .ipynb (see below)</span>'
        rows.append([*cells, status])
    if rows:
        parts.append("<h2>Notebooks</h2>")
        parts.append(_table(["report", "", "", "status"], rows))

    sweeps_root = out / SWEEPS_DIR
    sweep_dirs = sorted(d for d in sweeps_root.glob("*") if d.is_dir() and d.name[0] not in "._")
    if sweep_dirs:
        parts.append("<h2>Sweeps</h2>")
    for sweep in sweep_dirs:
        parts.append(_sweep_section(sweep, link, skipped))

    others = [
        p
        for p in sorted(_visible_files(out, "*.html"))
        if p.resolve() not in linked and p.name != INDEX_FILE and not p.name.endswith(NOCODE_SUFFIX)
    ]
    if others:
        parts.append("<h2>Other pages</h2>")
        parts.append(_table(["page"], [[link(p, p.relative_to(out).as_posix())] for p in others]))
    if skipped:
        parts.append('<h2 class="bad" id="skipped">Skipped files</h2>')
        parts.append("<p>These files could not be read and were left out above:</p>")
        parts.append(
            _table(
                ["file", "what is wrong"],
                [[html.escape(_rel(p, out)), html.escape(r)] for p, r in skipped],
            )
        )
    if not parts:
        parts.append("<p>No reports yet: <code>make run</code>, <code>make sweep</code>.</p>")

    commit, dirty = git_state()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    source = f"commit {commit[:10]}{' (uncommitted changes)' if dirty else ''}" if commit else ""
    page = _INDEX_PAGE.format(stamp=stamp, source=html.escape(source), body="\n".join(parts))
    return Written([write_text_atomic(out / INDEX_FILE, page)], skipped)


def _sweep_section(sweep: Path, link, skipped: list) -> str:
    table, failures = load_sweep(sweep), load_failures(sweep)
    unreadable = table.attrs["skipped"] + failures.attrs["skipped"]
    skipped += unreadable
    parts = [
        f"<h3>{html.escape(sweep.name)}</h3><p>{len(table)} finished run(s), "
        f"{len(failures)} failed, in <code>{html.escape(str(sweep))}</code></p>"
    ]
    if unreadable:
        parts.append(
            f'<p class="bad">{len(unreadable)} record(s) of this sweep could not be read and '
            'are left out: see <a href="#skipped">Skipped files</a>.</p>'
        )
    if len(table):
        params = table.attrs["parameters"]
        varying = [c for c in params if table[c].astype(str).nunique() > 1]
        fixed = [f"{c}={_fmt(table[c].iloc[0])}" for c in params if c not in varying]
        if fixed:
            parts.append(f'<p class="meta">Same in every run: {", ".join(fixed)}</p>')
        versions = table["notebook_sha256"].dropna().unique()
        if len(versions) > 1:
            parts.append(
                f'<p class="bad">These runs used {len(versions)} versions of the notebook (column '
                "“notebook”): rerun the sweep to bring them all to the current one.</p>"
            )
        groups = _metric_groups(table.attrs["metrics"])
        body = []
        for _, row in table.iterrows():
            page = _first_html(sweep / row["run"])
            first = link(page, row["run"]) if page else html.escape(row["run"])
            sha = row["notebook_sha256"]
            version = f"<code>{html.escape(sha[:12])}</code>" if isinstance(sha, str) else "?"
            metrics = [" · ".join(_fmt(row[c]) for c in cols) for cols in groups.values()]
            body.append([first, *(_fmt(row[c]) for c in varying), version,
                         _fmt(row["wall_time_s"]), *metrics])  # fmt: skip
        header = ["run", *varying, "notebook", "wall_time_s", *groups]
        parts.append(_table(header, body))
    if len(failures):
        body = []
        for _, row in failures.iterrows():
            page = _first_html(sweep / FAILED_DIR / row["run"])
            first = link(page, row["run"]) if page else html.escape(row["run"])
            body.append([first, f'<span class="bad">{html.escape(str(row["error"]))}</span>'])
        parts.append("<h4>Failed runs</h4>")
        parts.append(_table(["run", "error"], body))
    return "\n".join(parts)


_INDEX_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sigma reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
.scroll {{ overflow-x: auto; margin: 0.5em 0 1.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
th {{ background: #f4f4f4; vertical-align: bottom; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
.bad {{ color: #b00; }} .meta {{ color: #666; font-size: 0.9em; }}
</style></head>
<body><h1>sigma reports</h1>
<p class="meta">Generated {stamp} {source}. Every page is self-contained and works offline.</p>
{body}
</body></html>
"""


def _metric_groups(metrics: list[str]) -> dict[str, list[str]]:
    """Columns by metric: a list recorded per output (``sigma.0``, ``sigma.1``...) is one."""
    groups: dict[str, list[str]] = {}
    for name in metrics:
        base, _, index = name.rpartition(".")
        groups.setdefault(base if base and index.isdigit() else name, []).append(name)
    return groups


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_breakable(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def _breakable(name: str) -> str:
    """A column name that may break after "_" and "." (long metric names)."""
    return _BREAK.sub(r"\1<wbr>", html.escape(name))


_BREAK = re.compile(r"([_.])")
_NUMBER = r"-?[\d.]+(e[-+]\d+)?"
_NUMBERS = re.compile(rf"{_NUMBER}( · {_NUMBER})*")  # a number, or one per output


def _td(cell: str) -> str:
    numeric = _NUMBERS.fullmatch(cell or "") is not None
    return f'<td class="num">{cell}</td>' if numeric else f"<td>{cell}</td>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return html.escape(str(value))


def _reason(exc: Exception, path: Path) -> str:
    """The message of an error about ``path``, without the path it starts with."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _first_html(folder: Path) -> Path | None:
    pages = sorted(folder.glob("*.html")) if folder.is_dir() else []
    return pages[0] if pages else None


def _visible_files(root: Path, pattern: str):
    for p in root.rglob(pattern):
        if not any(part.startswith(".") for part in p.relative_to(root).parts):
            yield p


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
