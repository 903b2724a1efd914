"""Saving a fitted Laplace and loading it onto its model: the same σ and evidence in a new
process, for every structure; a file for another model, corrupted, truncated or from a future
format version is refused with a message naming it."""

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma import saving
from sigma.params import flat_weights, set_flat_weights

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(9)
X, Y = RNG.normal(size=(20, 3)), RNG.normal(size=(20, 2))
CASES = {
    "full": dict(structure="full", prior="layer"),
    "diag": dict(structure="diag", prior="variable"),
    "kfac": dict(structure="kfac", prior="layer"),
    "lowrank": dict(structure="lowrank", structure_options={"rank": 6}),
    "last_layer": dict(structure="last_layer"),
}

_LOAD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, "tests")
    from conftest import make_mlp
    import sigma

    model = make_mlp()
    model.load_weights(sys.argv[1])
    x = np.load(sys.argv[2])
    for path in sys.argv[3:]:
        la = sigma.Laplace.load(path, model)
        mean, std = la.predict(x)
        print("RESULT" + json.dumps({
            "path": path, "std": std.tolist(), "log_evidence": la.log_evidence(),
            "alpha": np.ravel(la.alpha).tolist(), "structure": la.structure.name,
            "weights": la.selection.kind, "gamma": la.gamma,
        }))
    """
)


@pytest.mark.slow
def test_round_trip_in_a_new_process(tmp_path):
    model = make_mlp()
    set_flat_weights(model, RNG.normal(size=sigma.num_params(model)))
    model.save_weights(tmp_path / "m.weights.h5")
    np.save(tmp_path / "x.npy", X[:5])
    expected = {}
    for name, kw in CASES.items():
        la = sigma.Laplace(model, X, Y, **kw).optimize_evidence()
        la.save(tmp_path / f"{name}.npz")
        expected[str(tmp_path / f"{name}.npz")] = (
            name,
            la.predict(X[:5])[1],
            la.log_evidence(),
            la.gamma,
        )
    # one new process (one cold TensorFlow start) loads every file
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD, str(tmp_path / "m.weights.h5"), str(tmp_path / "x.npy"),
         *expected],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(ln[6:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert [r["path"] for r in results] == list(expected)
    for out in results:
        name, std, log_ev, gamma = expected[out["path"]]
        assert out["structure"] == {"last_layer": "full"}.get(name, name)
        assert out["weights"] == ("last_layer" if name == "last_layer" else "all")
        np.testing.assert_allclose(out["std"], std, rtol=1e-12)
        assert out["log_evidence"] == pytest.approx(log_ev, rel=1e-12)
        assert out["gamma"] == pytest.approx(gamma, rel=1e-12)


def test_the_header_documents_what_was_saved(tmp_path):
    la = sigma.Laplace(make_mlp(), X, Y, prior="layer", alpha=[1.0, 2.0, 3.0], beta=4.0)
    la.save(tmp_path / "la.npz")
    header, arrays = saving.read(tmp_path / "la.npz")
    assert header["format"] == "sigma.laplace" and header["version"] == saving.VERSION
    assert header["prior"]["names"] == list(la.prior_groups) and len(la.prior_groups) == 3
    assert header["alpha"] == [1.0, 2.0, 3.0] and header["beta"] == 4.0
    assert header["data"]["n_data"] == 20 and header["structure"]["name"] == "full"
    assert len(header["fingerprint"]["weights_sha256"]) == 64
    np.testing.assert_array_equal(arrays["w_map"], la.w_map)
    assert arrays["structure/matrix"].shape == (54, 54)


def test_loading_refuses_what_it_cannot_trust(tmp_path):
    model = make_mlp()
    la = sigma.Laplace(model, X, Y)
    path = la.save(tmp_path / "la.npz")
    with pytest.raises(ValueError, match=r"model does not match .*trainable variables differ"):
        sigma.Laplace.load(path, make_mlp(hidden=(5, 5)))
    same = make_mlp()  # the same architecture built again (other layer names), same weights
    assert sigma.Laplace.load(path, same).predict(X[:2])[1].shape == (2, 2)
    other = make_mlp()
    set_flat_weights(other, flat_weights(model) + 0.1)
    with pytest.raises(ValueError, match=r"model's weights differ .*load the weights it was saved"):
        sigma.Laplace.load(path, other)
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.npz' is not a readable sigma Laplace file"):
        sigma.Laplace.load(tmp_path / "truncated.npz", model)
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(ValueError, match=r"noise.npz' is not a readable sigma Laplace file"):
        sigma.Laplace.load(tmp_path / "noise.npz", model)
    header, arrays = saving.read(path)
    header["version"] = saving.VERSION + 1
    with zipfile.ZipFile(tmp_path / "future.npz", "w") as zf:  # the same archive, a newer header
        for name, value in {"header": np.array(json.dumps(header)), **arrays}.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, value)
    newer = (
        rf"format version {saving.VERSION + 1} .* newer than this sigma reads \({saving.VERSION}\)"
    )
    with pytest.raises(ValueError, match=newer):
        sigma.Laplace.load(tmp_path / "future.npz", model)
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="has no readable sigma header"):
        sigma.Laplace.load(tmp_path / "other.npz", model)
    with pytest.raises(ValueError, match=r"is not a file"):
        sigma.Laplace.load(tmp_path / "missing.npz", model)


def _rewrite(path, header, arrays):
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in {"header": np.array(json.dumps(header)), **arrays}.items():
            with zf.open(f"{name}.npy", "w") as fh:
                np.lib.format.write_array(fh, value)


def test_a_format_1_last_layer_file_loads_as_the_last_layer_selection(tmp_path):
    """Format 1 had no selection of weights: its "last_layer" structure was the full curvature
    of the last Dense layer, stored as the full structure stores it."""
    model = make_mlp()
    la = sigma.Laplace(model, X, Y, structure="last_layer", alpha=0.5, beta=2.0)
    header, arrays = saving.read(la.save(tmp_path / "v2.npz"))
    header["version"], header["structure"]["name"] = 1, "last_layer"
    del header["weights"], arrays["weights_index"]
    _rewrite(tmp_path / "v1.npz", header, arrays)
    old = sigma.Laplace.load(tmp_path / "v1.npz", model)
    assert old.selection.kind == "last_layer" and old.n_params == 10
    np.testing.assert_allclose(old.predict(X[:4])[1], la.predict(X[:4])[1], rtol=1e-12)


def test_saving_is_atomic_and_needs_unchanged_weights(tmp_path):
    model = make_mlp()
    la = sigma.Laplace(model, X, Y)
    la.save(tmp_path / "la.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["la.npz"]  # no temporary file left
    set_flat_weights(model, flat_weights(model) * 1.1)
    with pytest.raises(ValueError, match="weights .* changed since"):
        la.save(tmp_path / "again.npz")


def test_a_directory_or_a_file_of_another_kind_is_named_as_such(tmp_path):
    """issue 19: save to an existing directory; load a text file, a .npy array, a pickle or an
    .npz holding Python objects — no temporary-file name, nothing about pickles."""
    model = make_mlp()
    la = sigma.Laplace(model, X, Y)
    with pytest.raises(ValueError, match=r"is a directory: give the name of the file"):
        la.save(tmp_path)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    with pytest.raises(ValueError, match=r"is a directory"):
        sigma.Laplace.load(tmp_path, model)
    (tmp_path / "text.npz").write_text("not an archive\n" * 20)
    np.save(tmp_path / "array.npy", np.ones(3))
    (tmp_path / "py.npz").write_bytes(__import__("pickle").dumps({"a": 1}))
    np.savez(tmp_path / "objects.npz", header=np.array([{"a": 1}], dtype=object))
    for name in ("text.npz", "array.npy", "py.npz", "objects.npz"):
        with pytest.raises(
            ValueError, match=rf"{name}' is not a (readable )?sigma Laplace file"
        ) as e:
            sigma.Laplace.load(tmp_path / name, model)
        assert "pickle" not in str(e.value).replace(str(tmp_path), "")


@pytest.mark.parametrize("structure", ["kfac", "diag"])
def test_a_loaded_structure_reuses_the_graphs_traced_before_saving(tmp_path, structure):
    model = make_mlp()
    la = sigma.Laplace(model, X, Y, structure=structure)
    la.predict(X[:3])
    eng = sigma.curvature.engine(model)
    before = len(eng.store)
    back = sigma.Laplace.load(la.save(tmp_path / "la.npz"), model)
    np.testing.assert_array_equal(back.predict(X[:3])[1], la.predict(X[:3])[1])
    assert back.structure.plan is la.structure.plan
    traced = [k for k in eng.store if isinstance(k, tuple) and k[0] == "layerwise-predict"]
    assert len(traced) == 1 and len(eng.store) <= before + 1
