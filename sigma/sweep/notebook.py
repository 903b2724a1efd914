"""One notebook: read it (jupytext or .ipynb), hash its source, execute it (papermill), render it.

* :func:`read_notebook` — a jupytext percent script or an ``.ipynb`` as a NotebookNode.
* :func:`notebook_sha256` — the hash of what runs: cell types, sources and tags (not outputs,
  not the file format), the identity of a notebook version in a sweep.
* :func:`execute_notebook` — papermill in a fresh kernel that does not copy what native code
  writes to the process's stderr into the notebook (:data:`KERNEL_ARGUMENTS`), so executed
  notebooks and their HTML carry no oneDNN / absl / CUDA lines, on any CPU; the kernel's
  stderr reaches the terminal without TensorFlow's start-up lines (:func:`is_startup_noise`).
* :func:`render_html` — a self-contained HTML page, readable offline: images are embedded and
  the template loads no script from a CDN (MathJax, require.js and mermaid are left out, so
  LaTeX shows as its source).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import threading
from pathlib import Path

from sigma.sweep import require_notebooks_extra
from sigma.sweep.records import write_text_atomic

require_notebooks_extra()  # a clear message, not a ModuleNotFoundError deep inside

DEFAULT_KERNEL = "python3"
# Set in the kernel's environment unless already set: TensorFlow's C++ logging is off below
# warnings and errors once it is initialised.
KERNEL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
# The kernel's options. TensorFlow writes some lines to file descriptor 2 while its libraries
# load, before its logging reads TF_CPP_MIN_LOG_LEVEL ("All log messages before
# absl::InitializeLog() is called ...", "oneDNN custom operations are on", CPU-feature lines;
# which ones depends on the CPU). ipykernel copies everything native code writes there into the
# cell's output unless capture_fd_output is off: off, such lines go to the kernel process's own
# stderr (the terminal running the sweep) and Python's sys.stderr (warnings, progress bars)
# still reaches the notebook.
# The kernel logs only what is critical to that stderr: jupyter_client interrupts every kernel
# just before shutting it down, and a kernel still finishing its last message then logs
# "ERROR | KeyboardInterrupt caught in kernel." to the sweep's terminal after a run that went
# well. A cell's own errors are in the notebook, not in this log; what is lost is the rare
# internal error of the kernel itself (a connection file it cannot read, say), after which the
# run is still recorded as failed with papermill's "kernel died" error.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL", "--IPKernelApp.capture_fd_output=False")
# What TensorFlow writes to file descriptor 2 while its libraries load, before
# TF_CPP_MIN_LOG_LEVEL applies (no setting of a kernel's environment silences it, short of
# TF_ENABLE_ONEDNN_OPTS=0, which changes the computation): absl's notice, the oneDNN notice
# (twice, one per library), the CPU-feature notice and its second line. The kernel's stderr
# reaches the terminal through a pipe that drops these lines and passes everything else.
STARTUP_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IW]\d{4} [\d:.]+ +\d+ (port\.cc:\d+\] oneDNN custom operations are on\."
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU)"
    r"|^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler"
)
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
    gets the ``python3`` kernel. Raises FileNotFoundError, or ValueError naming the file if it
    cannot be parsed.
    """
    import jupytext
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4) if path.suffix == ".ipynb" else jupytext.read(path)
    except Exception as exc:  # nbformat and jupytext raise many kinds
        raise ValueError(f"{path}: not a readable notebook ({type(exc).__name__}: {exc})") from exc
    nb.metadata.setdefault(
        "kernelspec", {"name": DEFAULT_KERNEL, "display_name": "Python 3", "language": "python"}
    )
    return nb


def load_executed(notebook):
    """An executed notebook from a path (or a NotebookNode, returned as is).

    Raises ValueError naming the file when it is not a readable ``.ipynb`` (empty, truncated,
    binary, invalid).
    """
    import nbformat

    if isinstance(notebook, nbformat.NotebookNode):
        return notebook
    try:
        return nbformat.read(notebook, as_version=4)
    except Exception as exc:  # NotJSONError, UnicodeDecodeError, ValidationError, KeyError...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"{notebook}: not a readable notebook ({reason})") from exc


