"""Property-based fuzzing of the public boundary of :class:`sigma.Laplace` (issue 11).

Random shapes, dtypes (int, uint, bool, float16/32/64, complex, strings, objects), NaN/inf at
random positions, extreme magnitudes of x, y, α, β and random-typed values for every keyword
of ``Laplace``, ``predict``, ``predict_proba``, ``log_evidence``, ``optimize_evidence`` (and
the ``alpha``/``beta`` setters, ``gamma``, ``gammas``), over every registered structure, both
likelihoods and curvatures, float32 and float64 models. The invariant (:func:`outcome`):

* either a result whose arrays are finite and correctly shaped,
* or a ValueError — or one of sigma's own errors (EvidenceError, InsufficientMemoryError) —
  raised from sigma's code, whose message names an argument of the public boundary;
* never a NaN/inf in a result, a TensorFlow/NumPy/Keras exception, a TypeError, KeyError,
  IndexError, AttributeError, ZeroDivisionError …, nor a NumPy RuntimeWarning (overflow,
  invalid value: turned into errors inside the checked call).

The served model (``to_keras``) has its own invariant
(:func:`test_the_served_model_refuses_what_predict_refuses`): ``predict``'s answer, or its
in-graph refusal exactly where ``predict`` refuses.

Profiles (``SIGMA_FUZZ=1`` or ``--hypothesis-profile=fuzz`` for the deep one, ``make fuzz``):
``ci`` (default) is small and derandomized so ``make test`` is deterministic and adds well
under a minute; ``fuzz`` draws many more examples with a fresh random seed each run.

Models are tiny (3-4-2 Dense, tanh) and built once per module, so the traced graphs of each
(model, structure, likelihood, curvature) are reused across examples.

What is kept out:

* drawn by :func:`test_awkward_models` only (the other tests use float32/float64 3-4-2 Dense
  models with linear logits): half-precision models (float16/bfloat16), models without
  trainable weights, a sigmoid last layer, a one-logit binary classifier, Embedding indices,
  unbatched tf.data datasets;
* discarded with ``hypothesis.reject()`` *only when they fail* (:func:`triage`, counted as
  events in ``--hypothesis-show-statistics``): non-finite curvature from overflow inside the
  network (|x| or |y| near the square root of the dtype's maximum).
"""

from __future__ import annotations

import os
import re
import tempfile
import traceback
import warnings

import hypothesis.extra.numpy as hnp
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st

import sigma
from sigma import structures
from sigma.evidence import EvidenceError
from sigma.evidence.posterior import from_eigenvalues
from sigma.memory import InsufficientMemoryError

# -- profiles (registered in conftest.py) ----------------------------------------------------------
FUZZ_SCALE = int(os.environ.get("SIGMA_FUZZ_SCALE", "50"))


def scaled(n: int):
    """``n`` examples under the "ci" profile, ``FUZZ_SCALE`` times as many under "fuzz"."""
    deep = settings.get_current_profile_name() == "fuzz"
    return settings(max_examples=n * FUZZ_SCALE if deep else n)


# property-based fuzzing draws many examples per test: slow (make test runs it, test-fast not)
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]


# -- the invariant ------------------------------------------------------------------------------
# Every argument name of the public boundary (and the parts a message may name: a structure's
# options, the model, the inputs). An error message must name one of these.
ARGUMENTS = (
    "model x y x_val y_val likelihood curvature structure structure_options prior alpha beta "
    "batch_size negative strategy max_memory progress noise method temperature n_samples seed fix_alpha "
    "fix_beta per_output tol max_iter rank block max_passes predictive diag max_block fast path"
).split()
_NAMED = re.compile(r"(?<![A-Za-z_])(" + "|".join(ARGUMENTS) + r")(?![A-Za-z_])")
SIGMA_ERRORS = (EvidenceError, InsufficientMemoryError)
SIGMA_DIR = os.path.dirname(sigma.__file__)
# sigma's own RuntimeWarnings (negative='clip' clipped eigenvalues; block Lanczos stopped at
# max_passes before tol) are expected; every other RuntimeWarning (NumPy's overflow, invalid
# value, divide by zero) is an error inside the checked call.
SIGMA_WARNINGS = (
    r"the (ggn|hessian) curvature has \d+ negative eigenvalue",
    r"block Lanczos stopped after",
)


class Refused(Exception):
    """The call raised an acceptable error (the test goes on with the next example)."""


