"""`make lab`: the Jupyter server with this repository's jupyter_config/ serves notebooks/*.py as
notebooks (jupytext), saves them paired with an .ipynb without touching the .py, and tells
JupyterLab to open .py files as notebooks on a double click.

The server runs headless on a port the OS picks, with a random token, from a temporary copy of
jupytext.toml and notebooks/01_original.py (saving writes there, not into the repository), and
with temporary Jupyter runtime, data, config and settings directories (your own are not read).
`make notebooks` (jupytext --sync) is checked on a copy of every notebook.
"""

import html.parser
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_original.py"
START_TIMEOUT = 180.0  # seconds for the server to write its connection file (2 shared cores)
REQUEST_TIMEOUT = 60.0  # seconds per HTTP request
STOP_TIMEOUT = 30.0  # seconds for the server to exit after SIGTERM, then SIGKILL


@dataclass
class Server:
    url: str  # e.g. http://127.0.0.1:41234/
    token: str
    root: Path  # the server's root_dir

    def request(self, method: str, path: str, body=None) -> tuple[str, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as response:
            return response.headers.get_content_type(), response.read()

    def json(self, method: str, path: str, body=None):
        return json.loads(self.request(method, path, body)[1])


def _wait_until_serving(proc, runtime: Path, token: str, log: Path) -> Server:
    """Wait for the server's jpserver-<pid>.json, then for its port to answer; fail with the
    server's log if it exits or START_TIMEOUT passes. (The connection file is written just
    before the event loop starts, and the socket is bound in one of the loop's first callbacks,
    so a request right after the file appears can still be refused.)"""
    info_file = runtime / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + START_TIMEOUT
    server, last_error = None, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if server is None and info_file.exists():
            try:
                info = json.loads(info_file.read_text())
                server = Server(url=info["url"], token=token, root=Path(info["root_dir"]))
            except (json.JSONDecodeError, KeyError):
                pass  # being written
        if server is not None:
            try:
                server.json("GET", "/api/status")
                return server
            except urllib.error.URLError as e:  # connection refused: not bound yet
                last_error = e
        time.sleep(0.2)
    pytest.fail(
        f"jupyter lab did not answer within {START_TIMEOUT:g} s ({last_error}; connection "
        f"file {'found' if server else 'missing'}):\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lab")
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "jupytext.toml", root / "jupytext.toml")
    shutil.copy(ROOT / NOTEBOOK, root / NOTEBOOK)
    runtime = tmp_path / "runtime"
    env = dict(
        os.environ,
        JUPYTER_CONFIG_PATH=str(ROOT / "jupyter_config"),  # what `make lab` sets
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),  # instead of ~/.jupyter
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
    )
    token = secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers; Jupyter refuses root otherwise
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT)
        try:
            server = _wait_until_serving(proc, runtime, token, log)
            assert server.root.resolve() == root.resolve()
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)


class _PageConfig(html.parser.HTMLParser):
    """The JSON of <script id="jupyter-config-data"> in JupyterLab's page."""

    def __init__(self):
        super().__init__()
        self._inside, self.text = False, ""

    def handle_starttag(self, tag, attrs):
        self._inside = tag == "script" and ("id", "jupyter-config-data") in attrs

    def handle_endtag(self, tag):
        self._inside = False

    def handle_data(self, data):
        if self._inside:
            self.text += data


def test_lab_serves_the_py_source_as_a_paired_notebook(lab_server):
    source = (lab_server.root / NOTEBOOK).read_text()

    model = lab_server.json("GET", f"/api/contents/{NOTEBOOK}")
    assert model["type"] == "notebook", model["type"]
    assert model["format"] == "json"
    cells = model["content"]["cells"]
    assert len(cells) > 10
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    assert "beta: float" in tagged[0]["source"]
    assert model["content"]["metadata"]["jupytext"]["formats"] == "ipynb,py:percent"

    # Saving from JupyterLab writes the pair: the .ipynb appears, the .py source is unchanged
    # (no jupytext version stamps or filters added to its header: jupytext.toml drops them).
    ipynb = lab_server.root / "notebooks" / "01_original.ipynb"
    assert not ipynb.exists()
    saved = lab_server.json(
        "PUT",
        f"/api/contents/{NOTEBOOK}",
        {"type": "notebook", "format": "json", "content": model["content"]},
    )
    assert saved["type"] == "notebook"
    paired = nbformat.read(ipynb, as_version=4)
    nbformat.validate(paired)
    assert [c["source"] for c in paired.cells] == [c["source"] for c in cells]
    assert (lab_server.root / NOTEBOOK).read_text() == source


def test_lab_opens_py_files_as_notebooks_on_double_click(lab_server):
    # jupyter_config/labconfig/default_setting_overrides.json: the default viewer of Python
    # files is jupytext's notebook viewer ...
    settings = lab_server.json("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    default_viewers = settings["schema"]["properties"]["defaultViewers"]["default"]
    assert default_viewers.get("python") == "Jupytext Notebook", default_viewers

    # ... and that viewer exists: jupytext's JupyterLab extension is installed and loaded.
    content_type, page = lab_server.request("GET", "/lab")
    assert content_type == "text/html"
    parser = _PageConfig()
    parser.feed(page.decode())
    config = json.loads(parser.text)
    extensions = [e["name"] for e in config.get("federated_extensions", [])]
    assert "jupyterlab-jupytext" in extensions, extensions


def test_make_notebooks_pairs_every_source_without_changing_it(tmp_path):
    """`make notebooks` (jupytext --sync) on a copy: an .ipynb per source, sources unchanged."""
    shutil.copy(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    (tmp_path / "notebooks").mkdir()
    sources = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
    assert sources
    for src in sources:
        shutil.copy(src, tmp_path / "notebooks" / src.name)
    cmd = [sys.executable, "-m", "jupytext", "--sync", *(f"notebooks/{s.name}" for s in sources)]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, timeout=REQUEST_TIMEOUT)
    for src in sources:
        paired = nbformat.read(tmp_path / "notebooks" / f"{src.stem}.ipynb", as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in paired.cells), src.name
        assert (tmp_path / "notebooks" / src.name).read_text() == src.read_text(), src.name
