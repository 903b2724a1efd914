"""Shipping σ with the model: a Keras model that computes the Laplace predictive in its graph.

``Laplace.to_keras()`` wraps the trained model and the fitted posterior in one
:class:`keras.Model` whose output is ``{"mean": (N, K), "std": (N, K)}`` for regression (std
with the 1/β noise; for ``likelihood="heteroscedastic"`` the noise head's σ²(x) instead) or
the class probabilities (N, K) for classification (probit, one softmax
per head). The posterior enters as the non-trainable weights of a :class:`PredictiveLayer`
(per structure: the factor S of A⁻¹ = S Sᵀ for ``full``, the per-block inverse
eigenvalues and rotations for ``diag``/``kfac``, the low-rank and diagonal parts for
``lowrank``), and the variance diag J(x) A⁻¹ J(x)ᵀ is computed by TensorFlow ops — per-sample
Jacobians, or the layer inputs and output sensitivities — at the precisions of the Laplace
when it was exported.

So the result can be saved and served like any Keras model:

* ``model.save("m.keras")`` and ``keras.saving.load_model("m.keras")`` where sigma is
  installed (the layer is registered as ``sigma>PredictiveLayer``);
* ``model.export("dir")`` writes a TensorFlow SavedModel whose ``serve`` signature carries the
  error bars to TensorFlow Serving or any TensorFlow runtime, without sigma.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import tensorflow as tf

from sigma import keras_compat, likelihoods, predictive, structures, weights
from sigma._checks import model_dtype
from sigma.curvature.capture import flat_outputs
from sigma.curvature.engine import engine

# What the served model says when it refuses (tf.errors.InvalidArgumentError, in the graph: in
# eager calls, model.predict, the reloaded .keras file and the exported SavedModel alike).
NON_FINITE_INPUT = "sigma: {} contains NaN or infinite values (in the model's dtype), refused"
NON_FINITE_OUTPUTS = (
    "sigma: the model's outputs are not finite at these inputs (overflow inside the network), "
    "refused"
)
NON_FINITE_NOISE = (
    "sigma: the variance head's σ² = exp(ln σ²) is infinite at these inputs (ln σ² above "
    "709.8), refused"
)
WRONG_SHAPE = "sigma: {} must have shape {} (a batch of samples), refused"
NON_FINITE_VARIANCE = (
    "sigma: the predictive variance is not finite at these inputs (the output gradients "
    "overflow), refused"
)


def _refuse_non_finite(inputs, names=None):
    """``inputs`` with a check_numerics on each part: an InvalidArgumentError naming the input
    when one holds NaN or ±inf (Laplace.predict refuses them with a ValueError)."""
    parts = tf.nest.flatten(inputs)
    names = names if names and len(names) == len(parts) else None
    checked = [
        tf.debugging.check_numerics(
            t, NON_FINITE_INPUT.format(f"input {names[i]!r}" if names else "x")
        )
        for i, t in enumerate(parts)
    ]
    return tf.nest.pack_sequence_as(inputs, checked)


def _refuse_wrong_shape(inputs, shapes, names=None):
    """``inputs`` after a runtime check that each part has the rank and the per-sample shape
    of ``shapes`` (one ``(None, d1, ...)`` per part): an InvalidArgumentError naming the input
    and the expected shape otherwise. Keras checks the shape of the first call only; once
    ``model.predict`` has relaxed its trace, a wrong shape would reach the network's ops."""
    parts = tf.nest.flatten(inputs)
    names = names if names and len(names) == len(parts) else None
    checked = []
    for i, (t, shape) in enumerate(zip(parts, shapes, strict=True)):
        want = (None, *(None if d is None else int(d) for d in shape[1:]))
        given = tf.shape(t)
        # the rank, then the per-sample dimensions padded to a fixed length (any rank given);
        # a dimension the model leaves open (a sequence of any length) is not checked
        padded = tf.concat([given, tf.zeros([len(want)], given.dtype)], 0)[1 : len(want)]
        fixed = [d is not None for d in want[1:]]
        ok = tf.logical_and(
            tf.equal(tf.rank(t), len(want)),
            tf.reduce_all(
                tf.logical_or(
                    tf.equal(padded, tf.constant([d or 0 for d in want[1:]], given.dtype)),
                    tf.logical_not(tf.constant(fixed, tf.bool)),
                )
            ),
        )
        # 0 if the shape is right, else NaN refused by check_numerics; added to t, so that
        # what follows depends on the check by data (a control edge or a cond may be
        # optimised away or reordered by the graph optimiser)
        flag = tf.debugging.check_numerics(
            tf.where(ok, tf.constant(0.0, t.dtype), tf.constant(np.nan, t.dtype)),
            WRONG_SHAPE.format(f"input {names[i]!r}" if names else "x", want),
        )
        # the static shape the network needs after a relaxed trace (not tf.ensure_shape or
        # set_shape: the graph optimiser reads them as facts and folds the check away)
        t = t + flag
        if all(fixed):
            t = tf.reshape(t, (-1, *want[1:]))
        checked.append(t)
    return tf.nest.pack_sequence_as(inputs, checked)