def _raised_in_sigma(exc: BaseException) -> bool:
    """The innermost Python frame of the traceback is sigma's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(SIGMA_DIR)


def outcome(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under the invariant: returns its result, or raises
    :class:`Refused` for an acceptable error, or fails the test (AssertionError) with the
    unacceptable exception chained."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for message in SIGMA_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
        try:
            return fn(*args, **kwargs)
        except (ValueError, *SIGMA_ERRORS) as exc:
            kind = type(exc)
            own = kind is ValueError or issubclass(kind, SIGMA_ERRORS)
            if own and _raised_in_sigma(exc) and _NAMED.search(str(exc)):
                raise Refused(str(exc)) from None
            raise AssertionError(
                f"{kind.__module__}.{kind.__qualname__} that is not a sigma error naming an "
                f"argument: {exc}"
            ) from exc
        except Exception as exc:
            kind = type(exc)
            raise AssertionError(
                f"{kind.__module__}.{kind.__qualname__} escaped the public boundary: {exc}"
            ) from exc


def _gist(exc) -> str:
    """The first words of an error message, without numbers (an event label)."""
    return re.sub(r"[-+]?\d[\d.e+-]*|'[^']*'|\([^)]*\)", "…", str(exc))[:50]


def call(fn, *args, **kwargs):
    """:func:`outcome`, returning None for an acceptable error."""
    try:
        return outcome(fn, *args, **kwargs)
    except Refused as exc:
        event(f"refused: {_gist(exc)}")
        return None


def assert_finite(value, shape=None, what="result"):
    arr = np.asarray(value)
    assert arr.dtype.kind in "fiu", f"{what} has dtype {arr.dtype}"
    assert np.all(np.isfinite(arr)), f"{what} is not finite: {arr}"
    if shape is not None:
        assert arr.shape == tuple(shape), f"{what} has shape {arr.shape}, expected {shape}"


# -- models and data, built once ------------------------------------------------------------------
N_IN, N_OUT, N_TRAIN = 3, 2, 12
STRUCTURES = structures.names()
_MODELS: dict = {}
_FITTED: dict = {}


def model(dtype: str):
    if dtype not in _MODELS:
        _MODELS[dtype] = make_mlp(N_IN, (4,), N_OUT, dtype=dtype, seed=1)
    return _MODELS[dtype]


def n_params(dtype: str) -> int:
    return sum(int(np.prod(v.shape)) for v in model(dtype).trainable_variables)


_rng = np.random.default_rng(0)
X = _rng.normal(size=(N_TRAIN, N_IN))
Y = _rng.normal(size=(N_TRAIN, N_OUT))
LABELS = _rng.integers(0, N_OUT, N_TRAIN)


def good_y(likelihood):
    return LABELS if likelihood == "classification" else Y


def options(structure):
    return {"rank": 5} if structure == "lowrank" else None


def fitted(dtype, likelihood, structure, curvature="ggn", prior="scalar"):
    """A Laplace on the module's data (cached: use :func:`fresh` for one to modify)."""
    key = (dtype, likelihood, structure, curvature, prior)
    if key not in _FITTED:
        _FITTED[key] = sigma.Laplace(
            model(dtype),
            X,
            good_y(likelihood),
            likelihood=likelihood,
            structure=structure,
            structure_options=options(structure),
            curvature=curvature,
            prior=prior,
        )
    return _FITTED[key]


# -- strategies -----------------------------------------------------------------------------------
DTYPES = (
    "float64",
    "float32",
    "float16",
    "int64",
    "int32",
    "int8",
    "uint8",
    "bool",
    "complex64",
)
MAGNITUDES = (1.0, 1e-300, 1e-30, 1e3, 1e18, 1e30, 1e38, 1e39, 1e150, 1e300)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.lists(st.integers(-3, 3), max_size=3),
    st.tuples(st.floats(), st.floats()),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
    st.just(np.float64(np.nan)),
    st.just(np.int64(3)),
    st.just(np.array([])),
    st.just(np.array(["a", "b"])),
    st.just(np.array([1.0, 2.0])),
    st.just(np.ones((2, 2))),
    st.just(complex(1, 1)),
)

precision_floats = st.one_of(
    st.floats(),  # every float: 0, -0, subnormals, ±inf, nan, 1.8e308
    st.sampled_from([0.0, -1.0, 1e-300, 1e-30, 1e-8, 1.0, 25.0, 1e8, 1e30, 1e300]),
    st.sampled_from([np.float32(2.0), np.float16(0.5), np.int32(3), np.float64(1e-5)]),
    st.integers(-3, 10**6),
)


@st.composite
def precision_arrays(draw, lengths=(1, 2, 3, 5)):
    n = draw(st.sampled_from(lengths))
    shape = draw(st.sampled_from([(n,), (n, 1), (1, n), (2, n), ()]))
    dtype = draw(st.sampled_from(["float64", "float32", "int64", "bool", "complex128", "U3"]))
    if dtype == "U3":
        return np.full(shape, "1.0")
    values = draw(hnp.arrays("float64", shape, elements=precision_floats.map(float)))
    with np.errstate(all="ignore"):
        return values.astype(dtype)


def precisions(lengths=(1, 2, 3, 5)):
    """alpha/beta: numbers of every kind, arrays of right and wrong shapes, and junk."""
    return st.one_of(
        precision_floats,
        precision_floats,
        precision_arrays(lengths),
        precision_arrays(lengths).map(lambda a: a.tolist()),
        junk,
    )


