"""What every likelihood says about itself: its data term, the square root of its output
Hessian, its targets and its precision groups.

For a likelihood with data term E(f, t) (summed over samples), the generalised Gauss–Newton
matrix is G = Σ_n J_nᵀ Λ_n J_n with Λ_n = ∂²E/∂f² at f(x_n) (docs/math.md). Each likelihood
gives a square root L_n with Λ_n = L_n L_nᵀ, applied without forming it where it has structure
(:meth:`Likelihood.pseudo`: Lᵀ J, the "pseudo-outputs" whose gradients the structures use;
:meth:`Likelihood.root`: L u), so no curvature code needs Λ itself.

**Precision groups.** The outputs fall into groups that share a precision multiplying their
part of the curvature, A = D_α + Σ_h β_h C_h (:class:`Groups`): a regression output has a free
noise precision β (estimated by the evidence); a classifier's logits the fixed 1/T of its
temperature; a heteroscedastic head none (1). One group for a plain model; one per output for
``Regression(per_output=True)``; one per head for a likelihood per output
(:class:`sigma.likelihoods.heads.PerHead`). The structures keep each group's curvature apart
when there are several, so changing a β never refits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from sigma._checks import as_array

HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
KINDS = ("noise", "tempered", "fixed")


@dataclass(frozen=True)
class Groups:
    """The precision groups of a likelihood's outputs.

    names : one per group; kinds : "noise" (a free β: Gaussian noise precision; the evidence
    counts its values), "tempered" (β = 1/T, a classifier's temperature), "fixed" (β = 1);
    outputs : (K,) the group of each flattened output (and of each pseudo-output: L is
    block-diagonal over groups).
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    outputs: np.ndarray

    @property
    def n_groups(self) -> int:
        return len(self.names)

    @property
    def free(self) -> np.ndarray:
        """(G,) bool: the groups whose β the evidence estimates."""
        return np.array([k == "noise" for k in self.kinds])

    def sizes(self) -> np.ndarray:
        """(G,) outputs per sample in each group."""
        return np.bincount(self.outputs, minlength=self.n_groups)

    def columns(self, g: int) -> np.ndarray:
        return np.flatnonzero(self.outputs == g)

    @classmethod
    def one(cls, kind: str, k: int, name: str = "all") -> Groups:
        return cls((name,), (kind,), np.zeros(k, dtype=np.int64))

    def describe(self) -> dict:
        return {"names": list(self.names), "kinds": list(self.kinds)}


class Likelihood:
    """Base class. Subclasses set ``name`` and ``noise`` and define :meth:`data_error`,
    :meth:`targets` and either :meth:`hessian_sqrt` (a dense root) or :meth:`pseudo` and
    :meth:`root` (a structured one)."""

    name: str = ""
    noise: bool = False  # a free noise precision β scales the likelihood (regression)
    # a temperature T applies: some outputs are a classifier's, p(y | f)^(1/T) (for regression
    # β itself is the likelihood's scale)
    tempered: bool = False
    heads = None  # classification: (start, stop) of each softmax head, or None (one head)
    beta_message = (
        "beta is fixed at 1 for likelihood='classification' (the cross-entropy has no noise "
        "precision; beta reads 1/temperature for a tempered likelihood, set by temperature=); "
        "only alpha can be set or optimised"
    )

    @property
    def has_beta(self) -> bool:
        return self.noise

    def require_beta(self) -> None:
        """Refuses a noise precision β for a likelihood without one, saying why."""
        if not self.noise:
            raise ValueError(self.beta_message)

    def with_beta(self, beta) -> Likelihood:
        """This likelihood for a starting ``beta`` (a number, or one per output)."""
        return self

    def regrouped(self, per_output: bool) -> Likelihood:
        """This likelihood with one β per output (``per_output``) or one for all."""
        raise ValueError(
            "one beta per output is for likelihood='regression' (with a likelihood per "
            "head, each regression head has its own beta already)"
        )

    def output_errors(self, errors):
        """½ Σ_n (f_nk − t_nk)² per output (K,) as kept in the data summary: where a noise
        precision scales them, else None."""
        return errors if self.noise else None

    @property
    def key(self) -> tuple:
        """Identifies the likelihood in the curvature engine's cache of traced graphs."""
        return (self.name,)

    def describe(self) -> dict:
        """A JSON-able description; :func:`sigma.likelihoods.from_description` rebuilds it."""
        return {"name": self.name}

    def bind(self, layout) -> Likelihood:
        """This likelihood for a model whose outputs have ``layout``
        (:class:`~sigma.outputs.OutputLayout`): heads per output or position, groups."""
        return self

    def groups(self, k: int) -> Groups:
        """The precision groups of K flattened outputs (default: one group)."""
        return Groups.one("noise" if self.noise else "fixed", k)

    def pseudo_groups(self, k: int) -> np.ndarray:
        """The precision group of each pseudo-output (K',): L is block-diagonal over the
        groups, so by default the outputs' own."""
        return self.groups(k).outputs

    # -- the data term ------------------------------------------------------------------------
    def data_error(self, f, t):
        raise NotImplementedError

    def group_errors(self, f, t, groups: Groups):
        """The data term of each precision group, (G,) tensor (Σ = :meth:`data_error`)."""
        if groups.n_groups == 1:
            return tf.reshape(self.data_error(f, t), (1,))
        raise NotImplementedError(f"likelihood {self.name!r} has one precision group")

    # -- Λ = L Lᵀ -----------------------------------------------------------------------------
    def hessian_sqrt(self, f):
        """L_n (B, K, K'), or None for the identity (Λ = I)."""
        return None

    def pseudo(self, f, j):
        """Lᵀ j along axis 1 for j (B, K) or (B, K, P) at outputs f (B, K): (B, K'[, P])."""
        root = self.hessian_sqrt(f)
        if root is None:
            return j
        root = tf.cast(root, j.dtype)
        return tf.einsum("bkj,bk->bj" if j.shape.rank == 2 else "bkj,bkp->bjp", root, j)

    def root(self, f, u):
        """L u along axis 1 for u (B, K') or (B, K', P): (B, K[, P])."""
        root = self.hessian_sqrt(f)
        if root is None:
            return u
        root = tf.cast(root, u.dtype)
        return tf.einsum("bkj,bj->bk" if u.shape.rank == 2 else "bkj,bjp->bkp", root, u)

    def pseudo_outputs(self, f):
        """u_n = L_nᵀ f_n with L_n held constant (its own dependence on w is not part of the
        GGN): (B, K')."""
        return self.pseudo(tf.stop_gradient(f), f)

    # -- targets ------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        """What the evidence is a probability of: likelihoods of one family give evidences of
        the same targets that compare (:mod:`sigma.selection`)."""
        return self.name

    def distinct_targets(self, t):
        """The columns of targets ``t`` as :meth:`targets` gives them that are distinct
        targets (what identifies the targets, :func:`sigma.summary.moments`): all of them."""
        return t

    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        raise NotImplementedError

    # -- what the rest of the package asks of a likelihood --------------------------------------
    def for_model(self, model, requested) -> Likelihood:
        """The likelihood to read this model's outputs with (``requested``: what the user
        passed; e.g. the heteroscedastic form a compiled loss trained)."""
        return self

    # how many training inputs :meth:`check_outputs` needs to see (None: all of them)
    check_rows: int | None = None

    def check_outputs(self, model, f, layout) -> None:
        """Refuse outputs f (N, K) at the training inputs that this likelihood cannot read
        (probabilities where logits are needed, a variance head that is not a log-variance);
        f holds the first :attr:`check_rows` inputs' outputs when that is set."""

    def predictive_form(self, *, method: str = "probit", **_) -> str:
        """What :meth:`predictive` needs of J A⁻¹ Jᵀ: "variance" (its diagonal, (N, K)) or
        "covariance" ((N, K, K))."""
        return "variance"

    def predictive(self, mean, second, *, noise_var, layout=None, **options):
        """The user's prediction from the outputs ``mean`` (N, K) and ``second`` (as
        :meth:`predictive_form` asked), ``noise_var`` (K,) the noise variance of each output:
        in the model's output structure (``layout``), flat without one."""
        raise NotImplementedError

    def probabilities(self, prediction):
        """The class probabilities in a :meth:`predictive` result (``predict_proba``; a
        prediction of None checks that there are some)."""
        raise ValueError(
            "predict_proba needs likelihood='classification'; for regression use predict"
        )

    metrics: tuple[str, ...] = ("nll",)  # held-out metrics for tuning the precisions

    def validation_values(self, n: int, k: int) -> int:
        """How many values n held-out samples of K outputs give a metric."""
        return n * k

    def score(self, prediction, y, metric: str) -> float:
        """A held-out metric of a flat :meth:`predictive` result against targets y (N, K)."""
        raise NotImplementedError

    conformal: str | None = None  # "interval" or "sets": what split conformal calibrates

    def penalty_scale(self, n: int, k: int, beta: float) -> float:
        """c_g/α_g of the weight decay that makes a Keras mean loss the log posterior (the
        training objective of :class:`sigma.EvidenceCallback`, docs/math.md §4)."""
        return 1.0 / (2.0 * n)

    def check_servable(self) -> None:
        """ValueError when a served model (``to_keras``) cannot compute this likelihood's
        predictive in its graph."""

    def served_outputs(self, k: int) -> int:
        """The width of the served outputs for K model outputs."""
        return k

    def serve(self, mean, var, noise):
        """Traceable: the served model's outputs from f (B, K) and diag J A⁻¹ Jᵀ (B, K),
        float64; ``noise`` (K,) the noise variance of each output."""
        raise NotImplementedError(f"likelihood {self.name!r} cannot be served")


