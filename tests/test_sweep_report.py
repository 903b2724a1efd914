"""sigma.sweep.report and .notebook: offline HTML, run, render, index — with the notebook
version of each run shown, unreadable files skipped and named — and kernels started quiet."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest
from sweeputil import DATA, PLAIN

from sigma.sweep import cli, notebook, records, report
from sigma.sweep.notebook import is_failed, render_html

TINY_TF = DATA / "tiny_tf.py"
TINY_STDERR = DATA / "tiny_stderr.py"
CDN = re.compile(
    r"<script[^>]*\ssrc=\"?https?:|<link[^>]*\shref=\"?https?:|import\(\s*['\"]https?:", re.I
)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [unquote(v) for k, v in attrs if k == "href"]


def hrefs(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text())
    return parser.hrefs


def executed_notebook(
    source="print('hello from the code cell')", output="hello"
) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A title\nSome text, $\\sigma^2$."),
        nbformat.v4.new_code_cell(
            source, outputs=[nbformat.v4.new_output("stream", name="stdout", text=output)]
        ),
    ]
    return nb


def write_run(folder: Path, parameters: dict, metrics: dict, sha: str) -> Path:
    records.save_metrics(folder / "metrics.json", metrics)
    records.complete_record(folder / "metrics.json", parameters=parameters, notebook_sha256=sha)
    render_html(executed_notebook(), folder / "01_x.html")
    return folder


# -- HTML ---------------------------------------------------------------------------------------


def test_html_is_offline_with_and_without_code(tmp_path):
    nb = executed_notebook()
    code = render_html(nb, tmp_path / "a.html", code=True).read_text()
    nocode = render_html(nb, tmp_path / "a.nocode.html", code=False).read_text()
    for page in (code, nocode):
        assert "hello" in page and "A title" in page
        assert not CDN.search(page), CDN.search(page)
    assert "hello from the code cell" in code and "hello from the code cell" not in nocode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "a.nocode.html"]


def test_render_missing_renders_only_what_is_missing_or_stale(tmp_path):
    nbformat.write(executed_notebook(), tmp_path / "01_x.ipynb")
    run_dir = tmp_path / "sweeps" / "01_x" / "beta=1"
    run_dir.mkdir(parents=True)
    nbformat.write(executed_notebook(), run_dir / "01_x.ipynb")
    (tmp_path / ".tmp").mkdir()  # scratch: never rendered
    nbformat.write(executed_notebook(), tmp_path / ".tmp" / "scratch.ipynb")

    written = report.render_missing(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written.paths) == [
        "01_x.html",
        "01_x.nocode.html",
        "sweeps/01_x/beta=1/01_x.html",
    ]
    assert written.skipped == []
    assert report.render_missing(tmp_path).paths == []


# -- run ----------------------------------------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.slow
def test_run_executes_at_given_parameters_and_renders(tmp_path, capsys):
    out = tmp_path / "reports"
    argv = ["run", str(PLAIN), "--out", str(out), "-p", "beta=2", "-p", "label=zz"]
    assert cli.main(argv) == cli.OK == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny_plain.html",
        "tiny_plain.ipynb",
        "tiny_plain.nocode.html",
    ]
    executed = nbformat.read(out / "tiny_plain.ipynb", as_version=4)
    assert "beta=2.0 epochs=1 label=zz flag=False" in json.dumps(executed)
    assert not is_failed(executed)
    code, nocode = (
        (out / "tiny_plain.html").read_text(),
        (out / "tiny_plain.nocode.html").read_text(),
    )
    assert "sleep_s" in code and "sleep_s" not in nocode  # the code cells are hidden
    assert "beta=2.0 epochs=1" in nocode  # outputs stay
    assert not CDN.search(code)
    assert "Executing" in capsys.readouterr().err  # papermill's progress bar over the cells

    # a notebook that raises is still written, with its error; the exit code says so
    assert cli.main(["run", str(PLAIN), "--out", str(out), "-p", "fail_at_beta=1.0"]) == 1
    assert "FAILED tiny_plain: RuntimeError: failing on purpose" in capsys.readouterr().err
    assert is_failed(out / "tiny_plain.ipynb")
    assert "failing on purpose" in (out / "tiny_plain.nocode.html").read_text()
    assert not (out / ".tmp").exists()


def test_run_checks_parameters_first(tmp_path, capsys):
    out = tmp_path / "reports"
    assert cli.main(["run", str(PLAIN), "--out", str(out), "-p", "gamma=1"]) == 2
    assert "'gamma' is not declared" in capsys.readouterr().err
    assert cli.main(["run", str(PLAIN), "--out", str(out), "-p", "epochs=x"]) == 2
    assert cli.main(["run", str(tmp_path / "none.py"), "--out", str(out)]) == 2
    assert "error: notebook " in capsys.readouterr().err
    assert not out.exists()


# -- index --------------------------------------------------------------------------------------


def test_index_links_every_page_offline(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    nbformat.write(executed_notebook(), out / "01_x.ipynb")
    render_html(out / "01_x.ipynb", out / "01_x.html")
    render_html(out / "01_x.ipynb", out / "01_x.nocode.html", code=False)
    failed_nb = executed_notebook()
    failed_nb.metadata["papermill"] = {"exception": True}
    nbformat.write(failed_nb, out / "02_y.ipynb")
    render_html(out / "02_y.ipynb", out / "02_y.html")
    sweep = out / "sweeps" / "01_x"
    for beta in (1.0, 10.0):
        write_run(sweep / f"beta={beta:g}", {"beta": beta}, {"coverage": 0.9, "sigma": [0.1, 0.2]},
                  "a1b2c3d4e5f6" + "0" * 52)  # fmt: skip
    bad = sweep / "failed" / "beta=100"
    records.write_json_atomic(
        bad / "error.json", {"parameters": {"beta": 100.0}, "error": "ValueError: <no>"}
    )
    render_html(executed_notebook(), bad / "01_x.html")
    render_html(executed_notebook(), out / "bench" / "table.html")

    index = report.write_index(out)
    assert index.path == out / "index.html" and index.skipped == []
    text = index.path.read_text()
    links = hrefs(index.path)
    assert all(not h.startswith(("http", "/")) for h in links)  # relative: works offline
    assert all((out / h).is_file() for h in links)
    pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")} - {"index.html"}
    assert pages <= set(links)
    assert "raised an error" in text and "ValueError: &lt;no&gt;" in text
    assert "2 finished run(s), 1 failed" in text and "0.9" in text
    assert "<code>a1b2c3d4e5f6</code>" in text  # the notebook version each run used
    assert "versions of the notebook" not in text and "Skipped files" not in text
    assert not CDN.search(text)


def test_index_says_when_runs_used_different_notebook_versions(tmp_path):
    sweep = tmp_path / "sweeps" / "nb"
    write_run(sweep / "beta=1", {"beta": 1.0}, {"x": 1.0}, "1" * 64)
    write_run(sweep / "beta=2", {"beta": 2.0}, {"x": 2.0}, "2" * 64)
    text = report.write_index(tmp_path).path.read_text()
    assert "These runs used 2 versions of the notebook" in text
    assert f"<code>{'1' * 12}</code>" in text and f"<code>{'2' * 12}</code>" in text


def test_index_of_an_empty_folder(tmp_path):
    text = report.write_index(tmp_path).path.read_text()
    assert "No reports yet" in text


# -- B21: unreadable files are skipped, named, and make the exit code non-zero -----------------


def _corrupt_reports(out: Path) -> dict[str, str]:
    """A reports folder with one good run and every kind of unreadable file; returns
    {file relative to out: what the index must say is wrong with it}."""
    sweep = out / "sweeps" / "01_x"
    write_run(sweep / "beta=1", {"beta": 1.0}, {"coverage": 0.75}, "c" * 64)
    bad = {
        "sweeps/01_x/beta=2/metrics.json": (b'{"metrics": {"cov', "is not valid JSON"),
        "sweeps/01_x/beta=3/metrics.json": (b"", "is empty"),
        "sweeps/01_x/beta=4/metrics.json": (b"\xff\xfe\x00binary\x00", "is not UTF-8 text"),
        "sweeps/01_x/beta=5/metrics.json": (b"[0.5]", "holds a JSON list, not an object"),
        "sweeps/01_x/failed/beta=6/error.json": (b"{\n", "is not valid JSON"),
        "02_y.ipynb": (b'{"cells": [', "not a readable notebook"),
        "sweeps/01_x/beta=1/01_x.ipynb": (b"\x00\x01", "not a readable notebook"),
    }
    for rel, (content, _) in bad.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(content)
    render_html(executed_notebook(), out / "02_y.html")
    return {rel: reason for rel, (_, reason) in bad.items()}


def test_index_skips_unreadable_files_with_a_visible_note(tmp_path, capsys):
    out = tmp_path / "reports"
    bad = _corrupt_reports(out)
    index = report.write_index(out)
    text = index.path.read_text()
    assert "Skipped files" in text and "1 finished run(s), 0 failed" in text and "0.75" in text
    assert "5 record(s) of this sweep could not be read" in text  # said where the runs are
    skipped = {p.relative_to(out).as_posix(): why for p, why in index.skipped}
    index_bad = {k: v for k, v in bad.items() if not k.endswith("01_x.ipynb")}  # not read
    assert set(skipped) == set(index_bad)
    for rel, reason in index_bad.items():
        assert skipped[rel].startswith(reason), (rel, skipped[rel])
        assert f"<td>{rel}</td><td>{reason}" in text, rel  # named, with what is wrong
    # the command line names them too, and exits non-zero at the end
    assert cli.main(["index", "--out", str(out)]) == cli.RUNS_FAILED
    err = capsys.readouterr().err
    for rel in index_bad:
        assert f"skipped {out / rel}: " in err


def test_render_skips_unreadable_notebooks_and_renders_the_rest(tmp_path, capsys):
    out = tmp_path / "reports"
    bad = _corrupt_reports(out)
    nbformat.write(executed_notebook(), out / "03_z.ipynb")
    assert cli.main(["render", "--out", str(out)]) == cli.RUNS_FAILED
    err = capsys.readouterr().err
    for rel in ("02_y.ipynb", "sweeps/01_x/beta=1/01_x.ipynb"):
        assert f"skipped {out / rel}: {bad[rel]}" in err
    assert "Traceback" not in err
    assert (out / "03_z.html").is_file() and (out / "03_z.nocode.html").is_file()


# -- A6: kernels start without TensorFlow's log noise -------------------------------------------


def test_kernel_environment_sets_only_what_is_unset(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("SIGMA_TEST_KEEP", "mine")
    with notebook.kernel_environment({"SIGMA_TEST_KEEP": "theirs"}):
        import os

        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
        assert os.environ["SIGMA_TEST_KEEP"] == "mine"
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and os.environ["SIGMA_TEST_KEEP"] == "mine"


@pytest.mark.notebook
def test_a_kernels_stderr_reaches_the_terminal_without_tensorflows_start_up_lines(tmp_path, capfd):
    """issue 28: every kernel of `make run` wrote TensorFlow's start-up lines (absl's notice,
    oneDNN's, the CPU features'), which no environment setting of the kernel silences, to the
    terminal. They are dropped on the way; the notebook's own native line is not. (The
    notebook writes the lines itself: the test does not depend on the CPU.)"""
    nb = notebook.read_notebook(TINY_STDERR)
    notebook.execute_notebook(nb, tmp_path / "out.ipynb")
    err = capfd.readouterr().err
    assert "native line of the notebook 42" in err
    for marker in ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard",
                   "To enable the following instructions"):  # fmt: skip
        assert marker not in err, err[-2000:]
    assert notebook.is_startup_noise("I0000 00:00:1.0 1 port.cc:153] native log line") is False


TF_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN|cpu_feature_guard|cuda|native log line 42|^[IWE]\d{4} ",
    re.I | re.M,
)


def _stderr(nb) -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stderr"
    )


@pytest.mark.notebook
@pytest.mark.slow
def test_executed_notebooks_carry_no_tensorflow_log_noise(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # as in a plain shell
    # ipykernel copies what the kernel process writes to its stderr file descriptor (TensorFlow's
    # C++ logging) into the notebook, except under pytest: make it do so here too.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    out = tmp_path / "reports"
    assert report.run_notebooks([TINY_TF], out)[0]["ok"]
    nb = nbformat.read(out / "tiny_tf.ipynb", as_version=4)
    assert "8.0" in json.dumps(nb)  # it ran TensorFlow
    assert _stderr(nb) == ""
    for page in ("tiny_tf.html", "tiny_tf.nocode.html"):
        html = (out / page).read_text()
        stderr_output = 'data-mime-type="application/vnd.jupyter.stderr"'
        assert stderr_output not in html and not TF_NOISE.search(html), page

    # the same kernel copying native stderr into the notebook (ipykernel's default) is noisy on
    # every machine (the notebook writes one native log line itself): the check above can fail
    monkeypatch.setattr(notebook, "KERNEL_ENV", {})
    monkeypatch.setattr(notebook, "KERNEL_ARGUMENTS", ("--IPKernelApp.log_level=ERROR",))
    loud = notebook.execute_notebook(notebook.read_notebook(TINY_TF), tmp_path / "loud.ipynb")
    assert "native log line 42" in _stderr(loud)
