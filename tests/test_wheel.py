"""The wheel is what users get: build it, install it (not editable) into a fresh virtual
environment, and use sigma from a directory outside the repository.

The fresh environment borrows TensorFlow and the other dependencies from the environment running
the tests (a ``.pth`` line) rather than downloading them again; the test checks that the
wheel's metadata declares each of them, that ``sigma`` itself is imported from the fresh
environment, and that every subpackage of the source tree is in the wheel.
"""

import json
import os
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

SCRIPT = r"""
import importlib.metadata as md, json, os, pkgutil, sys
import numpy as np, keras
import sigma

assert os.path.realpath(sigma.__file__).startswith(os.path.realpath(sys.prefix)), sigma.__file__
requires = [r.split(";")[0] for r in md.requires("keras-sigma") if "extra ==" not in r]
for name in [m.name for m in pkgutil.walk_packages(sigma.__path__, "sigma.")]:
    __import__(name)  # every module of the installed package imports

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
print(json.dumps({"version": sigma.__version__, "dist": md.version("keras-sigma"),
                  "requires": requires, "std": std.ravel().tolist(), "cwd": os.getcwd()}))
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


def test_installed_wheel_fits_predicts_saves_and_loads_outside_the_repo(wheel, tmp_path):
    env_dir = tmp_path / "fresh-venv"
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
    Path(site, "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    run = subprocess.run(
        [str(python), "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    import sigma

    assert result["version"] == result["dist"] == sigma.__version__
    assert Path(result["cwd"]).resolve() == work.resolve()
    declared = {r.split("=")[0].split(">")[0].split("<")[0].strip() for r in result["requires"]}
    assert {"tensorflow-cpu", "keras", "numpy", "scipy", "scikit-learn"} <= declared
    assert len(result["std"]) == 5 and all(s > 0 for s in result["std"])