def notebook_sha256(nb) -> str:
    """SHA-256 of the cells' types, sources and tags: changes when what runs changes."""
    cells = [
        [c.cell_type, c.source, sorted(c.get("metadata", {}).get("tags", []))] for c in nb.cells
    ]
    kernel = nb.metadata.get("kernelspec", {}).get("name", DEFAULT_KERNEL)
    text = json.dumps({"kernel": kernel, "cells": cells}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def kernel_environment(extra: dict | None = None):
    """Set :data:`KERNEL_ENV` (and ``extra``) in ``os.environ`` where unset, while kernels start.

    A kernel inherits the environment of the process that starts it; the values set here are
    removed again on exit. Values the user already set are left alone.
    """
    added = {k: v for k, v in {**KERNEL_ENV, **(extra or {})}.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` (from a kernel's stderr) is one of TensorFlow's start-up lines
    (:data:`STARTUP_NOISE`), which a kernel's environment cannot silence."""
    return bool(STARTUP_NOISE.match(line))


def _relay(pipe: int) -> None:
    """Copy the lines of ``pipe`` (a kernel's stderr) to this process's stderr, except
    TensorFlow's start-up lines, until the kernel closes it."""
    with open(pipe, "rb") as lines:
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not is_startup_noise(line):
                sys.stderr.write(line)
                sys.stderr.flush()


def _kernel_manager(relays: list):
    """jupyter_client's AsyncKernelManager whose kernels write their stderr into a pipe that
    :func:`_relay` empties on a thread (appended to ``relays``)."""
    from jupyter_client.manager import AsyncKernelManager

    class RelayedKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            if "stderr" in kw:
                return await super().start_kernel(**kw)
            read, write = os.pipe()
            relay = threading.Thread(target=_relay, args=(read,), daemon=True)
            try:
                result = await super().start_kernel(stderr=write, **kw)
            except BaseException:
                os.close(read)
                raise
            finally:
                os.close(write)  # the kernel holds its own end: end of file when it exits
            relay.start()
            relays.append(relay)
            return result

    return RelayedKernelManager


def execute_notebook(
    nb,
    output_path,
    parameters: dict | None = None,
    *,
    timeout: float | None = None,
    progress: bool = False,
    cwd=None,
):
    """Run ``nb`` in a fresh kernel with papermill, saving it (cell by cell) to ``output_path``.

    parameters : values injected after the ``parameters`` cell (papermill records them in the
        notebook's ``metadata.papermill.parameters``).
    timeout : seconds allowed per cell (``None``: no limit).
    progress : papermill's progress bar over the cells, on stderr.
    Returns the executed NotebookNode; raises papermill's PapermillExecutionError when a cell
    raises (the notebook, with the error, is saved all the same).
    """
    import papermill

    relays = []
    try:
        with kernel_environment():
            return papermill.execute_notebook(
                nb,
                os.fspath(output_path),
                parameters=parameters or {},
                progress_bar=progress,
                execution_timeout=timeout,
                cwd=None if cwd is None else os.fspath(cwd),
                extra_arguments=list(KERNEL_ARGUMENTS),
                kernel_manager_class=_kernel_manager(relays),
            )
    finally:
        for relay in relays:  # the kernel has exited: what it wrote is on the terminal
            relay.join(timeout=5.0)


def render_html(notebook, html_path, *, code: bool = True) -> Path:
    """Render an executed notebook (path or NotebookNode) to a self-contained HTML file.

    code=False hides the code cells' input (nbconvert's ``--no-input``). Written atomically.
    Raises ValueError naming the file if it is not a readable notebook.
    """
    import jinja2
    from nbconvert import HTMLExporter

    notebook = load_executed(notebook)
    exporter = HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"sigma_offline.html.j2": _OFFLINE_TEMPLATE})],
        template_file="sigma_offline.html.j2",
        exclude_input=not code,
        exclude_input_prompt=not code,
        exclude_output_prompt=not code,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(notebook)
    return write_text_atomic(html_path, body)


def is_failed(notebook) -> bool:
    """Whether papermill marked this executed notebook (path or node) as raising."""
    return bool(load_executed(notebook).metadata.get("papermill", {}).get("exception"))


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