@st.composite
def arrays(draw, n: int, width: int, *, labels: int | None = None):
    """A numeric array around shape (n, width): sometimes another rank, width or length, a
    dtype of any kind, NaN/inf at random positions, a magnitude up to 1e300."""
    if labels is not None and draw(st.booleans()):
        shape = (n,)
    else:
        shape = (n, width)
    if draw(st.integers(0, 3)) == 0:  # a wrong shape
        shape = draw(
            st.sampled_from(
                [
                    (n,),
                    (n, width + 1),
                    (n, max(width - 1, 0)),
                    (n + 1, width),
                    (0, width),
                    (n, width, 1),
                    (),
                    (1, width),
                ]
            )
        )
    dtype = draw(st.sampled_from(DTYPES) if draw(st.integers(0, 2)) == 0 else st.just("float64"))
    if labels is not None and draw(st.booleans()):
        base = draw(hnp.arrays("int64", shape, elements=st.integers(-1, labels)))
    else:
        base = draw(hnp.arrays("float64", shape, elements=st.floats(-3, 3)))
        if draw(st.integers(0, 2)) == 0:
            base = base * draw(st.sampled_from(MAGNITUDES))
    if base.size and draw(st.integers(0, 4)) == 0:  # non-finite values at random positions
        flat = base.astype("float64").ravel()
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, flat.size - 1))
            flat[i] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        base = flat.reshape(shape)
    with np.errstate(all="ignore"):
        arr = base.astype(dtype)
    form = draw(st.integers(0, 9))
    if form == 0:
        return arr.tolist()
    if form == 1 and arr.ndim:
        return arr.astype(object)
    return arr


def inputs(n: int):
    """x for the 3-input model: mostly (n, 3) float, otherwise anything :func:`arrays` makes,
    or junk."""
    return st.one_of(
        arrays(n, N_IN),
        arrays(n, N_IN),
        arrays(n, N_IN),
        junk,
        st.just(np.array(["a", "b", "c"] * n).reshape(n, 3)),
        st.just([X[:n], X[:n]]),
        st.just({"nope": X[:n]}),
    )


def valid_inputs(n: int):
    """x (n, 3) of any numeric dtype and magnitude (these must work, or be refused)."""
    return st.builds(
        lambda m, dtype: _cast(X[:n] * m, dtype),
        st.sampled_from(MAGNITUDES),
        st.sampled_from([d for d in DTYPES if d not in ("complex64", "bool")]),
    )


def _cast(a, dtype):
    with np.errstate(all="ignore"):
        return a.astype(dtype)


def targets(n: int, likelihood):
    if likelihood == "classification":
        good = st.just(LABELS[:n]) | st.just(np.eye(N_OUT)[LABELS[:n]])
        return st.one_of(good, good, arrays(n, N_OUT, labels=N_OUT), junk)
    return st.one_of(st.just(Y[:n]), arrays(n, N_OUT), arrays(n, N_OUT), junk)


def structure_choices(draw):
    name = draw(st.sampled_from(STRUCTURES) | junk)
    if isinstance(name, str) and name in STRUCTURES and draw(st.integers(0, 4)) == 0:
        return structures.get(name)(**(options(name) or {}))  # an unfitted instance
    return name


option_values = st.one_of(
    st.integers(-2, 40),
    st.sampled_from([0.5, 1e-3, 1.5, 1e300, float("nan"), "layerwise", "jacobian"]),
    st.booleans(),
    st.none(),
    junk,
)
OPTION_NAMES = ("rank", "tol", "block", "max_passes", "seed", "predictive", "diag", "max_block")
structure_options = st.one_of(
    st.none(),
    st.just({}),
    st.dictionaries(st.sampled_from(OPTION_NAMES + ("fast",)), option_values, max_size=3),
    junk,
)

prior_choices_names = st.sampled_from(["scalar", "layer", "variable"])


@st.composite
def priors(draw, p: int):
    kind = draw(st.integers(0, 5))
    if kind <= 2:
        return draw(prior_choices_names)
    if kind == 3:  # group ids, one per weight, maybe with gaps, wrong length, negative ids
        length = draw(st.sampled_from([p, p, p, p - 1, p + 1, 0]))
        ids = draw(hnp.arrays("int64", (max(length, 0),), elements=st.integers(-1, 4)))
        return ids.astype(draw(st.sampled_from(["int64", "int32", "float64", "bool", "U2"])))
    if kind == 4:
        return draw(hnp.arrays("float64", (p,), elements=st.floats()))
    return draw(junk)


batch_sizes = st.one_of(
    st.none(), st.integers(-2, 20), st.sampled_from([2.0, 2.5, 1e300, float("nan")]), junk
)
max_memories = st.one_of(
    st.none(),
    st.integers(-10, 10**12),
    st.sampled_from(
        ["2GB", "1 KiB", "10", "1e3", "abc", "-1MB", "", "1.5.3", "inf", "nan", "1e400"]
    ),
    st.floats(),
    junk,
)


