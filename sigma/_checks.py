"""Validation at the API boundary: clear ValueErrors that name the argument.

Every public function of :mod:`sigma` calls these before touching TensorFlow, so that bad input
never surfaces as a stack trace from deep inside a graph.
"""

from __future__ import annotations

import numbers

import keras
import numpy as np

from sigma import keras_compat


def check_model(model, name: str = "model") -> None:
    """Raise if ``model`` is not a built Keras model with trainable weights."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"{name} must be a keras.Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(
            f"{name} is not built: call it once on data or call "
            f"{name}.build(input_shape) before asking for its curvature"
        )
    if not model.trainable_variables:
        frozen = (
            f" ({len(model.weights)} weights, all frozen: trainable=False)" if model.weights else ""
        )
        raise ValueError(
            f"{name} has no trainable weights{frozen}: the error bar σ comes from the "
            "uncertainty of the trainable weights, so there is none to compute; give it "
            "trainable layers (or set layer.trainable = True on the ones σ should cover)"
        )
    dtypes = {str(v.dtype) for v in model.trainable_variables}
    if len(dtypes) != 1:
        raise ValueError(
            f"{name} mixes trainable weight dtypes {sorted(dtypes)}: use one dtype for all "
            "trainable weights (e.g. build it under keras.config.set_dtype_policy('float64'))"
        )
    half = dtypes & {"float16", "bfloat16"}
    if half:
        raise ValueError(
            f"{name} has {half.pop()} weights: the curvature, its eigenvalues and σ are not "
            "reliable in half precision (3 significant digits for float16, 2 for bfloat16; "
            "float16 overflows at 65,504). Compute σ on a float32 copy with the same weights: "
            f"sigma.Laplace(sigma.full_precision({name}), ...)"
        )
    mixed = sorted(
        {
            layer.name
            for layer in keras_compat.layers(model)
            if getattr(layer, "dtype_policy", None) is not None
            and layer.dtype_policy.compute_dtype != layer.dtype_policy.variable_dtype
        }
    )
    if mixed:
        raise ValueError(
            f"{name} uses a mixed-precision dtype policy (layers {mixed[:5]} compute in a "
            "different dtype than their weights): curvature in half precision is not reliable; "
            f"compute σ on a float32 copy with the same weights: sigma.full_precision({name})"
        )


def model_dtype(model) -> str:
    """The (single) dtype of the model's trainable weights, e.g. 'float32'."""
    return str(model.trainable_variables[0].dtype)


