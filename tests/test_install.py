"""The install path says what is wrong and how to fix it: an unsupported Python, a missing
dependency of the core, a missing optional extra; one version number everywhere."""

import importlib
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import sigma
from sigma import sweep
from sigma.sweep import cli

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_for_the_package_and_its_distribution():
    assert importlib.metadata.version("keras-sigma") == sigma.__version__
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "sigma._version.__version__" in text


def test_a_missing_notebooks_extra_is_named_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "nbconvert", None)
    with pytest.raises(sweep.MissingExtra, match=r"missing: nbconvert, papermill|papermill"):
        sweep.require_notebooks_extra()
    with pytest.raises(ImportError, match=r"pip install 'keras-sigma\[notebooks\]'"):
        sweep.require_notebooks_extra()


def test_the_command_line_without_the_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "papermill", None)
    for name in [m for m in sys.modules if m.startswith("sigma.sweep.") and m != "sigma.sweep.cli"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new process
    code = cli.main(["run", str(tmp_path / "nb.py"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == cli.CANNOT_RUN
    assert "papermill" in err and "keras-sigma[notebooks]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_missing_core_dependency_is_named_with_the_fix(monkeypatch):
    def missing(name, *args):
        raise ModuleNotFoundError(f"No module named {'tensorflow'!r}", name="tensorflow")

    monkeypatch.setattr(sigma._importlib, "import_module", missing)
    monkeypatch.delitem(sigma.__dict__, "metrics", raising=False)
    with pytest.raises(ImportError, match=r"tensorflow-cpu==2\.21\.0.*pip install keras-sigma"):
        sigma.metrics  # noqa: B018


def test_make_refuses_another_python_and_names_the_fix(tmp_path):
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo "Python 3.10.14"\nexit 1\n')
    fake.chmod(0o755)
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "env", f"PYTHON={fake}", f"VENV={tmp_path / 'venv'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "needs Python 3.11" in proc.stderr and "Python 3.10.14" in proc.stderr
    assert "PYTHON=python3.11" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_the_lab_without_the_extra_names_the_pip_command(monkeypatch):
    """sigma.lab needs scikit-learn, matplotlib and pandas; importing it without them says which
    extra to install (the core does not need them: tests/test_wheel.py)."""
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    for name in [m for m in sys.modules if m == "sigma.lab" or m.startswith("sigma.lab.")]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh, as in a new process
    monkeypatch.delitem(sigma.__dict__, "lab", raising=False)
    with pytest.raises(ImportError, match=r"missing: scikit-learn\. .*keras-sigma\[notebooks\]"):
        importlib.import_module("sigma.lab")
    with pytest.raises(ImportError, match=r"keras-sigma\[notebooks\]"):
        sigma.lab  # noqa: B018


def test_a_parameter_without_pyyaml_says_what_to_install(monkeypatch, capsys, tmp_path):
    """-p name=value reads the value as YAML while the arguments are parsed."""
    monkeypatch.setitem(sys.modules, "yaml", None)
    code = cli.main(["run", str(tmp_path / "nb.py"), "-p", "epochs=3", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == cli.CANNOT_RUN
    assert "pyyaml" in err and "keras-sigma[notebooks]" in err and "Traceback" not in err
