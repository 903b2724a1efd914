"""Gaussian regression with the model's own noise variance σ²(x): 2K outputs per sample,
[mean part | variance part] (Immer et al. 2023). No β: the noise is the model's."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from sigma import keras_compat
from sigma._checks import as_array, model_dtype
from sigma.likelihoods.base import HALF_LOG_2PI, Likelihood, check_rows_cols

PARAMETERISATIONS = ("mean_logvar", "natural")


class Heteroscedastic(Likelihood):
    """Gaussian regression with an input-dependent noise variance σ²(x), read from the model.

    The model has 2K outputs per sample (one output of width 2K, or a list of two outputs of
    width K each, in this order), split [first K | last K] into two heads per target:

    * ``parameterisation="mean_logvar"`` (default): f = [μ | s], s = ln σ² (a linear head:
      σ² = eˢ is positive and finite for every finite s);
    * ``parameterisation="natural"``: f = [η₁ | r] with η₁ = μ/σ² the first natural
      parameter and r = ln(−2η₂) = −ln σ² (the log precision; η₂ = −1/(2σ²) = −eʳ/2 < 0).

    A head that outputs σ² itself (softplus, relu, a raw linear output) or η₂ directly can reach
    0, ∞ or the wrong sign and is not accepted (:func:`sigma.heteroscedastic.check_heads`).

    Data term (summed): E = Σ_n Σ_k ½ ln 2π + ½ ln σ²_nk + (t_nk − μ_nk)²/(2σ²_nk).
    The GGN's Λ_n is the Hessian of E in the natural parameters η = (μ/σ², −1/(2σ²)) — the
    covariance of the sufficient statistics (t, t²), positive definite, free of t —
    pulled back through the link η(f) (Immer et al. 2023), 2×2 per target:

        mean_logvar:  Λ = diag(1/σ², ½)                 L = diag(1/σ, 1/√2)
        natural:      Λ = [[σ², −μ], [−μ, μ²/σ² + ½]]    L = [[σ, 0], [−μ/σ, 1/√2]]

    (Λ = L Lᵀ, in the [mean part, variance part] coordinates of each target.) No β.
    Targets are (N, K) (or (N,) for K = 1); internally each head gets the target, (N, 2K).
    """

    name = "heteroscedastic"
    family = "Gaussian regression"  # a density of real targets, noise fixed or modelled
    noise = False
    beta_message = (
        "beta has no meaning for likelihood='heteroscedastic': the noise variance is the "
        "model's own variance head σ²(x), not a precision β; leave beta at its default (1) "
        "and set or optimise alpha only"
    )

    def __init__(self, parameterisation: str = "mean_logvar"):
        if parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"parameterisation must be one of {PARAMETERISATIONS}, got {parameterisation!r}"
            )
        self.parameterisation = parameterisation

    @property
    def key(self) -> tuple:
        return (self.name, self.parameterisation)

    def describe(self) -> dict:
        return {"name": self.name, "parameterisation": self.parameterisation}

    def moments(self, f):
        """(μ, ln σ²), each (B, K), from the outputs f (B, 2K); tensors or arrays."""
        k = f.shape[-1] // 2
        a, b = f[..., :k], f[..., k:]
        if self.parameterisation == "mean_logvar":
            return a, b
        exp = np.exp if isinstance(f, np.ndarray) else tf.exp
        return a * exp(-b), -b

    def data_error(self, f, t):
        """Σ of the Gaussian NLL ½ ln 2π + ½ ln σ² + (t − μ)²/(2σ²) (tensor, summed); t
        (B, 2K) or (B, K) (only its first K columns are read)."""
        k = f.shape[-1] // 2
        mean, logvar = self.moments(f)
        t = t[:, :k]
        nll = HALF_LOG_2PI + 0.5 * logvar + 0.5 * tf.square(t - mean) * tf.exp(-logvar)
        return tf.reduce_sum(nll)

    def hessian_sqrt(self, f):
        """L_n (B, 2K, 2K) with L Lᵀ = Λ_n (see the class docstring): per target k, the 2×2
        root on rows/columns (k, K + k)."""
        mean, logvar = self.moments(f)
        sd = tf.exp(0.5 * logvar)
        half = tf.fill(tf.shape(sd), tf.cast(np.sqrt(0.5), f.dtype))
        if self.parameterisation == "mean_logvar":
            return tf.linalg.diag(tf.concat([1.0 / sd, half], axis=1))
        top = tf.concat([tf.linalg.diag(sd), tf.zeros_like(tf.linalg.diag(sd))], axis=2)
        bottom = tf.concat([tf.linalg.diag(-mean / sd), tf.linalg.diag(half)], axis=2)
        return tf.concat([top, bottom], axis=1)

    # -- behaviour ------------------------------------------------------------------------------
    def for_model(self, model, requested) -> Heteroscedastic:
        """The parameterisation a model compiled with :class:`sigma.losses.GaussianNLL` was
        trained in (a name follows it; another form is refused, naming both)."""
        return match_compiled_loss(model, self, requested)

    def check_outputs(self, model, f, layout) -> None:
        check_heads(model, f, self, layout)

    def predictive_form(self, **_) -> str:
        return "variance" if self.parameterisation == "mean_logvar" else "covariance"

    def predictive(self, mean, second, *, noise_var=None, layout=None, noise=True, split=False,
                   name="x", **_):  # fmt: skip
        return _predictive(self, mean, second, noise=noise, split=split, name=name)

    def validation_values(self, n: int, k: int) -> int:
        return n * (k // 2)

    def score(self, prediction, y, metric: str) -> float:
        from sigma import metrics

        mean, std = prediction
        return metrics.gaussian_nll(mean, std, y[:, : mean.shape[1]])

    conformal = "interval"

    def check_servable(self) -> None:
        if self.parameterisation != "mean_logvar":
            raise ValueError(
                "to_keras supports likelihood='heteroscedastic' with parameterisation="
                f"'mean_logvar' only (its mean is an output), got {self.parameterisation!r}: "
                "use Laplace.predict"
            )

    def served_outputs(self, k: int) -> int:
        return k // 2

    def serve(self, mean, var, noise):
        k = mean.shape[-1] // 2
        std = tf.sqrt(var[:, :k] + tf.exp(mean[:, k:]))
        return {"mean": mean[:, :k], "std": std}

    def distinct_targets(self, t):
        """The targets once: :meth:`targets` repeats them for the variance heads."""
        return t[:, : t.shape[1] // 2]

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """Targets (n, k/2) (or (n,) for one target) as (n, k): each head's target is y."""
        if k % 2:
            raise ValueError(
                f"likelihood='heteroscedastic' needs 2K outputs per sample, [mean part | "
                f"variance part], got {k} outputs"
            )
        if isinstance(y, dict | list | tuple):
            raise ValueError(
                f"{name} for likelihood='heteroscedastic' must be one (N, K) array of targets "
                f"(K = {k // 2}), got a {type(y).__name__}"
            )
        arr = as_array(y, name, ndim=(1, 2))
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.shape[1] != k // 2 and arr.shape[0] == n:
            raise ValueError(
                f"{name} has {arr.shape[1]} columns but the model's {k} outputs are "
                f"{k // 2} targets' [mean | variance] heads: expected shape ({n}, {k // 2})"
            )
        check_rows_cols(arr, n, k // 2, name, x_name)
        return np.concatenate([arr, arr], axis=1)


# activations whose values are never negative: such a head holds a variance or a precision
POSITIVE = {
    "softplus", "relu", "relu6", "exponential", "exp", "sigmoid", "hard_sigmoid", "softmax",
    "square", "abs",
}  # fmt: skip


def _expected(lik) -> str:
    if lik.parameterisation == "natural":
        return (
            "parameterisation='natural' expects [η₁ | ln(−2η₂)] = [μ/σ² | −ln σ²] from linear heads"
        )
    return "parameterisation='mean_logvar' expects [μ | ln σ²] from linear heads (σ² = exp(s))"


def describe(likelihood) -> str:
    """How the user wrote ``likelihood``: a name as a string, an object as its constructor."""
    if isinstance(likelihood, Heteroscedastic):
        return f"Heteroscedastic({likelihood.parameterisation!r})"
    return repr(likelihood) if isinstance(likelihood, str) else type(likelihood).__name__


def match_compiled_loss(model, lik, requested):  # noqa: D401
    """The heteroscedastic likelihood to read ``model``'s heads with (``lik``, as
    ``requested`` by the user: a name or an object).

    A model compiled with :class:`sigma.losses.GaussianNLL` (``model.loss``) was trained with
    its heads in that loss's parameterisation: the name "heteroscedastic" (no
    parameterisation stated) follows it; a :class:`~sigma.likelihoods.Heteroscedastic` of
    another parameterisation is refused, naming both — read in the wrong form, the heads give
    σ² = exp(−ln σ²) and a mean divided by it, finite and wrong."""
    loss = compiled_loss(model)
    if not isinstance(loss, GaussianNLL) or loss.parameterisation == lik.parameterisation:
        return lik
    if isinstance(requested, str):
        return Heteroscedastic(loss.parameterisation)
    raise ValueError(
        f"likelihood={describe(requested)} reads the model's heads as "
        f"{_FORMS[lik.parameterisation]}, but the model was compiled with "
        f"sigma.losses.GaussianNLL({loss.parameterisation!r}), which trains them as "
        f"{_FORMS[loss.parameterisation]}: pass likelihood=Heteroscedastic("
        f"{loss.parameterisation!r}), or likelihood='heteroscedastic', which follows the "
        "compiled loss"
    )


_FORMS = {"mean_logvar": "[μ | ln σ²]", "natural": "[μ/σ² | −ln σ²]"}


def _activation_name(layer) -> str | None:
    if isinstance(layer, keras.layers.ReLU):
        return "relu"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    act = getattr(layer, "activation", None)
    if act is None:
        return None
    return getattr(act, "__name__", None) or getattr(act, "name", None)


def _producer(tensor):
    history = keras_compat.history(tensor)
    return None if history is None else history.operation, history


def _variance_layers(model) -> list:
    """The layers whose outputs are the variance part (best effort: a final Dense of width
    2K, a Concatenate of [mean, variance], or the second of two outputs); [] if unknown."""
    try:
        outputs = list(model.outputs)
    except (AttributeError, ValueError):
        return []
    if len(outputs) == 2:
        return [_producer(outputs[1])[0]]
    if len(outputs) != 1:
        return []
    op, history = _producer(outputs[0])
    if isinstance(op, keras.layers.Concatenate):
        try:
            node = keras_compat.inbound_node(op, history.node_index)
            inputs = list(node.input_tensors)
        except (AttributeError, IndexError):
            return []
        return [_producer(t)[0] for t in inputs[len(inputs) // 2 :]]
    return [op]


def check_heads(model, f, lik, layout) -> None:
    """Refuse a model whose outputs are not a parameterisation ``lik`` accepts.

    f : (N, 2K) outputs at the training inputs. Refused, naming the expected
    parameterisation: an odd number of outputs; outputs as a dict (their order is not
    [mean, variance]); a variance head ending in a non-negative activation (softplus, relu,
    exp, sigmoid, …: a variance or precision, which can reach 0 or ∞); log-variances whose
    σ² under- or overflows in the model's dtype.
    """
    k2 = f.shape[1]
    if k2 % 2:
        raise ValueError(
            f"likelihood='heteroscedastic' needs 2K outputs per sample, [mean part | variance "
            f"part], got {k2}: {_expected(lik)}"
        )
    if layout.kind == "dict" or (layout.kind == "list" and len(set(layout.sizes)) != 1):
        raise ValueError(
            "likelihood='heteroscedastic' needs one output of width 2K or a list of two "
            f"outputs [mean part, variance part] of width K each, got {layout.kind} outputs "
            f"{dict(zip(layout.names, layout.sizes, strict=True))}: {_expected(lik)}"
        )
    for layer in _variance_layers(model):
        name = _activation_name(layer)
        if name in POSITIVE:
            raise ValueError(
                f"the variance head of the model (layer {layer.name!r}) ends in a {name!r} "
                "activation: it outputs a variance or a precision, which can reach 0 or ∞ "
                f"(and would be read as a logarithm). likelihood='heteroscedastic' with "
                f"{_expected(lik)}: drop the activation and train on sigma.losses.GaussianNLL"
            )
    _, logvar = lik.moments(np.asarray(f, np.float64))
    bound = 0.5 * float(np.log(np.finfo(model_dtype(model)).max))
    worst = float(np.max(np.abs(logvar))) if logvar.size else 0.0
    if not worst < bound:
        raise ValueError(
            f"the model's variance head gives ln σ² = {worst:.4g} in magnitude at some training "
            f"inputs: σ² or 1/σ² is 0 or ∞ in {model_dtype(model)} (|ln σ²| must stay below "
            f"{bound:.3g}). {_expected(lik).capitalize()}: check that the variance head is a "
            "log-variance, not a variance, and that the targets are standardised"
        )


def _predictive(lik, f, second, *, noise=True, split=False, name="x"):
    """(mean, std) (N, K) of a heteroscedastic model from its outputs f (N, 2K) and J A⁻¹ Jᵀ
    (its diagonal for [μ | ln σ²], the covariance for the natural form): std² = the noise
    head's σ²(x) + the linearised weight uncertainty of the mean a_kᵀ Σ_k a_k (docs/math.md
    §7); ``noise=False``: the weights' part; ``split``: (mean, aleatoric std, epistemic std)."""
    mean, logvar = lik.moments(f)
    k = mean.shape[1]
    if lik.parameterisation == "mean_logvar":
        epistemic = second[:, :k]
    else:
        idx = np.arange(k)
        a1, a2 = np.exp(logvar), -mean  # ∂μ/∂η₁ = σ², ∂μ/∂r = −μ
        epistemic = (
            a1**2 * second[:, idx, idx]
            + 2 * a1 * a2 * second[:, idx, k + idx]
            + a2**2 * second[:, k + idx, k + idx]
        )
    if not np.all(np.isfinite(epistemic)):
        raise ValueError(
            f"the predictive variance is NaN or infinite at some samples of {name} although the "
            f"model's outputs are finite: rescale {name} (or the weights), or compute in float64"
        )
    epistemic = np.maximum(epistemic, 0.0)
    with np.errstate(over="ignore"):
        aleatoric = np.exp(logvar)
    if not np.all(np.isfinite(aleatoric)):
        raise ValueError(
            f"the model's variance head gives ln σ² = {float(np.max(logvar)):.4g} at some "
            f"samples of {name}: σ² = exp(ln σ²) is infinite in float64 (ln σ² must stay below "
            f"{np.log(np.finfo(np.float64).max):.4g}); {name} is likely far outside the "
            "training inputs"
        )
    if split:
        return mean, np.sqrt(aleatoric), np.sqrt(epistemic)
    return mean, np.sqrt(epistemic + aleatoric if noise else epistemic)


# -- the training loss (re-exported as sigma.losses) ------------------------------------------
@keras.saving.register_keras_serializable(package="sigma")
class GaussianNLL(keras.losses.Loss):
    """Σ_k ½ ln 2π + ½ ln σ²_k + (t_k − μ_k)²/(2σ²_k) per sample, from outputs (B, 2K) in
    ``parameterisation`` ("mean_logvar": [μ | ln σ²]; "natural": [μ/σ² | −ln σ²]) and
    targets (B, K) (or (B,) for K = 1). Returns (B,); reduced by Keras (mean over the batch).
    """

    def __init__(self, parameterisation: str = "mean_logvar", name: str = "gaussian_nll", **kw):
        super().__init__(name=name, **kw)
        self.likelihood = Heteroscedastic(parameterisation)
        self.parameterisation = parameterisation

    def call(self, y_true, y_pred):
        mean, logvar = self.likelihood.moments(y_pred)
        t = tf.cast(y_true, mean.dtype)
        t = tf.reshape(t, tf.shape(mean))
        nll = HALF_LOG_2PI + 0.5 * logvar + 0.5 * tf.square(t - mean) * tf.exp(-logvar)
        return tf.reduce_sum(nll, axis=-1)

    def get_config(self):
        return {**super().get_config(), "parameterisation": self.parameterisation}


def compiled_loss(model):
    """The single loss ``model`` was compiled with (Keras' ``model.loss``: a string, a Loss or
    a function; one entry of a list or dict of one, or the name every entry gives, which Keras
    applies to each output as it does one loss), or None."""
    loss = getattr(model, "loss", None)
    entries = list(loss.values()) if isinstance(loss, dict) else loss
    if isinstance(entries, list | tuple) and entries:
        same = all(isinstance(e, str) and e.lower() == str(entries[0]).lower() for e in entries)
        if len(entries) == 1 or same:
            loss = entries[0]
    return loss