VALID_OPTIONS = {
    "lowrank": st.fixed_dictionaries(
        {"rank": st.integers(1, 30)},
        optional={
            "tol": st.sampled_from([1e-6, 0.1, 0.9]),
            "block": st.integers(1, 8),
            "max_passes": st.integers(1, 4),
            "seed": st.integers(0, 2**31),
            "predictive": st.sampled_from(["layerwise", "jacobian"]),
            "diag": st.none() | st.booleans(),
        },
    ),
    "kfac": st.fixed_dictionaries(
        {}, optional={"max_block": st.integers(1, 64), "fast": st.booleans()}
    ),
    "diag": st.fixed_dictionaries({}, optional={"fast": st.booleans()}),
}


@st.composite
def valid_priors(draw, p: int):
    if draw(st.integers(0, 3)):
        return draw(prior_choices_names)
    g = draw(st.integers(1, 4))  # group ids 0 … g−1, every group used
    ids = np.concatenate(
        [np.arange(g), draw(hnp.arrays("int64", p - g, elements=st.integers(0, g - 1)))]
    )
    return (
        draw(st.permutations(ids.tolist()))
        if draw(st.booleans())
        else np.asarray(draw(st.permutations(ids.tolist())))
    )


valid_precisions = st.one_of(
    st.floats(min_value=1e-300, max_value=1e300),
    st.sampled_from([1e-300, 1e-30, 1e-8, 1.0, 25.0, 1e8, 1e30, 1e300]),
    st.integers(1, 10**6),
)
KEYWORDS = (
    "likelihood curvature structure structure_options prior alpha beta batch_size negative "
    "max_memory progress strategy temperature"
).split()


def laplace_keywords(draw, p):
    """Random values for every keyword of Laplace: each drawn valid (any valid value: every
    structure, extreme precisions, …), except a random few (none half the time) drawn from
    values of any type and any shape."""
    faults = st.sets(st.sampled_from(KEYWORDS + ["x", "y"]), min_size=1, max_size=2)
    bad = draw(faults) if draw(st.integers(0, 2)) == 0 else set()
    likelihood = draw(st.sampled_from(["regression", "classification"]))
    structure = draw(st.sampled_from(STRUCTURES))
    valid = {
        "likelihood": st.just(likelihood),
        "structure": st.just(structure)
        | st.builds(lambda: structures.get(structure)(**(options(structure) or {}))),
        "curvature": st.sampled_from(["ggn", "ggn", "hessian"]),
        "structure_options": VALID_OPTIONS.get(structure, st.none() | st.just({})),
        "prior": valid_priors(p),
        "alpha": valid_precisions | st.just(0.0),
        "beta": (
            valid_precisions
            | hnp.arrays("float64", N_OUT, elements=st.floats(min_value=1e-8, max_value=1e8))
            if likelihood == "regression"
            else st.just(1.0)
        ),
        "batch_size": st.none() | st.integers(1, 13),
        "negative": st.sampled_from(["keep", "clip"]),
        "max_memory": st.none() | st.sampled_from(["2GB", 10**12, 1e9, 100, "1 KiB"]),
        "progress": st.booleans(),
        "strategy": st.none(),
        "temperature": (
            st.floats(min_value=1e-3, max_value=1e3) | st.just(1.0)
            if likelihood == "classification"
            else st.just(1.0)
        ),
    }
    invalid = {
        "likelihood": st.sampled_from(["Regression", "", "binary"]) | junk,
        "structure": st.sampled_from(["Full", "layerwise", "banded", ""]) | junk,
        "curvature": st.sampled_from(["GGN", "fisher", ""]) | junk,
        "structure_options": structure_options,
        "prior": priors(p),
        "alpha": precisions(),
        "beta": precisions((N_OUT, 1, 3)),
        "batch_size": batch_sizes,
        "negative": st.sampled_from(["Keep", "none"]) | junk,
        "max_memory": max_memories,
        "progress": junk,
        "strategy": junk,
        "temperature": precisions(),
    }
    kw = {}
    for name in KEYWORDS:
        if name in bad:
            kw[name] = draw(invalid[name])
        elif name in ("likelihood", "structure") or draw(st.booleans()):
            kw[name] = draw(valid[name])
    if isinstance(kw["structure"], str) and "structure_options" not in kw:
        kw["structure_options"] = options(kw["structure"])
    if not isinstance(kw["structure"], str) and "structure_options" not in bad:
        kw.pop("structure_options", None)  # options go with a name, not an instance
    return kw, bad


# -- known open items (issue tracker of the core; fixed in parallel, do not fix here) --------------
def _big(a, dtype) -> bool:
    """Values large enough to overflow inside the network (squares, products of weights)."""
    try:
        arr = np.abs(np.asarray(a)).astype(np.float64).ravel()
    except (TypeError, ValueError):
        return False
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return False
    return float(np.abs(arr).max()) > 1e-3 * np.sqrt(np.finfo(dtype).max)


def _cause_in(err, kind, text, filename) -> bool:
    cause = err.__cause__
    if not isinstance(cause, kind) or text not in str(cause):
        return False
    frames = traceback.extract_tb(cause.__traceback__)
    return bool(frames) and frames[-1].filename.endswith(filename)