def as_array(value, name: str, *, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """Convert to a float NumPy array, refusing NaN/inf and the wrong rank."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name} could not be converted to an array: {exc}") from exc
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if arr.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have rank {want}, got shape {arr.shape}")
    if arr.size and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return arr


def model_inputs(model) -> list[tuple[str, tuple]] | None:
    """(name, shape) of each declared input of the model, or None (a subclassed model that
    declares none)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return [
        (str(getattr(inp, "name", f"input_{i}")), tuple(inp.shape)) for i, inp in enumerate(inputs)
    ]


def n_samples(x) -> int:
    """The number of samples of x (an array, or a list/dict of arrays: its first part)."""
    import tensorflow as tf

    return int(np.shape(tf.nest.flatten(x)[0])[0])


def take(x, index):
    """x[index] for an array or every part of a list/dict of arrays."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda a: a[index], x)


def _is_parts(x, declared) -> bool:
    """A list/tuple holds one array per model input (not the rows of one array)."""
    if not isinstance(x, list | tuple) or not x:
        return False
    if declared is not None:
        return len(declared) > 1
    return len(x) > 1 and all(hasattr(a, "shape") and len(a.shape) >= 1 for a in x)


def check_inputs(model, x, name: str = "x", *, dtype: str | None = None):
    """Check ``x`` against the model's inputs and cast it to the model's dtype.

    x : an array (N, ...) for a model with one input; for several inputs a list/tuple in the
        order of ``model.inputs`` or a dict by input name. Every part must be numeric, finite,
        hold the same N ≥ 1 samples and match its input's declared shape; the values must fit
        the model's dtype (1e39 overflows float32). Returns the same structure (a list for a
        tuple) of arrays in ``dtype`` (default: the model's). Raises ValueError naming the part.
    """
    dtype = dtype or model_dtype(model)
    declared = model_inputs(model)
    vocab = embedding_inputs(model)
    if isinstance(x, dict):
        if declared is not None:
            names = [n for n, _ in declared]
            missing = [n for n in names if n not in x]
            if missing:
                raise ValueError(
                    f"{name} is missing the model's input(s) {missing}: pass a dict with the "
                    f"keys {names}"
                )
            unknown = [k for k in x if k not in names]
            if unknown:
                raise ValueError(
                    f"{name} has key(s) {unknown} that are not inputs of the model (its inputs: "
                    f"{names})"
                )
            shapes = dict(declared)
        else:
            shapes = {}
        index = {n: i for i, (n, _) in enumerate(declared or [])}
        parts = {
            k: _check_part(v, f"{name}[{k!r}]", shapes.get(k), dtype, vocab.get(index.get(k)))
            for k, v in x.items()
        }
    elif _is_parts(x, declared):
        if declared is not None and len(x) != len(declared):
            raise ValueError(
                f"{name} must hold one array per model input, {len(declared)} "
                f"({[n for n, _ in declared]}), got {len(x)}"
            )
        parts = [
            _check_part(
                v, f"{name}[{i}]", None if declared is None else declared[i][1], dtype, vocab.get(i)
            )
            for i, v in enumerate(x)
        ]
    else:
        if declared is not None and len(declared) > 1:
            raise ValueError(
                f"the model has {len(declared)} inputs {[n for n, _ in declared]}: pass {name} "
                "as a list in that order or a dict by input name"
            )
        return _check_part(
            x, name, None if declared is None else declared[0][1], dtype, vocab.get(0)
        )
    sizes = {k: len(v) for k, v in (parts.items() if isinstance(parts, dict) else enumerate(parts))}
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"the parts of {name} hold different numbers of samples: {sizes}; they must match"
        )
    return parts


def embedding_inputs(model) -> dict[int, list[tuple[str, int]]]:
    """{position in ``model.inputs``: [(Embedding layer name, input_dim), ...]} for the inputs
    that feed an Embedding layer directly (their values are indices into its table)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return {}
    if not inputs:
        return {}
    position = {id(t): i for i, t in enumerate(inputs)}
    found: dict[int, list[tuple[str, int]]] = {}
    for layer in keras_compat.layers(model):
        if isinstance(layer, keras.layers.Embedding):
            for t in keras_compat.inbound_tensors(layer):
                if id(t) in position:
                    found.setdefault(position[id(t)], []).append((layer.name, layer.input_dim))
    return found


def _check_indices(arr, name, tables) -> None:
    """Embedding indices: integers in [0, input_dim) of every table the input feeds."""
    if arr.size and not np.all(arr == np.round(arr)):
        raise ValueError(
            f"{name} feeds the Embedding layer {tables[0][0]!r} and must hold integer indices, "
            "got non-integer values (they would be truncated silently)"
        )
    for layer, size in tables:
        if arr.size and (arr.min() < 0 or arr.max() >= size):
            raise ValueError(
                f"{name} feeds the Embedding layer {layer!r} of {size} rows: its indices must "
                f"be in [0, {size}), got values in [{arr.min():g}, {arr.max():g}]"
            )


def _check_part(value, name, expected, dtype, tables=None) -> np.ndarray:
    arr = as_array(value, name)
    if tables:
        _check_indices(arr, name, tables)
    if arr.ndim < 1 or arr.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one sample along axis 0, got shape {arr.shape}"
        )
    if expected is not None:
        if arr.ndim != len(expected):
            raise ValueError(
                f"{name} must have rank {len(expected)} (samples, "
                f"{', '.join(map(str, expected[1:]))}) to match the model's input, got shape "
                f"{arr.shape}"
            )
        for got, want in zip(arr.shape[1:], expected[1:], strict=True):
            if want is not None and got != want:
                raise ValueError(
                    f"{name} has shape {arr.shape}, but the model expects (N, "
                    f"{', '.join(str(d) for d in expected[1:])})"
                )
    with np.errstate(over="ignore"):
        cast = arr.astype(dtype)
    if cast.size and not np.all(np.isfinite(cast)):
        raise ValueError(
            f"{name} has values beyond the range of the model's dtype {dtype} (largest "
            f"|value| {np.abs(arr).max():.3g}): they overflow to inf; rescale the inputs"
        )
    return cast


