"""sigma.sweep.grid: run names, ranges, the parameters a notebook declares, and every bad grid
refused (naming the key and what was expected) before anything runs."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sweeputil import METRICS, PLAIN, ROOT, write_grid

from sigma.sweep import engine
from sigma.sweep import grid as grids
from sigma.sweep.notebook import read_notebook

# -- names and ranges ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (10.0, "10"),
        (0.5, "0.5"),
        (1e-3, "0.001"),
        (1e-8, "1e-08"),
        (2.5e16, "2.5e+16"),
        (20, "20"),
        (True, "true"),
        ("ggn", "ggn"),
        (-1.0, "-1"),
    ],
)
def test_format_value(value, text):
    assert grids.format_value(value) == text


def test_run_name_is_sorted_and_compact():
    assert grids.run_name({"epochs": 20, "beta": 10.0, "seed": 0}) == "beta=10_epochs=20_seed=0"


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("noise precision, > 0", [1e-9, 5.0], [0.0, -1.0]),
        ("passes, ≥ 1", [1, 100], [0]),
        ("fraction held out, in (0, 1)", [0.5], [0.0, 1.0]),
        ("in [1, 100]", [1, 100], [0.5, 101]),
        ("in [0, inf)", [0.0, 1e300], [-1e-9]),
        ("a probability ≤ 1", [1.0, -5.0], [1.01]),
    ],
)
def test_parse_range(text, inside, outside):
    rng = grids.parse_range(text)
    assert all(v in rng for v in inside) and not any(v in rng for v in outside)


def test_parse_range_none():
    assert grids.parse_range("where to write metrics.json (empty: nowhere)") is None
    assert grids.parse_range("the original's β (of Keras' mean squared error)") is None


def test_declared_parameters_read_types_defaults_and_ranges():
    declared = grids.declared_parameters(read_notebook(PLAIN))
    assert list(declared) == ["beta", "epochs", "label", "flag", "fail_at_beta", "sleep_s"]
    assert [declared[n].type for n in declared] == ["float", "int", "str", "bool", "float", "float"]
    assert declared["beta"].default == 1.0 and declared["label"].default == "a"
    assert str(declared["beta"].range) == "> 0" and str(declared["epochs"].range) == "≥ 1"
    assert declared["fail_at_beta"].range is None


def test_a_range_comes_from_the_notebook_alone(tmp_path):
    """The generic code knows no parameter names: no comment, no range."""
    nb = tmp_path / "nb.py"
    nb.write_text('# %% tags=["parameters"]\nseed = 0  # random seed, ≥ 0\nalpha: float = 1.0\n')
    declared = grids.declared_parameters(read_notebook(nb))
    assert declared["seed"].type == "int"  # from the literal default
    assert str(declared["seed"].range) == "≥ 0" and declared["alpha"].range is None
    assert declared["seed"].range_source == "its comment in the parameters cell"


def test_a_parameter_line_papermill_cannot_read_is_refused(tmp_path):
    nb = tmp_path / "nb.py"
    nb.write_text('# %% tags=["parameters"]\nbeta: float = 1.0\nepochs: int = 2  # >= 1\n')
    with pytest.raises(ValueError, match=r"papermill cannot read the parameter line 'epochs: int"):
        grids.declared_parameters(read_notebook(nb), "nb.py")


# -- bad grids --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"gamma": [1.0]},
            r"'gamma' is not declared.*declared: beta, epochs, label, flag, fail_at_beta, sleep_s$",
        ),
        ({"beta": ["x"]}, r"parameter 'beta', value 0: 'x' is not a number"),
        ({"beta": [1.0, True]}, r"parameter 'beta', value 1: True is not a number"),
        ({"epochs": [1.5]}, r"1.5 is not an int"),
        ({"epochs": [True]}, r"True is not an int"),
        ({"flag": [1]}, r"1 is not true/false"),
        ({"label": [3]}, r"3 is not a string"),
        ({"beta": [-1.0]}, r"-1.0 is out of range: beta must be > 0 \(from its comment"),
        ({"epochs": [0]}, r"0 is out of range: epochs must be ≥ 1"),
        ({"beta": ".nan"}, r"'beta' must be a non-empty list of values"),
        ({"beta": [float("nan")]}, r"nan is not finite"),
        ({"beta": 1.0}, r"'beta' must be a non-empty list of values, got 1.0 \(write \[1.0\]"),
        ({"beta": []}, r"'beta' must be a non-empty list"),
        ({"beta": [None]}, r"None is not a single value"),
        ({"beta": [[1.0, 2.0]]}, r"\[1.0, 2.0\] is not a single value"),
        ({"beta": [1, 1.0]}, r"lists 1 and 1.0, the same value twice"),
        ({"label": ["a/b"]}, r"'a/b' cannot go in a run folder name"),
        ({"label": [".hidden"]}, r"cannot go in a run folder name"),
        ({}, r"'parameters' must map each parameter name to a list"),
    ],
)
def test_bad_grid_values_are_refused_before_anything_runs(tmp_path, parameters, message):
    grid = write_grid(tmp_path, parameters)
    with pytest.raises(ValueError, match=message):
        engine.run_sweep(grid, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_metrics_path_belongs_to_the_runner(tmp_path):
    grid = write_grid(tmp_path, {"metrics_path": ["x.json"]}, notebook=METRICS)
    with pytest.raises(ValueError, match="'metrics_path' is set by the sweep runner"):
        grids.load_grid(grid)


def test_bad_grid_files(tmp_path):
    path = tmp_path / "g.yaml"
    cases = [
        ("notebook: x.py\nparameters: {beta: [1.0]}\nworkers: 2\n", r"unknown key\(s\) 'workers'"),
        ("parameters: {beta: [1.0]}\n", r"missing 'notebook'"),
        (f"notebook: {PLAIN}\n", r"missing 'parameters'"),
        ("notebook: nowhere.py\nparameters: {beta: [1.0]}\n", r"notebook nowhere.py not found"),
        ("- 1\n- 2\n", r"expected a mapping"),
        ("notebook: [\n", r"not valid YAML"),
        (
            f"notebook: {PLAIN}\nname: a/b\nparameters: {{beta: [1.0]}}\n",
            r"'name' must be a folder",
        ),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            grids.load_grid(path)
    with pytest.raises(ValueError, match="does not exist"):
        grids.load_grid(tmp_path / "missing.yaml")


def test_grid_values_are_typed_and_multiplied_out(tmp_path):
    grid = grids.load_grid(
        write_grid(tmp_path, {"beta": [1, "1e-3"], "epochs": [1, 2, 3], "flag": [True]})
    )
    assert grid.name == "tiny_plain" and grid.parameters["beta"] == (1.0, 0.001)
    points = grid.points()
    assert len(points) == 6 and points[0] == {"beta": 1.0, "epochs": 1, "flag": True}
    assert isinstance(points[0]["beta"], float)
    assert len({grids.run_name(p) for p in points}) == 6


def test_the_default_grid_fits_notebook_01(monkeypatch):
    monkeypatch.chdir(ROOT)  # the grid names its notebook relative to the repository root
    grid = grids.load_grid("sweeps/beta_epochs.yaml")
    assert grid.notebook == Path("notebooks/01_original.py") and len(grid.points()) >= 2
    assert "metrics_path" in grid.declared  # so the notebook writes its own metrics.json


# -- B20: messages that say what is right ---------------------------------------------------


def test_an_empty_list_of_values_says_it_means_no_runs(tmp_path):
    with pytest.raises(ValueError) as info:
        grids.load_grid(write_grid(tmp_path, {"beta": []}))
    message = str(info.value)
    assert "parameter 'beta' must be a non-empty list of values, got []" in message
    assert "the grid would have no runs at all" in message and "e.g. beta: [1]" in message
    assert "[[]]" not in message  # the old hint, wrong for a float parameter


@pytest.mark.parametrize(
    ("values", "hint"),
    [(2.5, "(write [2.5] for a single value)"), ({"a": 1}, None), ("x", None), (None, None)],
)
def test_the_single_value_hint_is_given_only_where_it_is_right(tmp_path, values, hint):
    with pytest.raises(ValueError, match="'beta' must be a non-empty list of values") as info:
        grids.load_grid(write_grid(tmp_path, {"beta": values}))
    if hint is None:
        assert "for a single value" not in str(info.value)
    else:
        assert str(info.value).endswith(hint)


# -- run names identify their values ------------------------------------------------------------


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_float_in_a_run_name_reads_back_as_itself(value):
    assert float(grids.format_value(value)) == value


SAME_TYPE_PAIRS = st.one_of(
    st.tuples(st.floats(allow_nan=False), st.floats(allow_nan=False)),
    st.tuples(st.integers(), st.integers()),
    st.tuples(st.booleans(), st.booleans()),
    st.tuples(st.from_regex(r"[a-z][a-z0-9._+-]{0,8}", fullmatch=True),
              st.from_regex(r"[a-z][a-z0-9._+-]{0,8}", fullmatch=True)),
)  # fmt: skip


@given(st.dictionaries(st.sampled_from(["beta", "epochs", "label"]), SAME_TYPE_PAIRS, min_size=1))
def test_two_points_share_a_run_name_only_if_they_are_the_same(pairs):
    a = {k: v[0] for k, v in pairs.items()}
    b = {k: v[1] for k, v in pairs.items()}
    same = {k: repr(v) for k, v in a.items()} == {k: repr(v) for k, v in b.items()}
    assert (grids.run_name(a) == grids.run_name(b)) == same