def triage(err: AssertionError, dtype, *values, n_samples=None) -> str | None:
    """The open item a failure belongs to (None: a new failure). Known items are being fixed
    in the core in parallel; open findings of this suite are listed in the fuzz report."""
    if any(_big(v, dtype) for v in values):
        return "known: non-finite curvature/predictive from overflow inside the network"
    return None


def settle(err: AssertionError, dtype, *values, n_samples=None):
    """Discard the example if its failure is an open item (counted as an event), else fail."""
    item = triage(err, dtype, *values, n_samples=n_samples)
    if item is None:
        raise err
    event(item)
    reject()


def _dataset(x, y, batch):
    """(x, y) as a dataset of batches when TensorFlow takes them, else x unchanged. (Unbatched
    datasets are a known open item: not drawn.)"""
    import tensorflow as tf

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    except Exception:  # noqa: BLE001 - whatever TensorFlow cannot slice stays an array
        return x


# -- the constructor ----------------------------------------------------------------------------
@scaled(40)
@given(data=st.data(), dtype=st.sampled_from(["float64", "float32"]))
def test_laplace_constructor(data, dtype):
    """Laplace(model, x, y, **random keywords): a posterior that predicts finite values, or
    a refusal naming the argument."""
    draw = data.draw
    kw, bad = laplace_keywords(draw, n_params(dtype))
    lik = kw["likelihood"] if isinstance(kw["likelihood"], str) else "regression"
    n = draw(st.sampled_from([N_TRAIN, 5, 1]))
    x = draw(inputs(n) if "x" in bad else valid_inputs(n))
    y = draw(targets(n, lik) if "y" in bad else st.just(good_y(lik)[:n]))
    arrays_xy = x, y  # (for the triage of a failure)
    if draw(st.integers(0, 5)) == 0:  # a batched tf.data.Dataset of (x, y) (y=None, or not)
        x, y = _dataset(x, y, draw(st.integers(1, 13))), draw(st.none() | st.just(y))
    try:
        la = outcome(sigma.Laplace, model(dtype), x, y, **kw)
    except Refused as exc:
        event(f"refused: {_gist(exc)}")
        return
    except AssertionError as err:
        settle(err, dtype, *arrays_xy)
    event(f"fitted: {la.structure.name} {la.likelihood.name} {la.curvature}")
    event(f"bad keywords: {len(bad)}")
    # whatever it accepted, it answers with finite values
    _check_answers(la, dtype, *arrays_xy)


def _check_answers(la, dtype, x, y):
    x_new = X[:4]
    try:
        if la.likelihood.has_beta:
            mean, std = outcome(la.predict, x_new)
            assert_finite(mean, (4, N_OUT), "mean")
            assert_finite(std, (4, N_OUT), "std")
            assert np.all(std > 0)
        else:
            probs = outcome(la.predict_proba, x_new)
            assert_finite(probs, (4, N_OUT), "probabilities")
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        assert_finite(outcome(lambda: la.gamma), (), "gamma")
        # round-off: γ_g = P_g − α_g Tr_g(A⁻¹) cancels for a huge α (open finding: γ ≈ −4e-15)
        assert -1e-9 * la.n_params <= la.gamma <= la.n_params * (1 + 1e-9)
        assert_finite(outcome(la.log_evidence), (), "log_evidence")
    except Refused:
        return
    except AssertionError as err:
        settle(err, dtype, x, y)


# -- predict / predict_proba ------------------------------------------------------------------------
predict_keywords = st.fixed_dictionaries(
    {},
    optional={
        "noise": st.booleans() | junk,
        "batch_size": batch_sizes,
        "method": st.sampled_from(
            ["probit", "mc", "mean_field", "mean_field_diag", "bridge", "MC", ""]
        )
        | junk,
        "n_samples": st.integers(-1, 50) | st.sampled_from([2.0, 2.5, 1e300]) | junk,
        "seed": st.integers(-(2**64), 2**64) | junk,
    },
)


@scaled(40)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float64", "float32"]),
    likelihood=st.sampled_from(["regression", "classification"]),
    structure=st.sampled_from(STRUCTURES),
)
def test_predict(data, dtype, likelihood, structure):
    la = fitted(dtype, likelihood, structure)
    n = data.draw(st.sampled_from([1, 4, 7]))
    x = data.draw(inputs(n))
    kw = data.draw(predict_keywords)
    if likelihood == "regression":
        kw.pop("method", None), kw.pop("n_samples", None), kw.pop("seed", None)
    elif "noise" in kw:  # classification's predict passes on these only
        del kw["noise"]
    try:
        result = outcome(la.predict, x, **kw)
        n = len(x)  # accepted: an array-like of samples
        if likelihood == "regression":
            mean, std = result
            assert_finite(mean, (n, N_OUT), "mean")
            assert_finite(std, (n, N_OUT), "std")
            assert np.all(std >= 0)
        else:
            assert_finite(result, (n, N_OUT), "probabilities")
            np.testing.assert_allclose(result.sum(axis=1), 1.0, rtol=1e-6)
    except Refused:
        return
    except AssertionError as err:
        settle(err, dtype, x, n_samples=kw.get("n_samples"))


