"""Likelihoods: the data term of the loss and its Hessian with respect to the outputs.

For a likelihood with data term E(f, t) (summed over samples), the generalised Gauss–Newton
matrix is G = Σ_n J_nᵀ Λ_n J_n with Λ_n = ∂²E/∂f² at f(x_n) (docs/math.md). Each likelihood
gives a square root L_n with Λ_n = L_n L_nᵀ, so every curvature structure can work with the
"sensitivities" L_nᵀ J_n and never needs Λ itself.

* regression: E_D = ½ Σ (f − t)², Λ = I (so L = I), precision β scales it.
* classification: E = −Σ_n Σ_k t_nk log softmax(f_n)_k on logits f, Λ = diag(p) − p pᵀ,
  L = diag(√p) − p √pᵀ (one checks L Lᵀ = diag(p) − 2 p pᵀ + p pᵀ Σ p = Λ). No β (fixed to 1).
  A model with several outputs has one softmax head per output: E sums the heads'
  cross-entropies and Λ_n is block-diagonal, one block per head.
* a head of one logit is binary (Bernoulli with a sigmoid link, the softmax over the logits
  (0, f)): E = Σ_n softplus(f_n) − t_n f_n with labels t ∈ {0, 1}, Λ = p(1 − p), p = σ(f).
* heteroscedastic: a Gaussian whose variance is the model's own, 2K outputs [mean part |
  variance part] per sample (:class:`Heteroscedastic`); E = Σ Gaussian NLL and Λ_n the Hessian
  of the NLL in the natural parameters pulled back through the link (Immer et al. 2023),
  positive definite. No β (the noise is the model's).

Targets may be given per output (a list, or a dict by name, for a model with several outputs;
see :class:`sigma.outputs.OutputLayout`) or as one (N, K) array.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import as_array


class Regression:
    name = "regression"
    has_beta = True
    heads = None

    @property
    def key(self) -> tuple:
        """Identifies the likelihood in the curvature engine's cache of traced graphs."""
        return (self.name,)

    def data_error(self, f, t):
        """E_D = ½ Σ_n Σ_k (f_nk − t_nk)² (tensor, summed)."""
        return 0.5 * tf.reduce_sum(tf.square(f - t))

    def hessian_sqrt(self, f):
        """None stands for L = I (Λ = I)."""
        return None

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """Targets of shape (n, k); a 1-D y is accepted when k == 1; per output for a model
        with several (``layout``)."""
        parts = [y] if layout is None else layout.split(y, name)
        if len(parts) > 1:
            return np.concatenate(
                [
                    self._part(p, n, size, f"{name}[{label!r}]", x_name)
                    for p, size, label in zip(parts, layout.sizes, layout.names, strict=True)
                ],
                axis=1,
            )
        return self._part(parts[0], n, k, name, x_name)

    def _part(self, y, n, k, name, x_name):
        arr = as_array(y, name, ndim=(1, 2))
        if arr.ndim == 1:
            if k != 1:
                raise ValueError(
                    f"{name} must have shape (N, K) = ({n}, {k}) to match the model's {k} "
                    f"outputs, got shape {arr.shape}"
                )
            arr = arr[:, None]
        _check_rows_cols(arr, n, k, name, x_name)
        return arr