def check_positive_int(value, name: str) -> int:
    """A positive integer (an int, or an integral float/NumPy integer); never a bool or str."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not float(value).is_integer()
        or value < 1
    ):
        shown = f"{value!r} ({type(value).__name__})" if isinstance(value, str) else repr(value)
        raise ValueError(f"{name} must be a positive integer, got {shown}")
    return int(value)


def check_seed(value, name: str = "seed") -> int | None:
    """A random seed: a non-negative integer (an int or NumPy integer; never a bool), or None
    for NumPy's fresh, non-reproducible entropy."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
    return int(value)


def check_batch_size(value, name: str = "batch_size") -> int:
    """A batch size: a positive integer."""
    return check_positive_int(value, name)


def check_precision(value, name: str, *, allow_zero: bool) -> float:
    """A prior/noise precision: a finite real, > 0 (or >= 0 when ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        op = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {op}, got {value}")
    if value > MAX_PRECISION:
        raise ValueError(_too_large(name, value))
    return value


MAX_PRECISION = 1e150  # larger precisions overflow float64 in α·E_W, β·c, ln|A|


def _too_large(name, value) -> str:
    return (
        f"{name} must be at most {MAX_PRECISION:g} (a larger precision overflows the float64 "
        f"arithmetic of the evidence and the posterior), got {value:g}"
    )


def check_precisions(value, name: str, *, allow_zero: bool = True) -> np.ndarray:
    """Precisions given as a number or an array of numbers (a grid, or one per group): a
    float64 array, finite, ≥ 0 (> 0 unless ``allow_zero``); a ValueError naming ``name``."""
    if np.ndim(value) == 0 and not isinstance(value, np.ndarray):
        return np.asarray(check_precision(value, name, allow_zero=allow_zero))
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind not in "iuf":
            raise TypeError
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a real number or an array of real numbers, got {type(value).__name__}"
        ) from None
    op = ">= 0" if allow_zero else "> 0"
    bad = ~np.isfinite(arr) | (arr < 0) | ((arr == 0) & (not allow_zero))
    if np.any(bad):
        raise ValueError(
            f"{name} must be finite numbers {op}, got {arr.flat[int(np.argmax(bad.ravel()))]}"
        )
    if arr.size and arr.max() > MAX_PRECISION:
        raise ValueError(_too_large(name, float(arr.max())))
    return arr


def check_finite_outputs(model, x, f, name: str = "x") -> None:
    """Raise when the model's outputs f on (finite) inputs x hold NaN or inf: the values
    overflow inside the network. Names the first layer whose output is not finite when the
    model's layers can be probed (Sequential and functional models)."""
    f = np.asarray(f)
    finite = np.all(np.isfinite(f.reshape(len(f), -1)), axis=1)
    if finite.all():
        return
    rows = np.flatnonzero(~finite)
    raise ValueError(
        f"the model's outputs are NaN or infinite for {rows.size} of the {len(f)} samples of "
        f"{name} (the first: sample {rows[0]}){_first_non_finite_layer(model, take(x, rows[:8]))}"
        f", although {name} itself is finite: values overflow inside the network. Rescale "
        f"{name} (or the weights), or compute in float64"
    )