_SERVED: dict = {}


def served(dtype, likelihood, structure):
    """``fitted(...).to_keras()`` (cached)."""
    key = (dtype, likelihood, structure)
    if key not in _SERVED:
        _SERVED[key] = fitted(dtype, likelihood, structure).to_keras()
    return _SERVED[key]


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@scaled(6)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float64", "float32"]),
    likelihood=st.sampled_from(["regression", "classification"]),
    structure=st.sampled_from(STRUCTURES),
)
def test_the_served_model_refuses_what_predict_refuses(data, dtype, likelihood, structure):
    """issue 19: on (n, 3) inputs of any float value (NaN, ±inf, subnormals, 1e308) the served
    model (``to_keras``) gives ``predict``'s answer, or raises its in-graph refusal (an
    InvalidArgumentError starting "sigma:") exactly when ``predict`` refuses."""
    la, model = fitted(dtype, likelihood, structure), served(dtype, likelihood, structure)
    n = data.draw(st.sampled_from([1, 4]))
    x = data.draw(
        hnp.arrays("float64", (n, N_IN), elements=st.floats(width=64))
        | st.builds(lambda m: X[:n] * m, st.sampled_from(MAGNITUDES))
    )
    try:
        expected = outcome(la.predict, x)
    except Refused:
        expected = None
    try:
        got = model(x)
    except tf.errors.InvalidArgumentError as exc:
        assert expected is None, f"the served model refused what predict answers: {exc}"
        assert "sigma: " in str(exc)
        return
    assert expected is not None, "the served model answered what predict refuses"
    rtol = 1e-10 if dtype == "float64" else 1e-4
    if likelihood == "regression":
        np.testing.assert_allclose(got["mean"], expected[0], rtol=rtol)
        np.testing.assert_allclose(got["std"], expected[1], rtol=rtol)
    else:
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-12)


@scaled(10)
@given(data=st.data(), structure=st.sampled_from(STRUCTURES))
def test_predict_proba_of_regression_and_bad_keywords(data, structure):
    la = fitted("float64", data.draw(st.sampled_from(["regression", "classification"])), structure)
    kw = data.draw(predict_keywords)
    kw.pop("noise", None)
    try:
        probs = outcome(la.predict_proba, X[:3], **kw)
    except Refused:
        return
    except AssertionError as err:
        settle(err, "float64", n_samples=kw.get("n_samples"))
    assert_finite(probs, (3, N_OUT), "probabilities")


# -- precisions -----------------------------------------------------------------------------------
@scaled(40)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float64", "float32"]),
    likelihood=st.sampled_from(["regression", "classification"]),
    structure=st.sampled_from(STRUCTURES),
    prior=st.sampled_from(["scalar", "layer"]),
)
def test_log_evidence(data, dtype, likelihood, structure, prior):
    try:  # a structure may refuse a grouping (ekfac: one α per layer), naming it
        la = outcome(fitted, dtype, likelihood, structure, prior=prior)
    except Refused:
        return
    kw = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alpha": precisions((1, 2, 3)),
                "beta": precisions((1, 2, 3)),
            },
        )
    )
    try:
        value = outcome(la.log_evidence, **kw)
    except Refused:
        return
    if from_eigenvalues(la.posterior):
        shape = np.broadcast_shapes(*(np.shape(v) for v in kw.values()))
    else:  # open finding: the non-spectral path returns a float even for alpha=[1.0]
        shape = ()
    assert_finite(value, shape, "log_evidence")


@scaled(30)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float64", "float32"]),
    likelihood=st.sampled_from(["regression", "classification"]),
    structure=st.sampled_from(STRUCTURES),
    prior=st.sampled_from(["scalar", "layer", "variable"]),
)
def test_precision_setters(data, dtype, likelihood, structure, prior):
    """la.alpha = …, la.beta = … refuse or leave a posterior that predicts finite values."""
    try:  # a structure may refuse a grouping (ekfac: one α per layer), naming it
        la = outcome(fitted, dtype, likelihood, structure, prior=prior)
    except Refused:
        return
    saved = la.posterior  # an immutable value
    try:
        for name in data.draw(st.lists(st.sampled_from(["alpha", "beta"]), min_size=1, max_size=2)):
            value = data.draw(precisions((1, 2, 3, la.prior.n_groups)))
            try:
                outcome(setattr, la, name, value)
            except Refused:
                continue
            _check_answers(la, dtype, X, Y)
    finally:
        la.posterior = saved


