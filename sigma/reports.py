"""Executed notebooks and their HTML: text → ipynb → papermill → nbconvert, and an index page.

``python -m sigma.reports run notebooks/01_original.py ... --out reports`` executes each jupytext
percent script at its defaults (or with ``-p name=value``) into ``reports/<name>.ipynb`` and
renders ``reports/<name>.html`` (with code) and ``reports/<name>.nocode.html`` (outputs and
text only). ``render`` renders HTML for executed notebooks that lack it (sweep runs included),
``index`` writes ``reports/index.html`` linking every HTML page under ``reports/``.

The HTML is readable offline: images are embedded and the template loads no script from a CDN
(MathJax, require.js and mermaid are left out, so LaTeX shows as its source).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import os
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

DEFAULT_KERNEL = "python3"
TMP_DIR = ".tmp"  # scratch folder inside an output folder; never read as a result
NOCODE_SUFFIX = ".nocode.html"
INDEX_FILE = "index.html"
# The lab template without the <script src=https://cdn...> tags (require.js, MathJax, mermaid).
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_notebook(path):
    """A notebook (``nbformat.NotebookNode``) from a jupytext ``.py`` script or an ``.ipynb``.

    Cell tags (the papermill ``parameters`` tag) are kept; a notebook without a kernelspec
    gets the ``python3`` kernel.
    """
    import jupytext
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    nb = nbformat.read(path, as_version=4) if path.suffix == ".ipynb" else jupytext.read(path)
    nb.metadata.setdefault(
        "kernelspec", {"name": DEFAULT_KERNEL, "display_name": "Python 3", "language": "python"}
    )
    return nb


def execute_notebook(
    nb, output_path, parameters: dict | None = None, *, timeout: float | None = None
):
    """Run ``nb`` in a fresh kernel with papermill, saving it (cell by cell) to ``output_path``.

    parameters : values injected after the ``parameters`` cell.
    timeout : seconds allowed per cell (``None``: no limit).
    Returns the executed NotebookNode; raises papermill's PapermillExecutionError when a cell
    raises (the notebook, with the error, is saved all the same).
    """
    import papermill

    return papermill.execute_notebook(
        nb,
        os.fspath(output_path),
        parameters=parameters or {},
        progress_bar=False,
        execution_timeout=timeout,
        # Quiet the kernel's "running over TCP without encryption" warning on our stderr.
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
    )


def render_html(notebook, html_path, *, code: bool = True) -> Path:
    """Render an executed notebook (path or NotebookNode) to a self-contained HTML file.

    code=False hides the code cells' input (nbconvert's ``--no-input``). Written atomically.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    if not isinstance(notebook, nbformat.NotebookNode):
        notebook = nbformat.read(notebook, as_version=4)
    exporter = HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"sigma_offline.html.j2": _OFFLINE_TEMPLATE})],
        template_file="sigma_offline.html.j2",
        exclude_input=not code,
        exclude_input_prompt=not code,
        exclude_output_prompt=not code,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(notebook)
    return _write_text_atomic(html_path, body)


def is_failed(notebook) -> bool:
    """Whether papermill marked this executed notebook (path or node) as raising."""
    import nbformat

    if not isinstance(notebook, nbformat.NotebookNode):
        notebook = nbformat.read(notebook, as_version=4)
    return bool(notebook.metadata.get("papermill", {}).get("exception"))