@keras.saving.register_keras_serializable(package="sigma")
class PredictiveLayer(keras.layers.Layer):
    """The Laplace predictive of ``model`` as a layer (see the module docstring).

    spec : {"structure": name, "structure_spec": {...}, "weights": the selection of weights
    (:meth:`sigma.weights.Selection.describe`), "likelihood": "regression" |
    "classification" | "heteroscedastic" ([μ | ln σ²]: mean and std of K = n_outputs/2),
    "heads": [[start, stop], ...] | None, "noise": [1/β_k] (regression),
    "arrays": {name: shape}, "n_outputs": K, "input_names": [name, ...] | None (several
    inputs)}.

    Non-finite input, outputs or variance are refused inside the graph: a
    ``tf.errors.InvalidArgumentError`` whose message starts with "sigma:" and names what was
    not finite (the module's ``NON_FINITE_*`` messages), where ``Laplace.predict`` raises a
    ValueError. So is an input whose per-sample shape is not the model's (``WRONG_SHAPE``,
    naming the expected ``(None, d1, ...)``): Keras checks shapes on a first call only, and
    ``model.predict`` relaxes its trace after one. The layer is not XLA-compiled
    (``supports_jit = False``): XLA would fail on a wrong shape before the check.
    """

    def __init__(self, model, spec: dict, **kwargs):
        kwargs.setdefault("dtype", model_dtype(model))
        super().__init__(**kwargs)
        # not XLA-compiled by model.predict: XLA drops the graph's shape assertion
        self.supports_jit = False
        self.model, self.spec = model, spec
        described = spec.get("weights")
        self.selection = None if described is None else weights.from_description(model, described)
        self.posterior = {
            name: self.add_weight(
                shape=tuple(shape),
                dtype="float64",
                initializer="zeros",
                trainable=False,
                name=name,
            )  # fmt: skip
            for name, shape in spec["arrays"].items()
        }

    def call(self, inputs):
        inputs = tf.nest.map_structure(lambda t: tf.cast(t, self.model_dtype), inputs)
        inputs = _refuse_wrong_shape(
            inputs, [t.shape for t in self.model.inputs], self.spec.get("input_names")
        )
        inputs = _refuse_non_finite(inputs, self.spec.get("input_names"))
        # in the structure the model was built with (a dict by input name, in any key order)
        inputs = keras_compat.as_model_inputs(self.model, inputs)
        mean = tf.cast(flat_outputs(self.model(inputs, training=False)), tf.float64)
        mean = tf.debugging.check_numerics(mean, NON_FINITE_OUTPUTS)
        arrays = {k: tf.convert_to_tensor(v) for k, v in self.posterior.items()}
        cls = structures.get(self.spec["structure"])
        eng = engine(self.model, self.selection)
        var = cls.graph_variance(eng, self.spec["structure_spec"], arrays, inputs)
        var = tf.debugging.check_numerics(tf.cast(var, tf.float64), NON_FINITE_VARIANCE)
        var = tf.maximum(var, 0.0)
        noise = tf.constant(self.spec["noise"], tf.float64)
        out = self.likelihood.serve(mean, var, noise)
        if isinstance(out, dict):  # a σ with the model's own noise head may overflow
            out["std"] = tf.debugging.check_numerics(out["std"], NON_FINITE_NOISE)
        return out

    @property
    def likelihood(self):
        """The served likelihood (a spec written before likelihood objects: its name)."""
        described = self.spec["likelihood"]
        if isinstance(described, str):
            described = {"name": described, "heads": self.spec.get("heads")}
        return likelihoods.from_description(described)

    @property
    def model_dtype(self) -> str:
        return model_dtype(self.model)

    def compute_output_spec(self, inputs):
        n = tf.nest.flatten(inputs)[0].shape[0]
        k = self.likelihood.served_outputs(self.spec["n_outputs"])
        out = keras.KerasTensor((n, k), dtype="float64")
        if self.likelihood.conformal == "interval":  # a mean and a std per target
            return {"mean": out, "std": keras.KerasTensor((n, k), dtype="float64")}
        return out

    def get_config(self):
        config = super().get_config()
        config.update(model=keras.saving.serialize_keras_object(self.model), spec=self.spec)
        return config

    @classmethod
    def from_config(cls, config):
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)


def to_keras(model, post, *, name: str | None = None) -> keras.Model:
    """A :class:`keras.Model` from ``model``'s inputs to the predictive of the
    :class:`~sigma.posterior.Posterior` ``post`` (see the module docstring), at its
    precisions."""
    try:
        declared = model.inputs
    except (AttributeError, ValueError):
        declared = None
    if not declared:
        raise ValueError(
            "to_keras needs a model with declared inputs (a functional or Sequential model "
            "built on keras.Input): a subclassed model does not say what it takes"
        )
    lik = post.likelihood
    lik.check_servable()
    if post.link != "probit" and "tempered" in post.groups.kinds:
        warnings.warn(
            f"to_keras serves a classifier's probabilities by the probit link, not the "
            f"posterior's link {post.link!r} (set by optimize_prior): its probabilities differ "
            f"from predict_proba's; compare predict_proba(x, method='probit') with them",
            RuntimeWarning,
            stacklevel=keras_compat.user_stacklevel(),
        )
    structure, b = post.operator()  # Σ_h β_h C_h for several precision groups
    k = post.summary.n_outputs
    arrays, structure_spec = structure.export(model, post.alpha_weights(), b)
    spec = {
        "structure": structure.name,
        "structure_spec": structure_spec,
        "weights": post.selection.describe(),
        "likelihood": lik.describe(),
        "noise": predictive.noise_variance(post).tolist(),
        "arrays": {key: list(np.shape(v)) for key, v in arrays.items()},
        "n_outputs": k,
        "input_names": [str(getattr(t, "name", i)) for i, t in enumerate(declared)]
        if len(declared) > 1
        else None,
    }
    layer = PredictiveLayer(model, spec, name="sigma_predictive")
    for key, value in arrays.items():
        layer.posterior[key].assign(np.asarray(value, np.float64))
    inputs = [
        keras.Input(shape=tuple(t.shape[1:]), dtype=t.dtype, name=getattr(t, "name", None))
        for t in declared
    ]
    inputs = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(inputs, layer(inputs), name=name or f"{model.name}_sigma")
