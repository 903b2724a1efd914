"""The wheel is what users get: build it, install it (not editable) into a fresh virtual
environment, and use sigma from a directory outside the repository.

``pip install keras-sigma`` is the core: TensorFlow, Keras, NumPy, SciPy and small utilities.
The fresh environment borrows those from the environment running the tests rather than
downloading them again, through a folder of links to its site-packages that leaves out the
``notebooks`` extra's scikit-learn, matplotlib, pyyaml and pandas (and the editable sigma): the
core must fit, predict, save and load without them, and ``sigma.lab`` and ``python -m
sigma.sweep`` must say which extra to install. The test also checks that the wheel's metadata
requires none of them, that ``sigma`` itself is imported from the fresh environment, and that
every subpackage of the source tree is in the wheel.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# What the notebooks extra brings and the core must not need (import names and distributions).
EXTRAS_ONLY = {"sklearn", "scikit_learn", "matplotlib", "mpl_toolkits", "pylab", "yaml", "_yaml"}
EXTRAS_ONLY |= {"pyyaml", "pandas"}
EXTRAS_ONLY_DISTS = {"scikit-learn", "matplotlib", "pyyaml", "pandas"}

SCRIPT = r"""
import importlib.metadata as md, importlib.util, json, os, pkgutil, sys
for name in ("sklearn", "matplotlib", "yaml", "pandas"):
    assert importlib.util.find_spec(name) is None, name  # the environment is as promised
import numpy as np, keras
import sigma

assert os.path.realpath(sigma.__file__).startswith(os.path.realpath(sys.prefix)), sigma.__file__
requires = [r.split(";")[0] for r in md.requires("keras-sigma") if "extra ==" not in r]
def walk(path, prefix):  # pkgutil.walk_packages would import sigma.lab and sigma.sweep
    for m in pkgutil.iter_modules(path, prefix):
        if m.name not in ("sigma.lab", "sigma.sweep"):
            yield m.name
            if m.ispkg:
                yield from walk([os.path.join(path[0], m.name.rsplit(".", 1)[1])], m.name + ".")
core = list(walk(sigma.__path__, "sigma."))
for name in core:
    __import__(name)  # every module of the installed core imports

keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
y = np.sin(x[:, :1])
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="tanh"),
                          keras.layers.Dense(1)])
model.compile("adam", "mse")
model.fit(x, y, epochs=2, verbose=0)
la = sigma.Laplace(model, x, y).optimize_evidence()
mean, std = la.predict(x[:5])
la.save("fit.npz")
again = sigma.Laplace.load("fit.npz", model)
np.testing.assert_array_equal(again.predict(x[:5])[1], std)

labels = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
classifier = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="tanh"),
                               keras.layers.Dense(3)])
classifier.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
classifier.fit(x, labels, epochs=2, verbose=0)
proba = sigma.Laplace(classifier, x, labels, likelihood="classification").predict_proba(x[:5])
np.testing.assert_allclose(proba.sum(axis=-1), 1.0, rtol=1e-5)
loaded = [m for m in sys.modules if m.startswith(("sigma.lab", "sigma.sweep"))]
assert not loaded, loaded  # the core never imports the notebook layers

try:
    import sigma.lab
    lab_error = None
except ImportError as exc:
    lab_error = str(exc)
print(json.dumps({"version": sigma.__version__, "dist": md.version("keras-sigma"),
                  "requires": requires, "std": std.ravel().tolist(), "cwd": os.getcwd(),
                  "proba_shape": list(proba.shape), "core_modules": len(core),
                  "lab_error": lab_error}))
"""


def _source_packages() -> set[str]:
    return {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sigma").rglob("__init__.py")
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the committed layout (pyproject, README, sigma/), as from a clean
    clone: a build/ folder left in the work tree by an earlier build would otherwise put
    modules deleted since into the wheel."""
    out, src = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "sigma", src / "sigma", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(src)],
        check=True, cwd=out, capture_output=True, text=True,
    )  # fmt: skip
    (path,) = out.glob("keras_sigma-*.whl")
    return path