# -- optimize_evidence ------------------------------------------------------------------------------
@scaled(30)
@given(
    data=st.data(),
    dtype=st.sampled_from(["float64", "float32"]),
    likelihood=st.sampled_from(["regression", "classification"]),
    structure=st.sampled_from(STRUCTURES),
    prior=st.sampled_from(["scalar", "layer"]),
)
def test_optimize_evidence(data, dtype, likelihood, structure, prior):
    try:  # a structure may refuse a grouping (ekfac: one α per layer), naming it
        la = outcome(fitted, dtype, likelihood, structure, prior=prior)
    except Refused:
        return
    saved = la.posterior
    kw = data.draw(
        st.fixed_dictionaries(
            {},
            optional={
                "fix_alpha": st.booleans() | junk,
                "fix_beta": st.booleans() | junk,
                "per_output": st.none() | st.booleans() | junk,
                "tol": st.sampled_from([1e-8, 1e-3, 0.5, 1.0, 10.0, 1e-300, 0.0, -1.0])
                | st.floats()
                | junk,
                "max_iter": st.integers(-1, 50) | st.sampled_from([1.0, 2.5, 1e300]) | junk,
            },
        )
    )
    start = data.draw(st.sampled_from([None, 0.0, 1e-300, 1e-8, 1e8, 1e300]))
    try:
        if start is not None:
            try:
                outcome(setattr, la, "alpha", start)
            except Refused:
                return
        try:
            result = outcome(la.optimize_evidence, **kw)
        except Refused:
            return
        except AssertionError as err:
            settle(err, dtype)
        assert result is la
        assert_finite(la.alpha, (la.prior.n_groups,) if not la.prior.scalar else (), "alpha")
        assert_finite(la.beta, None, "beta")
        assert np.all(np.asarray(la.alpha) > 0) and np.all(np.asarray(la.beta) > 0)
        _check_answers(la, dtype, X, Y)
    finally:
        la.posterior = saved


# -- a model the boundary must refuse ---------------------------------------------------------------
@scaled(5)
@given(model_value=junk | st.just(keras.Sequential([keras.layers.Dense(2)])))
def test_model_argument(model_value):
    try:
        outcome(sigma.Laplace, model_value, X, Y)
    except Refused:
        return
    raise AssertionError(f"Laplace accepted model={model_value!r}")


# -- awkward models: half precision, no weights, sigmoid and binary heads, Embedding, unbatched ---
def _awkward(kind: str):
    """A tiny model of an awkward kind, built once."""
    if kind in _MODELS:
        return _MODELS[kind]
    keras.utils.set_random_seed(2)
    layers = keras.layers
    if kind in ("float16", "bfloat16"):
        net = keras.Sequential(
            [keras.Input((N_IN,)), layers.Dense(4, dtype=kind), layers.Dense(N_OUT, dtype=kind)]
        )
    elif kind == "no weights":
        net = keras.Sequential([keras.Input((N_IN,)), layers.Activation("tanh")])
    elif kind == "frozen":
        net = keras.Sequential([keras.Input((N_IN,)), layers.Dense(N_OUT)])
        net.trainable = False
    elif kind in ("sigmoid", "binary"):
        head = layers.Dense(1, activation="sigmoid" if kind == "sigmoid" else None)
        net = keras.Sequential([keras.Input((N_IN,)), layers.Dense(4, activation="tanh"), head])
    else:  # "embedding": indices into a table of 5 rows
        net = keras.Sequential(
            [keras.Input((N_IN,), dtype="int32"), layers.Embedding(5, 2), layers.Flatten(),
             layers.Dense(N_OUT)]
        )  # fmt: skip
    _MODELS[kind] = net
    return net


AWKWARD = ["float16", "bfloat16", "no weights", "frozen", "sigmoid", "binary", "embedding"]


@scaled(30)
@given(
    data=st.data(),
    kind=st.sampled_from(AWKWARD),
    structure=st.sampled_from(STRUCTURES),
    likelihood=st.sampled_from(["regression", "classification"]),
    unbatched=st.booleans(),
)
def test_awkward_models(data, kind, structure, likelihood, unbatched):
    """Awkward models and data: a finite answer or a refusal naming the argument."""
    import tensorflow as tf

    draw = data.draw
    net = _awkward(kind)
    n = draw(st.integers(1, N_TRAIN))
    if kind == "embedding":
        x = draw(
            hnp.arrays(np.float64, (n, N_IN), elements=st.sampled_from([-1, 0, 1.5, 2, 4, 5, 7]))
        )
    else:
        x = draw(hnp.arrays(np.float64, (n, N_IN), elements=st.floats(-3, 3)))
    k = net.output_shape[-1] if kind not in ("no weights",) else N_IN
    if likelihood == "classification":
        y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(-1, max(k, 2))))
    else:
        y = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-3, 3)))
    x_given = tf.data.Dataset.from_tensor_slices((x, y)) if unbatched else x
    y_given = None if unbatched else y
    options = {"rank": 3} if structure == "lowrank" else None
    la = call(
        sigma.Laplace, net, x_given, y_given, likelihood=likelihood, structure=structure,
        structure_options=options,
    )  # fmt: skip
    if la is None:
        return
    regression_ok = kind == "sigmoid" and likelihood == "regression"  # a bounded regression
    assert kind in ("binary", "embedding") or regression_ok, f"a {kind} model was accepted"
    assert not unbatched, "an unbatched dataset was accepted"
    result = call(la.predict, x)
    if result is not None:
        for part in result if isinstance(result, tuple) else (result,):
            assert_finite(part, (n, k))


