"""Let the evidence choose the model (docs/math.md, "Which model? Comparing evidences").

:func:`compare_models` trains every candidate network for the posterior with
:class:`sigma.EvidenceCallback` and scores it by its log evidence ln p(y | model), the log
marginal likelihood of the training targets: the data fit at the most probable weights plus
MacKay's Occam factor (:meth:`sigma.Laplace.log_evidence_parts`), which penalises weights the
data do not need, plus the log of the number of equivalent modes (:func:`log_symmetry`: hidden
units permuted and, for tanh, sign-flipped, where the posterior tells the copies apart), which
the Laplace approximation at one mode leaves out. ``restarts=k`` trains each candidate from k
seeds and keeps its mode with the largest evidence. No held-out data are used::

    result = sigma.compare_models({"homoscedastic": build_mse, "heteroscedastic": build_nll},
                                  x, y, epochs=200, restarts=2)
    result.best, result.laplace.predict(x_new)

Evidences are compared only where they are densities of the same targets computed the same
way: candidates are all regressions (mean squared error with its β, or
:class:`sigma.losses.GaussianNLL`: both Gaussian densities of y) or all classifiers, and share
the structure, curvature and weights of their Laplace approximation (KFAC's, a diagonal's or the
full one's evidences are approximations of different quality). Anything else is refused with a
ValueError naming the candidates. :func:`compare_laplaces` ranks Laplaces fitted elsewhere
after the same checks, and refuses those fitted on different targets (their number, column
means and mean square: :attr:`sigma.Laplace.target_moments`).
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import keras
import numpy as np

from sigma import keras_compat, progress
from sigma._checks import check_batch_size, check_positive_int, check_seed
from sigma._grappler import own_calls
from sigma.curvature.accumulate import ELEMENT_BUDGET, batch_size_for, is_dataset

# The options that make two evidences approximations of the same kind (they must agree), with
# EvidenceCallback's defaults.
APPROXIMATION = {"structure": "kfac", "curvature": "ggn", "weights": "all",
                 "structure_options": None}  # fmt: skip
COLUMNS = ("name", "likelihood", "log_evidence", "data_fit", "occam", "symmetry", "mode_gap",
           "gamma", "n_params", "alpha", "beta", "seconds")  # fmt: skip
# Shown as well when a candidate was trained more than once (compare_models(restarts=k)).
RESTART_COLUMNS = ("restart", "restart_evidences")
# Activations with f(−a) = −f(a): flipping the signs of a hidden unit's incoming weights and bias
# and of its outgoing weights leaves the network's function unchanged.
ODD_ACTIVATIONS = frozenset({"tanh", "softsign", "linear"})
# Layers between a Dense layer and its consumer that act on each unit alone (and are odd).
_ELEMENTWISE = (keras.layers.Activation, keras.layers.Dropout)
# The squared Mahalanobis distance (in the posterior's marginal variances) beyond which a
# permuted or sign-flipped weight vector is another mode (log_symmetry).
RESOLUTION = 4.0
# Priors that treat every unit of a layer alike, and a weight and its negative alike.
_SYMMETRIC_PRIORS = ("scalar", "layer", "variable")
# The distance to the mode (mode_gap, nats) beyond which compare_models and compare_laplaces
# warn: evidence differences of a nat or two decide comparisons.
MODE_GAP = 1.0
# compare_models measures each candidate's gap for its table (one warning for all): the
# callbacks it trains with do not.
_MEASURED_HERE = {"check_mode": False}
# Angles at which the path test evaluates the data term along the rotation of two units, a
# quarter turn in steps of 5.6°: the data term is a smooth function of the angle.
PATH_ANGLES = np.pi / 2 * np.arange(1, 17) / 16
# (unit pair, angle) evaluations per traced call of the path test.
_PATH_CHUNK = 512


class ComparisonTable:
    """One row per candidate (dicts with :data:`COLUMNS`, and :data:`RESTART_COLUMNS`: the
    restart kept, every restart's log evidence), best log evidence first.

    Iterate over it, index it by position or candidate name, ``list(table)`` for the dicts
    (``pandas.DataFrame(list(table))`` for a data frame), :meth:`to_markdown` for text (with
    the restart columns when some candidate was trained more than once).
    """

    def __init__(self, rows):
        self.rows = tuple(sorted(rows, key=lambda r: -r["log_evidence"]))
        several = any(len(row.get("restart_evidences", ())) > 1 for row in self.rows)
        self.columns = COLUMNS + (RESTART_COLUMNS if several else ())

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            for row in self.rows:
                if row["name"] == key:
                    return row
            raise KeyError(f"no candidate named {key!r}; the candidates are {self.names}")
        return self.rows[key]

    @property
    def names(self) -> list[str]:
        return [row["name"] for row in self.rows]

    def to_markdown(self) -> str:
        """The table as GitHub markdown (numbers to 4 significant digits)."""
        columns = self.columns
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in self.rows:
            lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
        return "\n".join(lines)

    def __repr__(self):
        columns = self.columns
        cells = [list(columns)] + [[_cell(row[c]) for c in columns] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
        return "\n".join(
            "  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            for r in cells
        )  # fmt: skip


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer):
        return str(int(value))
    if np.ndim(value) > 0:
        return np.array2string(np.asarray(value), precision=3, threshold=4)
    return f"{float(value):.4g}"


@dataclass
class Comparison:
    """What :func:`compare_models` (or :func:`compare_laplaces`: no training parameters) found.

    best : the name of the candidate with the largest log evidence; laplace : its fitted
    :class:`~sigma.Laplace` (at its trained weights, α and β; of the restart kept); laplaces :
    every candidate's, by name; table : a :class:`ComparisonTable`; parameters : how they were
    trained and scored (epochs, batch_size, seed, restarts, the EvidenceCallback options, the
    number of training samples).
    """

    best: str
    laplace: object
    laplaces: dict
    table: ComparisonTable
    parameters: dict = field(default_factory=dict)

    @property
    def log_evidences(self) -> dict[str, float]:
        """{name: ln p(y | model)} in the candidates' order of the table (best first)."""
        return {row["name"]: row["log_evidence"] for row in self.table}

    def __repr__(self):
        p = self.parameters
        shown = {"N": p.get("n_data"), "epochs": p.get("epochs"), "seed": p.get("seed"),
                 "restarts": p.get("restarts"),
                 "structure": repr(p.get("options", {}).get("structure"))}  # fmt: skip
        listed = ", ".join(f"{k}={v}" for k, v in shown.items() if v is not None)
        return f"Comparison(best={self.best!r}, {listed})\n{self.table!r}"


def _activation_name(fn) -> str | None:
    try:
        name = keras.activations.serialize(fn)
    except Exception:  # a custom activation Keras cannot name
        return None
    return name if isinstance(name, str) else None


def _hidden_layers(model) -> list[tuple[keras.layers.Dense, list, bool]]:
    """(layer, the Dense layers it feeds, odd) for every trainable Dense layer of ``model``,
    called once and not an output, whose outputs reach only trainable Dense layers called
    once, each directly or through Activation/Dropout layers: units that can be permuted (and,
    ``odd``, have their signs flipped: every function on the way is odd) without changing what
    the network computes. Any other operation on the way (a slice, ``keras.ops.exp``, a
    concatenation) and a model whose graph cannot be read count no units: the term is then a
    lower bound."""
    try:
        # a functional model's operations include raw ops; a Sequential's are its layers
        members = list(model.operations if hasattr(model, "operations") else model.layers)
        ends = {id(keras_compat.history(t).operation) for t in model.outputs}
    except (AttributeError, ValueError, TypeError):  # subclassed or unbuilt: no graph to read
        return []
    found = []

    def single(layer) -> bool:
        return layer.trainable and keras_compat.call_count(layer) == 1

    for layer in members:
        if not isinstance(layer, keras.layers.Dense) or not single(layer) or id(layer) in ends:
            continue
        odd = _activation_name(layer.activation) in ODD_ACTIVATIONS
        frontier, consumers, ok = [layer], [], True
        while frontier and ok:
            current = frontier.pop()
            for nxt in keras_compat.consumers(current):
                if not any(nxt is other for other in members):
                    continue  # a node of another model the layer was also called in
                if isinstance(nxt, keras.layers.Dense) and single(nxt):
                    consumers.append(nxt)
                elif isinstance(nxt, _ELEMENTWISE) and id(nxt) not in ends:
                    if isinstance(nxt, keras.layers.Activation):
                        odd = odd and _activation_name(nxt.activation) in ODD_ACTIVATIONS
                    frontier.append(nxt)
                else:
                    ok = False
                    break
        if ok and consumers:
            found.append((layer, consumers, odd))
    return found


def log_symmetry(laplace, x=None, y=None, *, resolution: float | None = RESOLUTION,
                 paths: bool = True) -> float:  # fmt: skip
    """ln of the number of distinct modes of the posterior equivalent to the trained one:
    weight vectors that give the same function (MacKay 1992a; Bishop 1995 §10.6) and that the
    posterior tells apart.

    A hidden layer of H units (a Dense layer whose outputs go, through elementwise layers only,
    to Dense layers) can have its units permuted — H! ways — and, with an odd activation such
    as tanh, each unit's signs flipped — 2^H ways — without changing the function or the prior
    density. The Laplace approximation describes one mode, so the network's evidence is its
    evidence times the number of modes. It is a constant in α and β (it changes no estimate)
    but grows with the width and depth, so it belongs in any comparison of networks of
    different sizes.

    A permuted or flipped weight vector is another mode only if it lies outside the posterior
    around this one; where it lies within it, the one-mode evidence already counts it. With
    ``resolution`` (a squared Mahalanobis distance, default :data:`RESOLUTION`, in the
    posterior's marginal variances): units whose exchange (up to sign, for an odd activation)
    moves the weights by less than it are one group, and only the H!/Π c_j! permutations
    between groups of sizes c_j count; a unit's sign flip counts when it moves the weights by
    more (docs/math.md §8). Trained wide layers have such groups: units at zero, and copies of
    one feature (k copies carrying v/k each pay 1/k of the outgoing weights' penalty). The
    distances use the marginal variances, not the full covariance, and groups chain (single
    linkage): approximations docs/math.md §8 discusses. ``resolution=None`` counts every
    permutation and flip, ln H! + H ln 2 per layer: an upper bound.

    Copies can also be joined by a curved path the posterior stays high along: rotating two
    units of an odd activation (their incoming weights, bias and outgoing weights) in their
    common plane keeps every variable's norm, so the prior, and a quarter turn is an exchange
    with one sign flipped, a symmetry. Where the units work in the activation's linear range
    (or one of them is unused) the function barely changes on the way. With ``paths``
    (default) and the training data — ``x``, ``y`` as for the fit, by default the Laplace's
    own; a Laplace loaded from a file has none, and is then counted without the path test,
    with a warning — two units in different groups join when the data term Σ_h β_h E_h rises
    by at most ``resolution``/8 anywhere along the rotation (:data:`PATH_ANGLES`): the rise
    the straight test allows the Laplace approximation's quadratic halfway, asked of the
    posterior itself along the curved path (a rule of thumb, docs/math.md §8). A group joined
    by a path counts one sign flip (the rotations reach the signed permutations of
    determinant +1), none when it also holds a reflection within the resolution. Data that
    are not the Laplace's (another N, other targets, a data term at the trained weights other
    than the fit's) and weights changed since the fit raise ValueError. The path test costs
    at most H²/2 · 16 forward passes over the data per layer, one traced graph per layer of a
    model; it only ever lowers the count.

    Counted only where it holds as stated: the posterior covers every weight (a last-layer
    posterior's hidden units are fixed features, not integrated over) and the prior treats the
    units of a layer alike ("scalar", "layer" or "variable"; an array of groups gives 0).
    Hidden units of other layers (convolutions, recurrent cells) are not counted: for such
    models it is a lower bound, 0 where no Dense layer feeds a Dense layer. A structure that
    cannot give the marginal variances (``inverse_diagonal``) gets the bound.
    """
    if resolution is not None and not (
        isinstance(resolution, numbers.Real) and not isinstance(resolution, bool) and resolution > 0
    ):
        raise ValueError(f"resolution must be a positive number or None, got {resolution!r}")
    if not laplace.selection.full or laplace.prior.kind not in _SYMMETRIC_PRIORS:
        return 0.0
    if not isinstance(paths, bool):
        raise ValueError(f"paths must be True or False, got {paths!r}")
    layers = _hidden_layers(laplace.model)
    weights = precisions = None  # None: every permutation and flip counts
    if resolution is not None and layers:
        laplace.posterior.check_weights_unchanged()  # the weights read are the fitted ones
        try:
            weights, precisions = _per_variable(laplace)
        except NotImplementedError:  # a structure without diag(A⁻¹): the bound
            pass
    rises = None
    if paths and weights is not None and any(odd for _, _, odd in layers):
        rises = _PathRises.of(laplace, x, y)
        if rises is None:
            warnings.warn(
                "the Laplace has no training data (loaded from a file): its modes are counted "
                "without the path test, a count that can only be larger; pass x, y (its "
                "training data) to count them with it, or paths=False",
                stacklevel=2,
            )
    return float(
        sum(_log_modes(layer, consumers, odd, weights, precisions, resolution,
                       rises if odd else None)
            for layer, consumers, odd in layers)
    )  # fmt: skip


def _log_modes(layer, consumers, odd: bool, weights, precisions, resolution, rises) -> float:
    """ln of the modes one hidden layer gives: those the posterior tells apart, or every
    permutation and flip (ln H! + H ln 2 for ``odd``) without ``weights`` or when one of the
    layer's variables is outside the posterior."""
    from scipy.special import gammaln

    units, precision = (None, None)
    if weights is not None:
        units, precision = _unit_vectors(layer, consumers, weights, precisions)
    if units is None:
        return float(gammaln(layer.units + 1.0) + (layer.units * np.log(2.0) if odd else 0.0))
    if rises is None:
        sizes, flips = _distinct(units, precision, odd, float(resolution))
    else:  # a bar over the units once the path test takes a few seconds
        bar = progress.bar(total=len(units), desc=f"log_symmetry paths ({layer.name})")

        def joined(u, others):
            bar.update(u + 1 - bar.n)
            return rises(layer, consumers, u, others).max(axis=1) <= resolution / 8.0

        with bar:
            sizes, flips = _distinct(units, precision, odd, float(resolution), joined)
    return float(gammaln(len(units) + 1.0) - gammaln(sizes + 1.0).sum() + flips * np.log(2.0))


def _per_variable(laplace) -> tuple[dict, dict]:
    """{id(variable): weights} and {id(variable): 1 / marginal posterior variance}, float64,
    for the posterior's weights (every trainable variable: the selection is full)."""
    post = laplace.posterior
    structure, b = post.operator()
    variances = np.asarray(structure.inverse_diagonal(post.alpha_weights(), b), np.float64)
    variables = laplace.model.trainable_variables
    weights, precisions, offset = {}, {}, 0
    for (i, chunk), size in zip(post.selection.parts, post.selection.sizes, strict=True):
        variable = variables[i]  # keyed by identity: paths repeat in nested models
        w = np.asarray(variable.numpy(), np.float64).reshape(-1)
        p = np.full(w.size, np.nan)
        p[slice(None) if chunk is None else chunk] = 1.0 / variances[offset : offset + size]
        weights[id(variable)] = w.reshape(variable.shape)
        precisions[id(variable)] = p.reshape(variable.shape)
        offset += size
    return weights, precisions


def _unit_vectors(layer, consumers, weights, precisions):
    """(H, d) weights of each unit of ``layer`` (its incoming kernel column, bias, outgoing
    kernel rows in every consumer) and their precisions, or (None, None) when one of them is
    not a posterior variable."""
    parts = [(layer.kernel, False)] + ([(layer.bias, False)] if layer.use_bias else [])
    parts += [(consumer.kernel, True) for consumer in consumers]
    units, precision = [], []
    for variable, outgoing in parts:
        key = id(variable)
        if key not in weights or np.isnan(precisions[key]).any():
            return None, None
        w, p = weights[key], precisions[key]
        if w.ndim == 1:  # a bias: one weight per unit
            w, p = w[None, :], p[None, :]
        units.append(w if not outgoing else w.T)
        precision.append(p if not outgoing else p.T)
    return np.concatenate(units, 0).T, np.concatenate(precision, 0).T


def _distinct(units, precision, odd: bool, resolution: float,
              joined=None) -> tuple[np.ndarray, int]:  # fmt: skip
    """Sizes of the groups of units no exchange within which moves the weights by more than
    ``resolution`` (squared, in the posterior's precisions; up to sign for ``odd``), chained
    (single linkage), and the number of sign flips that count: of every unit whose flip moves
    it by more, but one at most in a group a path joined.

    ``joined(u, others)``: which of the units ``others`` (indices) a path of high posterior
    joins to unit u (bool array); asked for the pairs of units in different groups, once each
    (the groups grow as the answers come: a pair already in one group is not asked again). A
    group a path joined counts one flip (the rotations reach the signed permutations of
    determinant +1), none when it holds a unit whose flip, or two units whose exchange, is
    within the resolution (either a reflection: then every signed permutation)."""
    from scipy.sparse.csgraph import connected_components

    flipped = ((2.0 * units) ** 2 * precision).sum(axis=1)  # a flip moves a unit by twice it
    n = len(units)
    near = np.zeros((n, n), bool)
    for u in range(n):  # exchanging u and v moves u's weights to v's place and back
        scale = precision[u] + precision
        moved = ((units[u] - units) ** 2 * scale).sum(axis=1)
        if odd:
            moved = np.minimum(moved, ((units[u] + units) ** 2 * scale).sum(axis=1))
        near[u] = moved <= resolution
    _, labels = connected_components(near | near.T, directed=False)
    # per group label: a straight link within (an exchange, or one with both signs flipped,
    # within the resolution: a reflection), and joined by a path
    linked = np.bincount(labels, minlength=n) > 1
    by_path = np.zeros(n, bool)
    if joined is not None:
        for u in range(n - 1):
            others = np.flatnonzero(labels[u + 1 :] != labels[u]) + u + 1
            if others.size == 0:
                continue
            for v in others[np.asarray(joined(u, others), bool)]:
                if labels[v] != labels[u]:  # merge v's group into u's
                    old = labels[v]
                    by_path[labels[u]] |= by_path[old]
                    linked[labels[u]] |= linked[old]
                    labels[labels == old] = labels[u]
                by_path[labels[u]] = True
    flips = 0
    if odd:
        distinct = flipped > resolution
        for label in np.unique(labels):
            members = labels == label
            if not by_path[label]:
                flips += int(distinct[members].sum())
            else:  # the rotations reach the signed permutations of determinant +1: two modes,
                # one if a flip or a straight link (a reflection) is within the resolution
                flips += int(distinct[members].all() and not linked[label])
    _, labels = np.unique(labels, return_inverse=True)
    return np.bincount(labels), flips


def _activations(model) -> int:
    """Values a forward pass holds per sample (≥ 1), to size the path test's batches."""
    from sigma.memory import activation_elements

    return max(1, int(activation_elements(model)))


class _PathRises:
    """The rise of the data term Σ_h β_h E_h along the rotation of two hidden units, over the
    Laplace's training data: ``rises(layer, consumers, u, others)`` (len(others),
    len(:data:`PATH_ANGLES`)) in nats. One traced graph per layer, kept in the model's engine
    (``stateless_call`` with the layer's kernel, bias and consumers' kernels rotated)."""

    def __init__(self, laplace, data, *, own: bool):
        from sigma import likelihoods
        from sigma.curvature.engine import engine

        post = laplace.posterior
        self.model, self.data, self.own = laplace.model, data, own
        self.engine = engine(self.model)
        # the samples per batch, to size the (pair, angle) evaluations per call (chunk)
        self.batch = (
            len(keras.tree.flatten(next(iter(data))[0])[0])
            if is_dataset(data)
            else min(data.n, data.batch_size)
        )
        self.likelihood = likelihoods.get(post.likelihood)
        self.groups, self.beta = post.groups, np.asarray(post.beta, np.float64)
        self.fitted = float(post.group_errors @ self.beta)  # Σ β_h E_h when it was fitted
        self.n_data = post.summary.n_data
        self._base = None  # the data term at the trained weights, once checked
        self._accumulators = {}

    @classmethod
    def of(cls, laplace, x, y):
        """For the data ``x``, ``y`` (as for the fit) or the Laplace's own; None without any.
        ValueError when x, y are not the Laplace's training data (their N and targets'
        fingerprint; the data term at the trained weights is checked when first evaluated)."""
        # batches of samples that leave room for at least 16 evaluations within the budget
        found = _training_data(laplace, x, y, 16 * _activations(laplace.model))
        return None if found is None else cls(laplace, found[0], own=found[1])

    def _accumulator(self, layer, consumers):
        import tensorflow as tf

        from sigma.curvature import vectorize
        from sigma.curvature.capture import flat_outputs

        model, lik, groups = self.model, self.likelihood, self.groups
        variables = model.trainable_variables
        where = {id(v): i for i, v in enumerate(variables)}
        kernel = where[id(layer.kernel)]
        bias = where[id(layer.bias)] if layer.use_bias else None
        outgoing = [where[id(c.kernel)] for c in consumers]
        kwargs = {"training": False} if keras_compat.call_has_training_arg(model) else {}
        h, dtype = int(layer.units), self.engine.dtype

        def body(batch, pairs, angles):
            x, t = batch
            base = [tf.convert_to_tensor(v.value) for v in variables]
            frozen = [v.value for v in model.non_trainable_variables]
            t = tf.cast(t, tf.float64)

            def one(args):
                pair, angle = args
                e_i, e_j = tf.one_hot(pair[0], h, dtype=dtype), tf.one_hot(pair[1], h, dtype=dtype)
                c, s = tf.cos(angle), tf.sin(angle)
                # R: columns i, j of the identity rotated by the angle (kernel @ R, Rᵀ @ outgoing)
                r = (tf.eye(h, dtype=dtype)
                     + (c - 1.0) * (e_i[:, None] * e_i + e_j[:, None] * e_j)
                     + s * (e_j[:, None] * e_i - e_i[:, None] * e_j))  # fmt: skip
                values = list(base)
                values[kernel] = tf.matmul(base[kernel], r)
                if bias is not None:
                    values[bias] = tf.linalg.matvec(r, base[bias], transpose_a=True)
                for k in outgoing:
                    values[k] = tf.matmul(r, base[k], transpose_a=True)
                out, _ = model.stateless_call(values, frozen, x, **kwargs)
                f = tf.cast(flat_outputs(out), tf.float64)
                return tf.cast(lik.group_errors(f, t, groups), tf.float64)

            spec = tf.TensorSpec([groups.n_groups], tf.float64)
            return vectorize.per_sample(one, (pairs, angles), spec, memo=self.engine.vectorizing)

        key = ("path rises", id(layer), lik.key, tuple(groups.outputs.tolist()))
        return self.engine.accumulator(
            key, body, self.data,
            arg_specs=[tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([None], dtype)],
            progress=False,
        )  # fmt: skip

    def _chunk(self, layer, consumers) -> int:
        """(pair, angle) evaluations per call: each holds a batch's activations and its own
        copy of the rotated variables (and R), within the element budget."""
        rotated = int(np.prod(layer.kernel.shape)) + 2 * int(layer.units) ** 2
        rotated += sum(int(np.prod(c.kernel.shape)) for c in consumers)
        each = self.batch * _activations(self.model) + rotated
        return int(np.clip(ELEMENT_BUDGET // max(each, 1), 1, _PATH_CHUNK))

    def _check_base(self, base: float) -> None:
        """ValueError unless the data term at the trained weights is the fit's (the first
        call) and the same in every call (data that do not change from pass to pass)."""
        scale = _term_scale(self.fitted, self.n_data)
        if self._base is None:
            _check_fitted_term(base, self.fitted, self.own, self.n_data)
            self._base = base
        elif abs(base - self._base) > 1e-5 * scale:
            raise ValueError(
                f"the data term at the trained weights differs from one pass over the "
                f"{'training data' if self.own else 'data x'} to the next ({self._base:.6g}, "
                f"{base:.6g}): a dataset that shuffles with drop_remainder or augments at "
                "random; pass the training data as arrays, or a dataset that yields the same "
                "batches every pass"
            )

    def __call__(self, layer, consumers, u: int, others) -> np.ndarray:
        key = id(layer)
        if key not in self._accumulators:
            self._accumulators[key] = (
                self._accumulator(layer, consumers),
                self._chunk(layer, consumers),
            )
        acc, chunk = self._accumulators[key]
        others = np.asarray(others, np.int32)
        pairs = np.array([[u, v] for v in others for _ in PATH_ANGLES], np.int32)
        angles = np.tile(PATH_ANGLES, len(others))
        step = max(chunk - 1, 1)
        rises = []
        with own_calls(self.model):
            for s in range(0, len(pairs), step):
                # the angle 0 first in every call: the data term at the trained weights, over
                # the same batches as the rotated ones
                part = slice(s, s + step)
                energy = (
                    acc(
                        np.concatenate([pairs[s : s + 1], pairs[part]]),
                        np.concatenate([[0.0], angles[part]]).astype(self.engine.dtype),
                    )
                    @ self.beta
                )
                self._check_base(energy[0])
                rises.append(energy[1:] - energy[0])
        return np.concatenate(rises).reshape(len(others), len(PATH_ANGLES))


def _training_data(laplace, x, y, per_sample: int):
    """(batches, own) of the data ``x``, ``y`` (prepared as for the fit) or of the
    Laplace's own training data (``own``: True), in batches of ``per_sample`` elements per
    sample within the budget; None for a Laplace without data (loaded from a file) and no
    x, y. ValueError when x, y are not its training data: another N or other targets (their
    fingerprint, :attr:`sigma.Laplace.target_moments`)."""
    from sigma.curvature.accumulate import ArrayBatches, prepare_dataset
    from sigma.fitting import prepare
    from sigma.summary import moments, target_moments

    post = laplace.posterior
    if x is None and y is None:
        if post.data is None:  # loaded from a file
            return None
        if is_dataset(post.data):
            return post.data, True
        size = batch_size_for(post.summary.n_data, per_sample, None)
        return ArrayBatches((post.data, post.targets), size), True
    if x is None:
        raise ValueError("x is required with y: the training inputs of the Laplace")
    if is_dataset(x):
        if y is not None:
            raise ValueError("y must be None when x is a tf.data.Dataset of (x, y) batches")
        data, n, *_, sums = prepare_dataset(
            laplace.model, x, post.likelihood, layout=post.output_layout
        )
    else:
        if y is None:
            raise ValueError("y is required with x: the training targets of the Laplace")
        x, y, _ = prepare(laplace.model, x, y, post.likelihood)
        n = len(keras.tree.flatten(x)[0])
        sums = moments(post.likelihood.distinct_targets(y))
        data = ArrayBatches((x, y), batch_size_for(n, per_sample, None))
    known, given = post.summary.target_moments, target_moments(sums)
    if n != post.summary.n_data or (known is not None and not _same_targets(given, known)):
        raise ValueError(
            f"x, y ({n} samples, targets' column means and mean square {_short(given)}) are "
            f"not the data the Laplace was fitted on ({post.summary.n_data} samples"
            + ("" if known is None else f", {_short(known)}")
            + "): pass its training data"
        )
    return data, False


def _term_scale(fitted: float, n_data: int) -> float:
    """The scale of a data term's round-off: its size, or its number of samples (a nat or so
    each), whichever is larger (a heteroscedastic data term can be a sum of terms of both signs
    that nearly cancel)."""
    return max(abs(fitted), float(n_data), 1.0)


def _check_fitted_term(value: float, fitted: float, own: bool, n_data: int) -> None:
    """ValueError unless the data term Σ_h β_h E_h at the trained weights, ``value``, is the
    fit's (``fitted``; within 1e-3 of :func:`_term_scale`): other inputs with the Laplace's
    targets, or a dataset that differs from pass to pass."""
    if not abs(value - fitted) <= 1e-3 * _term_scale(fitted, n_data):
        raise ValueError(
            f"the data term on {'its training data' if own else 'x, y'} is "
            f"{value:.6g}, the Laplace's {fitted:.6g}: "
            + ("its training data no longer give the fit's (a dataset that differs "
               "from pass to pass?)" if own
               else "x, y are not the data the Laplace was fitted on")
        )  # fmt: skip


class ModeGapUnavailable(ValueError):
    """:func:`mode_gap` cannot be measured: the Laplace's own training data give another data
    term than at the fit (a dataset that differs from pass to pass), or its structure has no
    ``inverse_quadratic``."""


def mode_gap(laplace, x=None, y=None) -> float:
    """How far short of the mode training stopped, in nats of the log posterior: ½ gᵀA⁻¹g,
    with g the gradient of the negative log joint Σ_h β_h E_h + ½ Σ α_i w_i² at the trained
    weights over the training data, and A the Laplace's posterior precision.

    The Laplace evidence assumes g = 0. Where it is not, the quadratic model of the log
    posterior around the weights, −E(w) − gᵀδ − ½ δᵀAδ, has its maximum ½ gᵀA⁻¹g higher, a
    Newton step away; the evidence at the weights is then short by about that much (exactly,
    for a linear model with a Gaussian likelihood and a structure whose A is exact, "full", or
    "kfac" for one output: its log posterior is that quadratic). A gap of a nat or more is
    larger than the evidence differences that decide between candidates: train longer, on
    batches of equal size, or end with a smaller learning rate (docs/math.md §4, "How far from
    the mode"). The gap is measured in the structure's own A, so it differs between structures;
    with ``weights=`` a subset it is the distance of the selected weights from the mode given
    the others.

    ``x``, ``y``: the training data as for the fit; by default the Laplace's own (a Laplace
    loaded from a file has none: pass them). ValueError when they are not its training data
    (another N, other targets, a data term at the weights other than the fit's) or when the
    weights changed since the fit; :class:`ModeGapUnavailable` (a ValueError) when its own
    data differ from pass to pass or its structure has no ``inverse_quadratic``.
    """
    post = laplace.posterior
    post.check_weights_unchanged()
    found = _training_data(laplace, x, y, 2 * _activations(laplace.model))
    if found is None:
        raise ValueError(
            "the Laplace has no training data (loaded from a file): pass x, y, the data it "
            "was fitted on"
        )
    data, own = found
    beta = np.asarray(post.beta, np.float64)
    eng = post.structure.engine_for(post.model)
    with own_calls(post.model):
        value, grad = eng.data_gradient(data, post.likelihood, post.groups, beta)
    try:
        _check_fitted_term(value, float(post.group_errors @ beta), own, post.summary.n_data)
    except ValueError as err:
        if own:
            raise ModeGapUnavailable(str(err)) from None
        raise
    alpha = post.alpha_weights()
    weights = post.structure.posterior_weights(post.model).astype(np.float64)
    grad = grad + np.asarray(alpha, np.float64) * weights
    structure, b = post.operator()
    try:
        quadratic = structure.inverse_quadratic(grad, alpha, b)
    except NotImplementedError as err:
        raise ModeGapUnavailable(f"{err}: the distance to the mode needs it") from None
    return 0.5 * float(quadratic)


def _candidates(candidates, callback_options) -> dict[str, tuple[Callable, dict]]:
    """{name: (build, EvidenceCallback options)}: a candidate is a zero-argument callable or a
    pair (callable, dict of options that override the shared ones for it)."""
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError(
            "candidates must be a non-empty dict {name: build}, build a zero-argument callable "
            f"returning a compiled keras.Model, got {type(candidates).__name__}"
            + (" (empty)" if isinstance(candidates, Mapping) else "")
        )
    out = {}
    for name, value in candidates.items():
        if not isinstance(name, str):
            raise ValueError(f"candidates must be keyed by names (str), got the key {name!r}")
        options = {}
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Mapping):
            value, options = value
        if isinstance(value, keras.Model):
            raise ValueError(
                f"candidates[{name!r}] must be a zero-argument callable returning a compiled "
                "keras.Model, got the model itself: pass the function that builds it, so that "
                "each candidate is built afresh under the comparison's seed"
            )
        if not callable(value):
            raise ValueError(
                f"candidates[{name!r}] must be a zero-argument callable returning a compiled "
                "keras.Model (or a pair (callable, dict of EvidenceCallback options)), got "
                f"{type(value).__name__}"
            )
        for key in ("x", "y", "verbose"):
            if key in options or key in callback_options:
                raise ValueError(
                    f"{key!r} is set by compare_models, not an EvidenceCallback option to pass"
                )
        out[name] = (value, {**callback_options, **dict(options)})
    return out


def _parts(data, name: str) -> list[tuple[str, object]]:
    """(name, array) of each part of ``data``: a dict or a list of arrays (one per model input
    or output), else ``data`` itself (a list of rows is one array)."""
    if isinstance(data, Mapping):
        return [(f"{name}[{key!r}]", value) for key, value in data.items()]
    if isinstance(data, list | tuple) and all(len(getattr(v, "shape", ())) >= 1 for v in data):
        return [(f"{name}[{i}]", value) for i, value in enumerate(data)]
    return [(name, data)]


def _check_data(x, y) -> int:
    """The number of samples; ValueError, before anything is built or trained, unless ``x``
    and ``y`` (arrays, or lists or dicts of arrays: one per model input, one per output) have
    one row per sample in every part, the same number, and the numeric ones are finite:
    naming the part that is not."""
    from sigma._checks import as_array
    from sigma.curvature.accumulate import is_dataset

    if is_dataset(x) or is_dataset(y):
        raise ValueError(
            "x and y must be arrays (or lists or dicts of arrays, one per model input or "
            "output), the same for every candidate, got a tf.data.Dataset: compare_models "
            "batches them itself (batch_size=) for model.fit and the evidence"
        )
    if y is None:
        raise ValueError("y is required: the training targets, one row per sample of x")
    parts = _parts(y, "y") + _parts(x, "x")
    if len(parts) < 2:
        raise ValueError("x and y must not be empty: one row per training sample in each")
    reference = None  # (name, rows) of the first part
    for name, value in parts:
        if value is None:
            raise ValueError(f"{name} is None: pass an array with one row per training sample")
        if isinstance(value, np.ndarray | list | tuple | numbers.Number):
            value = np.asarray(value)
            if value.dtype.kind in "fiu":  # numbers must be finite (strings go to their layers)
                as_array(value, name)
        shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
        if not shape:
            raise ValueError(f"{name} must have one row per sample, got a scalar")
        if reference is None:
            reference = (name, shape[0])
        elif shape[0] != reference[1]:  # tensors, sparse and ragged ones too, by their shape
            raise ValueError(
                f"{name} has {shape[0]} rows but {reference[0]} has {reference[1]}: x and y "
                "must have one row per training sample, the same number in every part"
            )
    return int(reference[1])


def _stream(x, y, n: int, batch_size: int, seed: int):
    """(dataset, steps per epoch) for ``model.fit``: batches of exactly ``batch_size`` samples
    (all N when fewer) drawn from a shuffled stream of (x, y) that repeats, ⌈N/batch_size⌉ per
    epoch. Keras weighs each batch's mean loss alike, so the short last batch of
    ``fit(x, y, batch_size=...)`` — one sample of 353 at batch_size=32 — ends every epoch on a
    full step driven by its few samples, which leaves the weights off the mode of the log
    posterior (by 7 to 29 nats for notebook 09's linear models, however many epochs); equal
    batches from a stream reach it."""
    import tensorflow as tf

    def nest(v):  # a list of inputs is a nest of its parts, not one stacked tensor
        return tuple(v) if isinstance(v, list) else v

    size = min(batch_size, n)
    data = (
        tf.data.Dataset.from_tensor_slices((nest(x), nest(y)))
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .batch(size, drop_remainder=True)
        .prefetch(2)
    )
    return data, -(-n // size)


def _check_comparable(families: dict[str, str], options: dict[str, dict],
                       what: str = "candidates") -> None:  # fmt: skip
    """ValueError unless every candidate's evidence is a density of the same targets computed
    by the same kind of approximation, naming the candidates that differ (``families``: each
    one's likelihood family, ``Likelihood.family``; ``what``: what the names are of,
    "candidates" or "laplaces")."""
    by_family = {}
    for name, family in families.items():
        by_family.setdefault(family, []).append(name)
    if len(by_family) > 1:
        listed = "; ".join(f"{family}: {names}" for family, names in by_family.items())
        raise ValueError(
            f"{what} mix likelihood families ({listed}): a classifier's evidence is a "
            "probability of labels, a regression's a density of real targets, so the two are "
            "not comparable. Compare classifiers with classifiers and regressions with "
            "regressions (mean squared error and sigma.losses.GaussianNLL may be mixed)"
        )
    from sigma import structures

    resolved = {}
    for name, opts in options.items():
        opts = {**APPROXIMATION, **opts}
        try:
            opts["structure"], opts["weights"] = structures.resolve(
                opts["structure"], opts["weights"]
            )  # an alias such as "last_layer" as its two axes
        except ValueError as exc:
            raise ValueError(f"{what}[{name!r}]: {exc}") from None
        resolved[name] = opts
    for key in APPROXIMATION:
        values = {}
        for name, opts in resolved.items():
            values.setdefault(repr(opts[key]), []).append(name)
        if len(values) > 1:
            listed = "; ".join(f"{key}={value}: {names}" for value, names in values.items())
            how = ("pass it once, as a keyword of compare_models" if what == "candidates"
                   else "fit them with one")  # fmt: skip
            raise ValueError(
                f"{what} differ in the {key} of their Laplace approximation ({listed}): "
                "evidences of different approximations differ by the quality of the "
                f"approximation as much as by the models, so compare them with one {key} "
                f"({how})"
            )


def compare_models(
    candidates: Mapping,
    x,
    y,
    *,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    restarts: int = 1,
    verbose: int = 1,
    paths: bool = True,
    **callback_options,
) -> Comparison:
    """Train every candidate for the posterior and choose the one with the largest evidence.

    Parameters
    ----------
    candidates : {name: build}, build a zero-argument callable returning a compiled
        ``keras.Model`` — loss ``"mse"`` (homoscedastic regression, one noise precision β by
        the evidence), :class:`sigma.losses.GaussianNLL` (heteroscedastic regression: a mean
        and a log-variance per target) or a cross-entropy on logits (classification). A value
        may also be a pair ``(build, {EvidenceCallback options})`` overriding the shared
        options for that candidate (its ``prior``, say).
    x, y : the training data, the same for every candidate: arrays with one row per sample,
        or lists or dicts of them (one per model input, one per output); checked before
        anything is built (the same number of rows in every part, finite numbers).
    epochs, batch_size : of ``model.fit``.
    seed : ``keras.utils.set_random_seed(seed)`` before each candidate is built and again
        before it is trained: each candidate's result does not depend on the others.
    restarts : how many times each candidate is built and trained, from the seeds ``seed``,
        ``seed + 1``, …, ``seed + restarts - 1`` (≥ 1). A network's training ends in one of
        many modes, some better than others; the restart with the largest log evidence
        represents the candidate (MacKay 1992a: the evidence chooses among the solutions of
        one architecture as among architectures). Its row says which (``restart``, from 0)
        and gives every restart's log evidence (``restart_evidences``); the others' models
        are not kept. The cost is ``restarts`` trainings per candidate.
    verbose : 1 (default) a progress bar over the trainings, candidates × restarts (once the
        work takes a few seconds), 0 silent.
    paths : whether the count of equivalent modes also joins units along the rotation between
        them (:func:`log_symmetry`; default True). It costs up to H²/2 · 16 forward passes
        over the training data per tanh layer of H units: False for large data and layers,
        where the straight test's count (which can only be larger) is then used for every
        candidate.
    **callback_options : for every candidate's :class:`sigma.EvidenceCallback` (structure,
        prior, every, warmup, curvature, weights, ...; default structure "kfac").

    Returns a :class:`Comparison`: ``best`` (the name), ``laplace`` (the best candidate's
    fitted Laplace), ``laplaces``, ``table`` (per candidate: log evidence, its data fit, Occam
    factor and symmetry term, its :func:`mode_gap`, γ, P, α, β, training seconds of the
    restart kept, which restart that is and every restart's log evidence) and
    ``parameters``. The log evidence is ``laplace.log_evidence()`` (one mode) plus
    :func:`log_symmetry` (the number of equivalent modes; 0 for a model without hidden Dense
    units).

    The evidence is that of the most probable weights: train each candidate until its
    training objective has stopped improving (a learning rate and enough epochs that the
    small networks converge too), or the comparison ranks how far training got. The table's
    ``mode_gap`` says how far each stopped from its mode, in nats of the log posterior (½ gᵀA⁻¹g,
    the rise a Newton step would give), and a RuntimeWarning names the candidates beyond
    :data:`MODE_GAP` (1 nat): their evidences are short by about that much.

    The evidences must be comparable (module docstring): ValueError naming the candidates when
    classifiers and regressions are mixed, or when their structure, curvature, weights or
    structure options differ; and for an EvidenceCallback option it does not take. All of this
    is checked on the built models before any training. An evidence that fails for a
    candidate (e.g. :class:`sigma.evidence.EvidenceBoundaryError`) is raised with a note
    naming it.
    """
    from sigma.callbacks import EvidenceCallback, loss_likelihood

    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_batch_size(batch_size)
    seed = check_seed(seed)
    if seed is None:
        raise ValueError("seed must be a non-negative integer (the comparison is reproducible)")
    restarts = check_positive_int(restarts, "restarts")
    if isinstance(verbose, bool) or verbose not in (0, 1):
        raise ValueError(f"verbose must be 0 or 1, got {verbose!r}")
    if not isinstance(paths, bool):
        raise ValueError(f"paths must be True or False, got {paths!r}")
    specs = _candidates(candidates, callback_options)
    n_data = _check_data(x, y)

    models, kinds, callbacks = {}, {}, {}
    for name, (build, options) in specs.items():
        try:  # the options are checked before anything is trained
            callbacks[name] = EvidenceCallback(x, y, verbose=0, **options, **_MEASURED_HERE)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"candidates[{name!r}]: {exc}") from None
        keras.utils.set_random_seed(seed)
        try:
            model = build()
        except Exception as exc:
            exc.add_note(f"(sigma.compare_models, building candidate {name!r})")
            raise
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"candidates[{name!r}]() must return a compiled keras.Model, got "
                f"{type(model).__name__}"
            )
        try:
            kinds[name] = loss_likelihood(model)
        except ValueError as exc:
            raise ValueError(f"candidates[{name!r}]: {exc}") from None
        models[name] = model
    from sigma import likelihoods

    _check_comparable(
        {name: likelihoods.get(kind).family for name, kind in kinds.items()},
        {name: opts for name, (_, opts) in specs.items()},
    )

    rows, laplaces = {}, {}
    runs = [(name, r) for name in specs for r in range(restarts)]
    bar = progress.bar(runs, desc="compare_models", progress=None if verbose else False)
    with bar:
        for name, r in bar:
            where = "" if restarts == 1 else f", restart {r}, seed {seed + r}"
            bar.set_postfix_str(name + where)
            try:
                if r == 0:  # built (and checked) above
                    model, callback = models.pop(name), callbacks.pop(name)
                else:
                    build, options = specs[name]
                    callback = EvidenceCallback(x, y, verbose=0, **options, **_MEASURED_HERE)
                    keras.utils.set_random_seed(seed + r)
                    model = build()
                keras.utils.set_random_seed(seed + r)
                start = time.perf_counter()
                data, steps = _stream(x, y, n_data, batch_size, seed + r)
                model.fit(data, epochs=epochs, steps_per_epoch=steps, shuffle=False,
                          callbacks=[callback], verbose=0)  # fmt: skip
                seconds = time.perf_counter() - start
                la = callback.laplace
                row = _row(name, kinds[name], la, seconds, log_symmetry(la, paths=paths))
            except Exception as exc:
                exc.add_note(f"(sigma.compare_models, candidate {name!r}{where})")
                raise
            kept = rows.get(name)
            evidences = (kept["restart_evidences"] if kept else ()) + (row["log_evidence"],)
            if kept is None or _larger(row["log_evidence"], kept["log_evidence"]):
                rows[name], laplaces[name] = {**row, "restart": r}, la
            rows[name]["restart_evidences"] = evidences
            del model, callback, la
    table = ComparisonTable(rows.values())
    _warn_far_from_mode(table)
    best = table.rows[0]["name"]
    parameters = {
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "restarts": restarts,
        "paths": paths,
        "n_data": int(laplaces[best].n_data),
        "options": {**APPROXIMATION, **callback_options},
        "candidate_options": {n: o for n, (_, o) in specs.items() if o != callback_options},
    }
    return Comparison(best, laplaces[best], laplaces, table, parameters)


def compare_laplaces(laplaces: Mapping, x=None, y=None, *, paths: bool = True) -> Comparison:
    """Rank Laplaces fitted elsewhere by their log evidence, as :func:`compare_models` ranks the
    candidates it trains, after the same checks that the evidences are comparable.

    laplaces : {name: :class:`sigma.Laplace`}, each fitted on its own trained model (by
        ``sigma.Laplace(model, x, y, ...)``, an :class:`sigma.EvidenceCallback`, or loaded),
        at the α and β it holds (``optimize_evidence()`` first for the evidence's own).
    x, y : the training data, for the path test of the count of modes (:func:`log_symmetry`)
        of the Laplaces loaded from a file, which keep none (each other Laplace uses its own).
        Without them the modes of every Laplace are counted without the path test (a count
        that can only be larger), with a warning naming those without data.
    paths : False counts every Laplace's modes without the path test (as compare_models).

    Returns a :class:`Comparison` (``seconds`` None: nothing is trained here). The log
    evidence is ``laplace.log_evidence()`` plus :func:`log_symmetry`, as in compare_models,
    with each :func:`mode_gap` (None for a Laplace without data when x, y are not given) and
    the same warning for gaps beyond :data:`MODE_GAP`.

    ValueError naming the Laplaces that differ when they are not densities of the same
    targets: fitted on different numbers of samples or on different targets (told apart by
    their column means and mean square, :attr:`sigma.Laplace.target_moments`: rescaled,
    shifted or other targets, labels of other class frequencies; a Laplace loaded from a file
    saved before sigma kept them is checked by its number of samples only), classifiers mixed
    with regressions (a likelihood per head: by its heads'), a classifier at a temperature
    T ≠ 1, or different structures, curvatures, weights or structure options (docs/math.md
    §8). The evidences are at the α and β each Laplace holds: call ``optimize_evidence()``
    first on one fitted at given precisions (an EvidenceCallback's are the evidence's own).
    """
    from sigma.laplace import Laplace

    if not isinstance(laplaces, Mapping) or not laplaces:
        raise ValueError(
            "laplaces must be a non-empty dict {name: sigma.Laplace}, got "
            f"{type(laplaces).__name__ if not isinstance(laplaces, Mapping) else 'an empty dict'}"
        )
    for name, la in laplaces.items():
        if not isinstance(name, str):
            raise ValueError(f"laplaces must be keyed by names (str), got the key {name!r}")
        if not isinstance(la, Laplace):
            raise ValueError(f"laplaces[{name!r}] must be a sigma.Laplace, got {type(la).__name__}")
    kinds = {name: la.likelihood.family for name, la in laplaces.items()}
    tempered = {n: la.temperature for n, la in laplaces.items() if la.temperature != 1.0}
    if tempered:
        raise ValueError(
            f"laplaces {sorted(tempered)} are at a temperature T ≠ 1 ({tempered}): the "
            "evidence of a tempered likelihood p(y | f)^(1/T) is not a probability of the "
            "labels, so it does not compare; set la.temperature = 1.0 to compare them"
        )
    options = {
        name: {"structure": la.structure.name, "curvature": la.curvature,
               "weights": la.selection.kind, "structure_options": la.structure.options() or None}
        for name, la in laplaces.items()
    }  # fmt: skip
    _check_comparable(kinds, options, "laplaces")
    _check_same_targets(laplaces)
    if not isinstance(paths, bool):
        raise ValueError(f"paths must be True or False, got {paths!r}")
    if paths and x is None and y is None:
        missing = [n for n, la in laplaces.items() if la.posterior.data is None]
        if missing:
            warnings.warn(
                f"laplaces {missing} have no training data (loaded from a file): every "
                "Laplace's modes are counted without the path test (log_symmetry), a count "
                "that can only be larger; pass x, y (the training data) to compare_laplaces "
                "to count them with it",
                stacklevel=2,
            )
            paths = False
    table = ComparisonTable(
        _row(name, kinds[name], la, None, log_symmetry(la, *data, paths=paths), data)
        for name, la in laplaces.items()
        for data in [(x, y) if la.posterior.data is None else (None, None)]
    )  # fmt: skip
    _warn_far_from_mode(table)
    best = table.rows[0]["name"]
    parameters = {"n_data": int(laplaces[best].n_data), "options": options[best], "paths": paths}
    return Comparison(best, laplaces[best], dict(laplaces), table, parameters)


# How close two fingerprints of the same targets are, relative to the targets' RMS: the
# targets as a float32 and as a float64 model takes them.
_TARGETS_RTOL = 1e-6


def _check_same_targets(laplaces: Mapping) -> None:
    """ValueError unless every Laplace was fitted on as many samples and on targets with the
    same mean and mean square (where both are known), naming those that differ."""
    sizes = {}
    for name, la in laplaces.items():
        sizes.setdefault(int(la.n_data), []).append(name)
    if len(sizes) > 1:
        listed = "; ".join(f"N = {n}: {names}" for n, names in sizes.items())
        raise ValueError(
            f"laplaces were fitted on different numbers of samples ({listed}): each evidence "
            "is a density of its own targets, so they compare only on the same (x, y)"
        )
    known = {n: la.target_moments for n, la in laplaces.items() if la.target_moments is not None}
    if not known:
        return
    first, reference = next(iter(known.items()))
    for name, moments in known.items():
        if not _same_targets(moments, reference):
            raise ValueError(
                f"laplaces[{name!r}] and laplaces[{first!r}] were fitted on different targets "
                f"(the targets' column means and mean square {_short(moments)} against "
                f"{_short(reference)}): each evidence is a density of its own targets, so "
                "evidences of rescaled, shifted or other targets (other labels) do not compare; "
                "fit every Laplace on the same (x, y)"
            )


def _warn_far_from_mode(table: ComparisonTable) -> None:
    """A RuntimeWarning naming the candidates whose :func:`mode_gap` exceeds :data:`MODE_GAP`."""
    far = {r["name"]: round(r["mode_gap"], 1) for r in table
           if r["mode_gap"] is not None and r["mode_gap"] > MODE_GAP}  # fmt: skip
    if far:
        warnings.warn(
            f"training stopped short of the mode for {far} (mode_gap, in nats): the Laplace "
            "evidence assumes the most probable weights, and each of these evidences is short "
            "by roughly its gap, more than the differences that can decide a comparison; "
            "train longer, or end with a smaller learning rate",
            RuntimeWarning,
            stacklevel=3,
        )


def _same_targets(moments, reference) -> bool:
    """Whether two fingerprints (column means, mean square) are of the same targets: the means
    within :data:`_TARGETS_RTOL` of the RMS, the mean square within it relative."""
    square = max(float(reference[-1]), 1e-300)  # the mean square: the targets' squared scale
    return bool(
        len(moments) == len(reference)
        and np.allclose(  # means: in units of the RMS
            moments[:-1], reference[:-1], rtol=0.0, atol=_TARGETS_RTOL * np.sqrt(square)
        )
        and abs(moments[-1] - reference[-1]) <= _TARGETS_RTOL * square
    )


def _short(values) -> str:
    return np.array2string(np.asarray(values), precision=6, threshold=6, edgeitems=2)


def _larger(new: float, old: float) -> bool:
    """Whether evidence ``new`` beats ``old``; a NaN beats nothing and anything beats a NaN."""
    return bool(new > old or (np.isnan(old) and not np.isnan(new)))


def _row(name: str, likelihood: str, la, seconds: float | None,
         symmetry: float | None = None, data=(None, None)) -> dict:  # fmt: skip
    """A candidate's row of :data:`COLUMNS` from its fitted Laplace (``symmetry``: its
    :func:`log_symmetry`, computed here by default; the :func:`mode_gap` on ``data``, x, y for
    a Laplace without its own: None without any, or where it cannot be measured, with a
    warning saying why)."""
    parts = la.log_evidence_parts()
    if symmetry is None:
        symmetry = log_symmetry(la)
    gap = None
    if la.posterior.data is not None or data[0] is not None:
        try:
            gap = mode_gap(la, *data)
        except ModeGapUnavailable as err:
            warnings.warn(f"{name!r}: mode_gap not measured: {err}", stacklevel=3)
    return {
        "name": name,
        "likelihood": likelihood,
        "log_evidence": float(la.log_evidence()) + symmetry,
        "data_fit": parts["data_fit"],
        "occam": parts["occam"],
        "symmetry": symmetry,
        "mode_gap": gap,
        "gamma": float(la.gamma),
        "n_params": int(la.n_params),
        "alpha": la.alpha,
        "beta": la.beta if la.likelihood.has_beta else None,
        "seconds": seconds,
    }