def _first_non_finite_layer(model, x) -> str:
    import tensorflow as tf

    try:
        layers = list(model.layers)
        try:
            inputs = model.input  # the structure the model was built with (a dict, ...)
        except AttributeError:  # a Sequential model
            inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        probe = keras.Model(inputs, [layer.output for layer in layers])
        outputs = probe(x, training=False)
    except Exception:  # a subclassed model, a layer called several times: no location
        return ""
    for layer, out in zip(layers, outputs, strict=True):
        if not all(np.all(np.isfinite(np.asarray(o))) for o in tf.nest.flatten(out)):
            return f"; the first layer with non-finite output is {layer.name!r} ({type(layer).__name__})"
    return ""


def has_non_finite(value) -> bool:
    """True if a float array (or a list/tuple/dict of them, nested) holds NaN or inf."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not np.all(np.isfinite(value))
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_non_finite(v) for v in value)
    return False


def ill_conditioned_hint(
    top: float,
    alpha: float,
    x=None,
    scalar: bool = True,
    tempered: bool | None = False,
    alpha_max: float = 0.0,
) -> str:
    """Why A = D_α + βC is refused when α is below the round-off of βC's largest eigenvalue
    ``top`` (A's condition number beyond 1/ROUNDOFF: its smallest eigenvalues are round-off,
    positive or negative by chance), and what helps. ``alpha``: the smallest α; ``x``: the training inputs (arrays, or a
    list/dict of them), whose magnitude is named when it is the likely cause; ``tempered``: β
    is 1/temperature (a classifier), so the remedy is a larger temperature, not a smaller β;
    None: the likelihood has neither (heteroscedastic), only α helps."""
    from sigma.evidence import ROUNDOFF

    which = "alpha" if scalar else "the smallest alpha"
    cause = ""
    parts = [] if x is None else [np.asarray(p) for p in _leaves(x) if hasattr(p, "dtype")]
    floats = [p for p in parts if p.dtype.kind == "f" and p.size]
    big = max((float(np.max(np.abs(p))) for p in floats), default=0.0)
    if big > 1e3:
        cause = (
            f" The inputs reach |x| = {big:.3g}: a layer's curvature grows as the square of the "
            "scale of its inputs."
        )
    # the likelihood's other scale of βC: 1/T for a classifier, β for regression, none for a
    # heteroscedastic model (its noise is its own output)
    other = {True: " (or a larger temperature)", False: " (or a smaller beta)", None: ""}[tempered]
    if alpha_max > 0.5 * top:  # the largest α, not the curvature, sets A's largest eigenvalue
        return (
            f"the largest alpha ({alpha_max:g}) is {top / alpha:.2g} times {which} = {alpha:g}: "
            f"A's condition number exceeds {1 / ROUNDOFF:.0e}, and its smallest eigenvalues are "
            "below the round-off of its largest, so neither A nor the error bars can be "
            "trusted. Bring the groups' alphas within a factor of "
            f"{1 / ROUNDOFF:.0e} of each other"
        )
    return (
        f"beta*C's largest eigenvalue is {top:.3g}, {top / alpha:.2g} times {which} = "
        f"{alpha:g}: A's condition number exceeds {1 / ROUNDOFF:.0e}, and its smallest "
        f"eigenvalues are below the round-off of its largest (~{top * np.finfo(float).eps:.2g} "
        f"in float64), so neither A nor the error bars can be trusted.{cause} What helps: "
        f"standardise the inputs (e.g. (x - mean)/std per feature) and retrain, or alpha >= "
        f"{top * ROUNDOFF * 10:.3g}{'' if scalar else ' for every group'}{other}, "
        "a prior that is not lost in round-off"
    )


def _leaves(x) -> list:
    if isinstance(x, dict):
        return [v for value in x.values() for v in _leaves(value)]
    if isinstance(x, list | tuple):
        return [v for value in x for v in _leaves(value)]
    return [x]


def input_scale(x) -> float | None:
    """The largest |value| of the float arrays in x (an array, or a list/dict of them), or
    None when there is none (what :func:`ill_conditioned_hint` names as a likely cause)."""
    parts = [np.asarray(p) for p in _leaves(x) if hasattr(p, "dtype")]
    floats = [p for p in parts if p.dtype.kind == "f" and p.size]
    return max((float(np.max(np.abs(p))) for p in floats), default=None)