# -- what the fuzzing found (fixed), as fixed regression cases ---------------------------------------
_EMPTY = np.array([])
FOUND = {
    "predict_proba(method=array)": (
        lambda: fitted("float64", "classification", "full").predict_proba(X, method=_EMPTY),
        "method",
    ),
    "lowrank log_evidence(alpha=[])": (
        lambda: fitted("float64", "regression", "lowrank").log_evidence(alpha=_EMPTY),
        "alpha",
    ),
    "Laplace(curvature=array)": (
        lambda: sigma.Laplace(model("float64"), X, Y, curvature=_EMPTY),
        "curvature",
    ),
    "Laplace(negative=array)": (
        lambda: sigma.Laplace(model("float64"), X, Y, negative=_EMPTY),
        "negative",
    ),
    "Laplace(likelihood=[])": (
        lambda: sigma.Laplace(model("float64"), X, Y, likelihood=[]),
        "likelihood",
    ),
    "Laplace(progress=array)": (
        lambda: sigma.Laplace(model("float64"), X, Y, progress=_EMPTY),
        "progress",
    ),
    "predict(noise=array)": (
        lambda: fitted("float64", "regression", "full").predict(X, noise=_EMPTY),
        "noise",
    ),
    "optimize_evidence(per_output=array)": (
        lambda: fitted("float64", "regression", "full").optimize_evidence(per_output=_EMPTY),
        "per_output",
    ),
    "predict_proba(method='mc', seed=-1)": (
        lambda: fitted("float64", "classification", "full").predict_proba(X, method="mc", seed=-1),
        "seed",
    ),
    "predict_proba(method='mc', seed=1.5)": (
        lambda: fitted("float64", "classification", "full").predict_proba(X, method="mc", seed=1.5),
        "seed",
    ),
    "lowrank seed=None": (
        lambda: sigma.Laplace(
            model("float64"), X, Y, structure="lowrank", structure_options={"seed": None}
        ),
        "seed",
    ),
    "kfac max_block='a'": (
        lambda: sigma.Laplace(
            model("float64"), X, Y, structure="kfac", structure_options={"max_block": "a"}
        ),
        "max_block",
    ),
    "prior=strings": (
        lambda: sigma.Laplace(model("float64"), X, Y, prior=np.array(["a"] * n_params("float64"))),
        "prior",
    ),
    "prior=1e20": (
        lambda: sigma.Laplace(model("float64"), X, Y, prior=np.full(n_params("float64"), 1e20)),
        "prior",
    ),
    "full prior='layer' log_evidence(alpha=2.1e-143)": (
        lambda: fitted("float64", "regression", "full", prior="layer").log_evidence(alpha=2.1e-143),
        "alpha",
    ),
    "full prior='layer' log_evidence(beta=1.5e307)": (
        lambda: fitted("float64", "regression", "full", prior="layer").log_evidence(beta=1.5e307),
        "beta",
    ),
    "beta=2.2e-311 (1/beta overflows)": (
        lambda: setattr(fitted("float64", "regression", "diag"), "beta", 2.2e-311),
        "beta",
    ),
    "structure instance with structure_options=array": (
        lambda: sigma.Laplace(
            model("float64"), X, Y, structure=structures.get("diag")(), structure_options=_EMPTY
        ),
        "structure_options",
    ),
    # issue 19 (a second adversarial pass)
    "optimize_prior on one held-out point": (
        lambda: fitted("float64", "regression", "diag").optimize_prior(X[:1], Y[:1]),
        "x_val",
    ),
    "optimize_prior(metric='ece') on 9 samples": (
        lambda: fitted("float64", "classification", "diag").optimize_prior(
            X[:9], LABELS[:9], metric="ece"
        ),
        "x_val",
    ),
    "relu network on inputs of 1e18 (βC beyond the round-off of α)": (
        lambda: sigma.Laplace(
            make_mlp(N_IN, (4,), 1, dtype="float32", activation="relu"),
            np.full((8, N_IN), 1e18, "float32"),
            Y[:8, :1],
        ),
        "alpha",
    ),
    "save to an existing directory": (
        lambda: fitted("float64", "regression", "diag").save(tempfile.gettempdir()),
        "path",
    ),
    "load a file that is not a sigma file": (
        lambda: sigma.Laplace.load(os.path.join(SIGMA_DIR, "__init__.py"), model("float64")),
        "path",
    ),
}


@pytest.mark.parametrize("case", FOUND)
def test_found_by_fuzzing(case):
    fn, name = FOUND[case]
    with pytest.raises(Refused, match=rf"\b{name}\b"):
        outcome(fn)