def test_wheel_holds_every_subpackage(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("__init__.py")}
    assert _source_packages() <= packaged, _source_packages() - packaged
    assert "sigma/structures/full.py" in names and "sigma/sweep/cli.py" in names
    assert not any(n.startswith(("tests/", "notebooks/", "bench/")) for n in names)


def _requires(wheel: Path) -> list[str]:
    """The wheel's Requires-Dist lines that no extra guards: what ``pip install`` installs."""
    (meta,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA")]
    lines = zipfile.ZipFile(wheel).read(meta).decode().splitlines()
    return [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Requires-Dist:")]


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower()


def test_the_wheel_requires_the_core_only_and_offers_the_rest_as_extras(wheel):
    required = {_dist_name(r) for r in _requires(wheel) if "extra ==" not in r}
    assert {"tensorflow-cpu", "keras", "numpy", "scipy"} <= required
    assert not required & EXTRAS_ONLY_DISTS, required & EXTRAS_ONLY_DISTS
    notebooks = {_dist_name(r) for r in _requires(wheel) if re.search(r"extra == .notebooks", r)}
    assert EXTRAS_ONLY_DISTS <= notebooks, EXTRAS_ONLY_DISTS - notebooks


def _only_the_core(target: Path) -> Path:
    """A folder of links to the running environment's site-packages, without the notebooks
    extra's packages, their metadata, and the editable install of sigma."""
    target.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        stem = re.split(r"[-.]", entry.name, maxsplit=1)[0].lower()
        if stem in EXTRAS_ONLY or entry.name.startswith(("__editable__", "keras_sigma")):
            continue
        if entry.suffix == ".pth":
            continue
        (target / entry.name).symlink_to(entry)
    return target


@pytest.fixture(scope="module")
def core_env(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """A fresh venv with the wheel installed and the core's dependencies only; its python and
    environment variables."""
    root = tmp_path_factory.mktemp("core")
    env_dir = root / "fresh-venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies, from the environment running this test (after the fresh site-packages)
    borrowed = _only_the_core(root / "borrowed-site-packages")
    Path(site, "borrowed_dependencies.pth").write_text(f"{borrowed}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return python, env


def test_installed_wheel_without_extras_fits_predicts_saves_and_loads_outside_the_repo(
    core_env, tmp_path
):
    python, env = core_env
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run(
        [str(python), "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    import sigma

    assert result["version"] == result["dist"] == sigma.__version__
    assert Path(result["cwd"]).resolve() == work.resolve()
    declared = {_dist_name(r) for r in result["requires"]}
    assert {"tensorflow-cpu", "keras", "numpy", "scipy"} <= declared
    assert not declared & EXTRAS_ONLY_DISTS
    assert result["core_modules"] > 30
    assert len(result["std"]) == 5 and all(s > 0 for s in result["std"])
    assert result["proba_shape"] == [5, 3]
    assert "pip install 'keras-sigma[notebooks]'" in result["lab_error"]
    assert "scikit-learn" in result["lab_error"] and "matplotlib" in result["lab_error"]


def test_without_the_extra_lab_and_sweep_name_the_pip_command(core_env, tmp_path):
    python, env = core_env
    lab = subprocess.run(
        [str(python), "-c", "import sigma; sigma.lab"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert lab.returncode != 0 and "MissingExtra" in lab.stderr
    assert "pip install 'keras-sigma[notebooks]'" in lab.stderr
    notebook = tmp_path / "nb.py"
    notebook.write_text("# %%\nprint(1)\n")
    sweep = subprocess.run(
        [str(python), "-m", "sigma.sweep", "run", str(notebook), "--out", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sweep.returncode == 3, sweep.stderr  # cli.CANNOT_RUN
    assert "pyyaml" in sweep.stderr and "keras-sigma[notebooks]" in sweep.stderr
    assert "Traceback" not in sweep.stderr