def describe_error(exc: BaseException) -> str:
    """One line for an exception; for a notebook cell: ``Name: message (cell [n])``."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename is not None:
        return f"{ename}: {evalue} (cell [{getattr(exc, 'exec_count', '?')}])"
    return f"{type(exc).__name__}: {exc}"


def error_traceback(exc: BaseException) -> str:
    """The notebook's traceback (ANSI colours removed) or Python's."""
    import traceback

    tb = getattr(exc, "traceback", None)
    if isinstance(tb, list):
        return _ANSI.sub("", "\n".join(tb))
    return "".join(traceback.format_exception(exc))


def run(
    notebooks, out="reports", parameters: dict | None = None, *, timeout: float | None = None
) -> list[dict]:
    """Execute each notebook at its defaults (updated by ``parameters``) into ``out``.

    For ``notebooks/<name>.py`` this writes ``out/<name>.ipynb``, ``out/<name>.html`` and
    ``out/<name>.nocode.html``, each replaced atomically. A notebook that raises is still
    written and rendered (the error is in it) and the next one runs. ``parameters`` are
    checked against each notebook's parameters cell (see :func:`sigma.sweep.check_parameters`).
    Returns one dict per notebook: name, ok, seconds, error, html.
    """
    from sigma.sweep import check_parameters

    out = Path(out)
    tmp_root = out / TMP_DIR
    results = []
    for path in map(Path, notebooks):
        nb = read_notebook(path)
        params = check_parameters(nb, parameters or {}, where=str(path))
        name = path.stem
        tmp = tmp_root / f"{name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        files = {s: tmp / f"{name}{s}" for s in (".ipynb", ".html", NOCODE_SUFFIX)}
        print(f"▶ {path} → {out / name}.html", file=sys.stderr, flush=True)
        start, error = time.time(), None
        try:
            try:
                execute_notebook(nb, files[".ipynb"], params, timeout=timeout)
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
            {
                "name": name,
                "ok": error is None,
                "seconds": seconds,
                "error": error,
                "html": out / f"{name}.html",
            }
        )
    _remove_if_empty(tmp_root)
    return results


def render_missing(out="reports") -> list[Path]:
    """Render HTML for every executed notebook under ``out`` whose HTML is missing or older.

    Top-level notebooks get both ``<name>.html`` and ``<name>.nocode.html``; notebooks in
    sub-folders (sweep runs) get ``<name>.html``. Hidden and scratch folders are skipped.
    Returns the HTML files written.
    """
    out = Path(out)
    written = []
    for ipynb in sorted(_visible_files(out, "*.ipynb")):
        targets = [(ipynb.with_suffix(".html"), True)]
        if ipynb.parent == out:
            targets.append((ipynb.with_name(ipynb.stem + NOCODE_SUFFIX), False))
        for html_path, code in targets:
            if not html_path.exists() or html_path.stat().st_mtime < ipynb.stat().st_mtime:
                written.append(render_html(ipynb, html_path, code=code))
    return written


def write_index(out="reports") -> Path:
    """Write ``out/index.html``: links to every HTML page under ``out``, offline.

    Sections: the notebooks (with code / without code / .ipynb, and whether they raised), one
    table per sweep (``out/sweeps/<name>/``: a row per finished run with the parameters that
    vary and the metrics, then the failed runs with their error), and any other HTML page.
    """
    from sigma.runs import FAILED_DIR, git_state, load_failures, load_sweep

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    linked: set[Path] = set()
    parts = []

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
        failed = ipynb.exists() and is_failed(ipynb)
        cells.append('<span class="bad">raised an error</span>' if failed else "ok")
        rows.append(cells)
    if rows:
        parts.append("<h2>Notebooks</h2>")
        parts.append(_table(["report", "", "", "status"], rows))

    sweeps_root = out / "sweeps"
    sweep_dirs = sorted(d for d in sweeps_root.glob("*") if d.is_dir() and d.name[0] not in "._")
    if sweep_dirs:
        parts.append("<h2>Sweeps</h2>")
    for sweep in sweep_dirs:
        table, failures = load_sweep(sweep), load_failures(sweep)
        parts.append(
            f"<h3>{html.escape(sweep.name)}</h3><p>{len(table)} finished run(s), "
            f"{len(failures)} failed, in <code>{html.escape(str(sweep))}</code></p>"
        )
        if len(table):
            params = table.attrs["parameters"]
            varying = [c for c in params if table[c].astype(str).nunique() > 1]
            fixed = [f"{c}={_fmt(table[c].iloc[0])}" for c in params if c not in varying]
            if fixed:
                parts.append(f'<p class="meta">Same in every run: {", ".join(fixed)}</p>')
            columns = varying + table.attrs["metrics"] + ["wall_time_s"]
            body = []
            for _, row in table.iterrows():
                page = _first_html(sweep / row["run"])
                first = link(page, row["run"]) if page else html.escape(row["run"])
                body.append([first, *(_fmt(row[c]) for c in columns)])
            parts.append(_table(["run", *columns], body))
        if len(failures):
            body = []
            for _, row in failures.iterrows():
                page = _first_html(sweep / FAILED_DIR / row["run"])
                first = link(page, row["run"]) if page else html.escape(row["run"])
                body.append([first, f'<span class="bad">{html.escape(str(row["error"]))}</span>'])
            parts.append("<h4>Failed runs</h4>")
            parts.append(_table(["run", "error"], body))

    others = [
        p
        for p in sorted(_visible_files(out, "*.html"))
        if p.resolve() not in linked and p.name != INDEX_FILE and not p.name.endswith(NOCODE_SUFFIX)
    ]
    if others:
        parts.append("<h2>Other pages</h2>")
        parts.append(_table(["page"], [[link(p, p.relative_to(out).as_posix())] for p in others]))
    if not parts:
        parts.append("<p>No reports yet: <code>make run</code>, <code>make sweep</code>.</p>")

    commit, dirty = git_state()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    source = f"commit {commit[:10]}{' (uncommitted changes)' if dirty else ''}" if commit else ""
    page = _INDEX_PAGE.format(stamp=stamp, source=html.escape(source), body="\n".join(parts))
    return _write_text_atomic(out / INDEX_FILE, page)


_INDEX_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sigma reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: left; }}
th {{ background: #f4f4f4; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.bad {{ color: #b00; }} .meta {{ color: #666; font-size: 0.9em; }}
</style></head>
<body><h1>sigma reports</h1>
<p class="meta">Generated {stamp} {source}. Every page is self-contained and works offline.</p>
{body}
</body></html>
"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(cell: str) -> str:
    numeric = re.fullmatch(r"-?[\d.]+(e[-+]\d+)?", cell or "") is not None
    return f'<td class="num">{cell}</td>' if numeric else f"<td>{cell}</td>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return html.escape(str(value))


def _first_html(folder: Path) -> Path | None:
    pages = sorted(folder.glob("*.html")) if folder.is_dir() else []
    return pages[0] if pages else None


def _visible_files(root: Path, pattern: str):
    for p in root.rglob(pattern):
        if not any(part.startswith(".") for part in p.relative_to(root).parts):
            yield p


def _write_text_atomic(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _parse_assignment(text: str) -> tuple[str, object]:
    import yaml

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"-p expects name=value, got {text!r}")
    return name.strip(), yaml.safe_load(value) if value.strip() else ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sigma.reports", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="execute notebooks at their defaults and render HTML")
    p_run.add_argument("notebooks", nargs="+", help="jupytext .py (or .ipynb) notebooks")
    p_run.add_argument(
        "-p",
        "--parameter",
        action="append",
        type=_parse_assignment,
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter (YAML value)",
    )
    p_run.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    p_render = sub.add_parser("render", help="render HTML for executed notebooks lacking it")
    p_index = sub.add_parser("index", help="write OUT/index.html linking every HTML page")
    for p in (p_run, p_render, p_index):
        p.add_argument("--out", default="reports", help="reports folder (default: reports)")
    args = parser.parse_args(argv)

    if args.command == "run":
        try:
            results = run(args.notebooks, args.out, dict(args.parameter), timeout=args.timeout)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        failed = [r for r in results if not r["ok"]]
        for r in failed:
            print(f"FAILED {r['name']}: {r['error']}", file=sys.stderr)
        return 1 if failed else 0
    if args.command == "render":
        for path in render_missing(args.out):
            print(f"rendered {path}", file=sys.stderr)
        return 0
    print(f"wrote {write_index(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