class Classification:
    """Softmax cross-entropy on logits; ``heads``: (start, stop) of each softmax head in the
    flattened outputs (None: one head over all K)."""

    name = "classification"
    has_beta = False

    def __init__(self, heads=None):
        # one head of several classes is "no heads"; a binary head (one logit) stays explicit
        keep = heads is not None and (len(heads) > 1 or any(e - s == 1 for s, e in heads))
        self.heads = tuple(map(tuple, heads)) if keep else None

    @property
    def key(self) -> tuple:
        return (self.name, self.heads)

    def _segments(self, f):
        if self.heads is None:
            return [f]
        return [f[:, s:e] for s, e in self.heads]

    def data_error(self, f, t):
        """Cross-entropy −Σ t log softmax(f) on logits f, per head; a one-logit head is binary,
        Σ softplus(f) − t f (tensor, summed)."""
        if self.heads is None:
            return _cross_entropy(f, t)
        return tf.add_n([_cross_entropy(f[:, s:e], t[:, s:e]) for s, e in self.heads])

    def hessian_sqrt(self, f):
        """L_n = diag(√p_n) − p_n √p_nᵀ, shape (B, K, K), with L Lᵀ = diag(p) − p pᵀ (for a
        one-logit head √(p(1 − p)), p = σ(f)); with several heads, block-diagonal, one block
        per head."""
        roots = []
        for seg in self._segments(f):
            if seg.shape[-1] == 1:
                roots.append(tf.sqrt(tf.sigmoid(seg) * tf.sigmoid(-seg))[:, :, None])
                continue
            p = tf.nn.softmax(seg, axis=-1)
            sp = tf.sqrt(p)
            roots.append(tf.linalg.diag(sp) - p[:, :, None] * sp[:, None, :])
        if len(roots) == 1:
            return roots[0]
        return tf.linalg.LinearOperatorBlockDiag(
            [tf.linalg.LinearOperatorFullMatrix(r) for r in roots]
        ).to_dense()

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """One-hot (n, k) targets, or integer labels (n,) in [0, k) converted to one-hot; per
        output (head) for a model with several."""
        if self.heads is None or len(self.heads) == 1:
            parts = [y] if layout is None else layout.split(y, name)
            return self._part(parts[0], n, k, name, x_name)
        sizes = [e - s for s, e in self.heads]
        parts = layout.split(y, name) if layout is not None else [y]
        if len(parts) == 1:  # one (n, K) array, one-hot per head
            if np.ndim(parts[0]) != 2:
                raise ValueError(
                    f"{name} for a model with {len(self.heads)} classification outputs must be "
                    f"one (N, {k}) array of targets per head side by side, or one array of "
                    f"labels per output (a list, or a dict by output name); got shape "
                    f"{np.shape(parts[0])}"
                )
            arr = self._part(parts[0], n, k, name, x_name, one_hot=False)
            return np.concatenate(
                [
                    self._part(arr[:, s:e], n, e - s, f"{name}[:, {s}:{e}]", x_name)
                    for s, e in self.heads
                ],
                axis=1,
            )
        labels = layout.names if layout is not None else range(len(parts))
        return np.concatenate(
            [
                self._part(p, n, size, f"{name}[{label!r}]", x_name)
                for p, size, label in zip(parts, sizes, labels, strict=True)
            ],
            axis=1,
        )

    def _part(self, y, n, k, name, x_name, one_hot=True):
        arr = as_array(y, name, ndim=(1, 2))
        if k == 1 and one_hot:  # a binary head: labels 0/1, (N,) or (N, 1)
            arr = arr.reshape(-1, 1) if arr.ndim == 1 else arr
            _check_rows_cols(arr, n, 1, name, x_name)
            if not np.all((arr == 0) | (arr == 1)):
                raise ValueError(
                    f"{name} must hold labels 0 or 1 for a binary classifier (one logit), got "
                    f"values in [{arr.min()}, {arr.max()}]"
                )
            return arr.astype(np.float64)
        if arr.ndim == 1:
            if not np.all(arr == np.round(arr)) or (arr.size and (arr.min() < 0 or arr.max() >= k)):
                raise ValueError(
                    f"{name} as a 1-D array must hold integer class labels in [0, {k}), got "
                    f"values in [{arr.min()}, {arr.max()}]"
                )
            arr = np.eye(k)[arr.astype(int)]
        _check_rows_cols(arr, n, k, name, x_name)
        if one_hot and not (np.all((arr == 0) | (arr == 1)) and np.all(arr.sum(axis=1) == 1)):
            raise ValueError(
                f"{name} must be one-hot (each row a single 1, zeros elsewhere) or integer "
                "labels for likelihood='classification'"
            )
        return arr


def _cross_entropy(z, t):
    """−Σ t log softmax(z); for one logit the binary Σ softplus(z) − t z."""
    if z.shape[-1] == 1:
        return tf.reduce_sum(tf.nn.softplus(z) - t * z)
    return -tf.reduce_sum(t * tf.nn.log_softmax(z, axis=-1))


def _check_rows_cols(arr, n, k, name, x_name="x"):
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {x_name} has {n}: they must match")
    if arr.shape[1] != k:
        raise ValueError(
            f"{name} has {arr.shape[1]} columns but the model has {k} outputs: "
            f"expected shape ({n}, {k})"
        )


PARAMETERISATIONS = ("mean_logvar", "natural")
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


class Heteroscedastic:
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
    has_beta = False
    heads = None
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
        nll = _HALF_LOG_2PI + 0.5 * logvar + 0.5 * tf.square(t - mean) * tf.exp(-logvar)
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
        _check_rows_cols(arr, n, k // 2, name, x_name)
        return np.concatenate([arr, arr], axis=1)


LIKELIHOODS = {
    "regression": Regression,
    "classification": Classification,
    "heteroscedastic": Heteroscedastic,
}


def get(likelihood, layout=None) -> Regression | Classification | Heteroscedastic:
    """A likelihood object from its name (or the object itself); with a model's
    :class:`~sigma.outputs.OutputLayout`, classification gets one softmax head per output."""
    if isinstance(likelihood, Heteroscedastic | Regression):
        return likelihood
    if isinstance(likelihood, Classification):
        if layout is not None and likelihood.heads is None:
            return Classification(layout.heads)
        return likelihood
    if not isinstance(likelihood, str) or likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {tuple(LIKELIHOODS)}, got {likelihood!r}")
    if likelihood == "classification":
        return Classification(None if layout is None else layout.heads)
    return LIKELIHOODS[likelihood]()
