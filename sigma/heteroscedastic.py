"""Heteroscedastic regression: the model's own noise variance σ²(x) plus the weight
uncertainty of its mean (``Laplace(model, x, y, likelihood="heteroscedastic")``).

The likelihood, its parameterisations and the GGN's Λ are in
:class:`sigma.likelihoods.Heteroscedastic`. Here: the check that the model's heads are a
parameterisation the likelihood accepts (:func:`check_heads`), and the predictive

    σ²_k(x) = σ²_noise,k(x) + a_kᵀ Σ_k(x) a_k          (aleatoric + epistemic)

with σ²_noise,k(x) the variance head at the trained weights, Σ_k(x) the 2×2 covariance of
target k's two outputs under the Laplace posterior (J A⁻¹ Jᵀ) and a_k = ∂μ_k/∂(f_k, f_{K+k})
the gradient of the mean with respect to them ((1, 0) for "mean_logvar": the variance of the
mean output; (σ², −μ) for "natural", μ = η₁ e^{−r}) — the linearised weight uncertainty of
the mean (:func:`predict`).
"""

from __future__ import annotations

import keras
import numpy as np

from sigma._checks import check_finite_outputs, model_dtype
from sigma.curvature import engine
from sigma.likelihoods import Heteroscedastic
from sigma.losses import GaussianNLL, compiled_loss

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


def match_compiled_loss(model, lik, requested):
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
    history = getattr(tensor, "_keras_history", None)
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
            node = op._inbound_nodes[history.node_index]
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


def predict(post, model, x, *, noise: bool = True, split: bool = False, batch_size=None,
            name="x"):  # fmt: skip
    """Predictive mean and standard deviations of a heteroscedastic posterior ``post`` (a
    :class:`~sigma.posterior.Posterior`) of ``model``.

    x : checked inputs (N, ...). Returns ``(mean, std)`` (N, K) each, std² = aleatoric +
    epistemic (epistemic only with ``noise=False``); with ``split=True``
    ``(mean, aleatoric std, epistemic std)``.
    """
    lik = post.likelihood
    f = engine(model).outputs(x)
    check_finite_outputs(model, x, f, name)
    mean, logvar = lik.moments(f)
    k = mean.shape[1]
    structure, beta = post.operator()
    alpha_w = post.alpha_weights()
    if lik.parameterisation == "mean_logvar":
        epistemic = structure.predictive_variance(model, x, alpha_w, beta, batch_size=batch_size)
        epistemic = epistemic[:, :k]
    else:
        cov = structure.predictive_covariance(model, x, alpha_w, beta, batch_size=batch_size)
        idx = np.arange(k)
        a1, a2 = np.exp(logvar), -mean  # ∂μ/∂η₁ = σ², ∂μ/∂r = −μ
        epistemic = (
            a1**2 * cov[:, idx, idx]
            + 2 * a1 * a2 * cov[:, idx, k + idx]
            + a2**2 * cov[:, k + idx, k + idx]
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