def check_rows_cols(arr, n, k, name, x_name="x"):
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {x_name} has {n}: they must match")
    if arr.shape[1] != k:
        raise ValueError(
            f"{name} has {arr.shape[1]} columns but the model has {k} outputs: "
            f"expected shape ({n}, {k})"
        )


def flat_targets(y, n, shape, name, x_name, *, ndim_extra=0):
    """y as an array (n, ...) reshaped to (n, prod(shape)): accepted in the output's own
    per-sample shape (e.g. (N, T, C) for an output per position), flattened (N, T·C), or (N,)
    for a single value per sample. ``ndim_extra``: for labels, the per-sample shape has one
    axis fewer."""
    arr = as_array(y, name)
    size = int(np.prod(shape))
    if arr.ndim == 0:
        raise ValueError(f"{name} must have rank ≥ 1 (samples first), got a scalar")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} rows but {x_name} has {n}: they must match")
    if arr.ndim == 1 and size == 1:
        return arr.reshape(n, 1)
    if arr.shape[1:] == tuple(shape) or (arr.ndim == 2 and arr.shape[1] == size):
        return arr.reshape(n, size)
    if len(shape) == 1:  # a vector per sample: (N, K), or (N,) for K = 1
        if arr.ndim > 2:
            raise ValueError(f"{name} must have rank 1 or 2, got shape {arr.shape}")
        if arr.ndim == 1:
            raise ValueError(
                f"{name} must have shape (N, K) = ({n}, {size}) to match the model's {size} "
                f"outputs, got shape {arr.shape}"
            )
        check_rows_cols(arr, n, size, name, x_name)
    want = f"({n}, {', '.join(map(str, shape))}) (or flattened ({n}, {size}))"
    raise ValueError(
        f"{name} has shape {arr.shape} but the model's output has shape "
        f"({', '.join(map(str, shape))}) per sample: expected shape {want}"
    )
