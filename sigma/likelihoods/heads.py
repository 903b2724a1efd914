"""A likelihood per output head: ``likelihood={"price": "regression", "kind":
"classification"}`` (by output name) or a list in output order.

The data term is the sum of the heads' data terms, Λ is block-diagonal over the heads (each
head's own), and each head keeps its own precision groups: a regression head its own β, a
classification head the fixed 1/T. So A = D_α + Σ_h β_h C_h with C_h the curvature of head h's
outputs, and the evidence sums the heads' data terms (each regression head's β estimated from
its own residuals, never pooled with the logits of another head).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma.likelihoods.base import Groups, Likelihood


class PerHead(Likelihood):
    """``spec``: a dict {output name: likelihood} or a list in output order (names or
    likelihood objects). Bound to a model's :class:`~sigma.outputs.OutputLayout` it holds one
    likelihood per output, each bound to that output."""

    name = "per_head"

    def __init__(self, spec, layout=None, parts=None):
        from sigma import likelihoods

        if not isinstance(spec, dict | list | tuple) or not spec:
            raise ValueError(
                "a likelihood per head is a dict {output name: likelihood} or a list with one "
                f"likelihood per output, got {spec!r}"
            )
        self.spec = spec
        self.layout = layout
        if parts is None:
            items = spec.items() if isinstance(spec, dict) else enumerate(spec)
            parts = {}
            for key, lik in items:
                if isinstance(lik, PerHead):
                    raise ValueError(f"likelihood for head {key!r} cannot itself be per head")
                try:
                    parts[key] = likelihoods.get(lik)
                except ValueError as err:
                    raise ValueError(f"likelihood for head {key!r}: {err}") from None
                if parts[key].name == "heteroscedastic":
                    raise ValueError(
                        f"likelihood for head {key!r}: a heteroscedastic head is not supported in "
                        "a likelihood per head; use it as the model's one likelihood"
                    )
        self.parts = parts
        self.noise = any(p.noise for p in parts.values())
        self.tempered = any(p.tempered for p in parts.values())

    # -- binding ---------------------------------------------------------------------------------
    def bind(self, layout) -> PerHead:
        if layout is None or layout == self.layout:
            return self
        if self.layout is not None:  # bound to other outputs: start again from the spec
            return PerHead(self.spec).bind(layout)
        names = list(layout.names)
        if isinstance(self.spec, dict):
            missing = [n for n in names if n not in self.spec]
            unknown = [k for k in self.spec if k not in names]
            if missing or unknown:
                raise ValueError(
                    f"likelihood per head must name every output of the model {names}: "
                    + (f"missing {missing}" if missing else f"unknown {unknown}")
                )
            ordered = [self.parts[n] for n in names]
        else:
            if len(self.spec) != len(names):
                raise ValueError(
                    f"likelihood as a list must hold one likelihood per model output, "
                    f"{len(names)} ({names}), got {len(self.spec)}"
                )
            ordered = [self.parts[i] for i in range(len(names))]
        from sigma.outputs import OutputLayout

        bound = {
            name: lik.bind(OutputLayout("single", (name,), (size,), (shape,)))
            for name, lik, size, shape in zip(
                names, ordered, layout.sizes, layout.shapes, strict=True
            )
        }
        return PerHead(self.spec, layout, bound)

    @property
    def family(self) -> str:
        """The heads' family when they share one, else each head's by name."""
        heads = {name: part.family for name, part, *_ in self.bound()}
        if len(set(heads.values())) == 1:
            return next(iter(heads.values()))
        return "heads " + ", ".join(f"{name}: {family}" for name, family in heads.items())

    def bound(self):
        if self.layout is None:
            raise ValueError("a likelihood per head must be bound to the model's outputs first")
        return [
            (name, self.parts[name], s, e)
            for name, (s, e) in zip(self.layout.names, self.layout.heads, strict=True)
        ]

    @property
    def key(self) -> tuple:
        return (self.name, tuple(p.key for _, p, _, _ in self.bound()))

    @property
    def heads(self):
        return None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "heads": {name: lik.describe() for name, lik, _, _ in self.bound()},
        }

    def head_names(self) -> tuple[str, ...]:
        return tuple(self.layout.names)

    def groups(self, k: int) -> Groups:
        names, kinds, outputs = [], [], []
        for name, lik, s, e in self.bound():
            g = lik.groups(e - s)
            names += [name if g.n_groups == 1 else f"{name}/{n}" for n in g.names]
            kinds += list(g.kinds)
            outputs.append(g.outputs + (len(names) - g.n_groups))
        return Groups(tuple(names), tuple(kinds), np.concatenate(outputs))

    # -- the data term and Λ -------------------------------------------------------------------------
    def data_error(self, f, t):
        return tf.add_n([lik.data_error(f[:, s:e], t[:, s:e]) for _, lik, s, e in self.bound()])

    def group_errors(self, f, t, groups: Groups):
        parts = []
        for _, lik, s, e in self.bound():
            parts.append(lik.group_errors(f[:, s:e], t[:, s:e], lik.groups(e - s)))
        return tf.concat(parts, axis=0)

    def pseudo_groups(self, k: int) -> np.ndarray:
        parts, offset = [], 0
        for _, lik, s, e in self.bound():
            parts.append(lik.pseudo_groups(e - s) + offset)
            offset += lik.groups(e - s).n_groups
        return np.concatenate(parts)

    def pseudo(self, f, j):
        """Lᵀ j head by head: each head's pseudo-outputs (a softmax head of C classes has
        C − 1), concatenated."""
        out = tf.concat([lik.pseudo(f[:, s:e], j[:, s:e]) for _, lik, s, e in self.bound()], axis=1)
        out.set_shape([j.shape[0], self.pseudo_groups(f.shape[-1]).size, *j.shape[2:]])
        return out

    def root(self, f, u):
        """L u head by head, u laid out as :meth:`pseudo`'s result."""
        parts, at = [], 0
        for _, lik, s, e in self.bound():
            width = lik.pseudo_groups(e - s).size
            parts.append(lik.root(f[:, s:e], u[:, at : at + width]))
            at += width
        out = tf.concat(parts, axis=1)
        out.set_shape([u.shape[0], f.shape[-1], *u.shape[2:]])
        return out

    def hessian_sqrt(self, f):
        k = f.shape[-1]
        eye = tf.eye(k, batch_shape=tf.shape(f)[:1], dtype=f.dtype)
        return tf.linalg.matrix_transpose(self.pseudo(f, eye))

    # -- behaviour ------------------------------------------------------------------------------------
    def check_outputs(self, model, f, layout) -> None:
        for _, lik, s, e in self.bound():
            if lik.conformal == "sets":  # a classifier head: its logits' rows (its own layer
                from sigma.classification import check_logits  # need not be the model's last)

                check_logits(None, f[:, s:e], lik.heads)

    def predictive_form(self, **options) -> str:
        forms = {lik.predictive_form(**options) for _, lik, _, _ in self.bound()}
        return "covariance" if "covariance" in forms else "variance"

    def predictive(self, mean, second, *, noise_var, layout=None, **options):
        """{output name: that head's prediction}, each in its output's shape."""
        out = {}
        for head, lik, s, e in self.bound():
            part = second[:, s:e, s:e] if second.ndim == 3 else second[:, s:e]
            if part.ndim == 3 and lik.predictive_form(**options) == "variance":
                part = np.einsum("nkk->nk", part)
            sub = None if layout is None else lik_layout(layout, head)
            out[head] = lik.predictive(
                mean[:, s:e], part, noise_var=noise_var[s:e], layout=sub, **options
            )
        return out

    def probabilities(self, prediction):
        heads = [head for head, lik, _, _ in self.bound() if lik.conformal == "sets"]
        if not heads:
            super().probabilities(prediction)  # no classification head: refused
        return None if prediction is None else {head: prediction[head] for head in heads}

    def validation_values(self, n: int, k: int) -> int:
        return sum(lik.validation_values(n, e - s) for _, lik, s, e in self.bound())

    def score(self, prediction, y, metric: str) -> float:
        """The sum of the heads' metrics (NLL: the joint held-out NLL)."""
        return sum(
            lik.score(prediction[head], y[:, s:e], metric) for head, lik, s, e in self.bound()
        )

    def check_servable(self) -> None:
        raise ValueError(
            "to_keras serves one likelihood for all outputs; this posterior has a likelihood "
            "per head: use Laplace.predict"
        )

    def penalty_scale(self, n: int, k: int, beta: float) -> float:
        raise ValueError(
            "sigma.EvidenceCallback trains one likelihood: with a likelihood per head, fit "
            "the Laplace after training (sigma.Laplace(..., likelihood={...}))"
        )

    # -- targets ------------------------------------------------------------------------------------
    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        layout = layout or self.layout
        if not isinstance(y, dict | list | tuple):
            raise ValueError(
                f"{name} for a likelihood per head must give each output its targets: a dict "
                f"by output name {list(layout.names)} or a list in that order, got a "
                f"{type(y).__name__}"
            )
        parts = layout.split(y, name)
        if len(parts) != len(layout.names):
            raise ValueError(
                f"{name} must hold the targets of each of the {len(layout.names)} outputs "
                f"{list(layout.names)}, got {len(parts)}"
            )
        out = []
        for (label, lik, s, e), part in zip(self.bound(), parts, strict=True):
            sub = lik_layout(layout, label)
            out.append(lik.targets(part, n, e - s, f"{name}[{label!r}]", x_name, layout=sub))
        return np.concatenate(out, axis=1)


def lik_layout(layout, name):
    from sigma.outputs import OutputLayout

    i = layout.names.index(name)
    return OutputLayout("single", (name,), (layout.sizes[i],), (layout.shapes[i],))


_REGRESSION = ("mse", "mean_squared_error", "mae", "mean_absolute_error", "huber", "log_cosh",
               "mean_squared_logarithmic_error", "gaussian_nll")  # fmt: skip
_CLASSIFICATION = ("crossentropy", "hinge", "focal")


def _loss_kind(loss) -> str | None:
    """'regression', 'classification' or None (unknown) for a compiled loss."""
    if loss is None:
        return None
    name = (
        loss
        if isinstance(loss, str)
        else getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)
    )
    name = str(name).lower()
    if any(c in name.replace("_", "") for c in _CLASSIFICATION):
        return "classification"
    if any(r.replace("_", "") in name.replace("_", "") for r in _REGRESSION):
        return "regression"
    return None


def _output_squashes(model) -> list:
    """Per model output, 'softmax'/'sigmoid' when its last layer ends in one, else None (None
    for every output when the model's graph is not known)."""
    from sigma import keras_compat
    from sigma.classification import final_squash

    try:
        outputs = list(model.outputs)
    except (AttributeError, ValueError):
        return []
    found = []
    for t in outputs:
        history = keras_compat.history(t)
        found.append(None if history is None else final_squash(history.operation))
    return found


def check_mixed_heads(model, likelihood, layout) -> None:
    """Refuse one likelihood for a model whose outputs are of different kinds — a regression
    output and a classification output (by their compiled losses, or a softmax/sigmoid ending
    some outputs but not others): one β would be pooled over the regression values and the
    logits. The fix is a likelihood per head."""
    if isinstance(likelihood, PerHead) or layout is None or len(layout.sizes) < 2:
        return
    kinds = []
    loss = getattr(model, "loss", None)
    if isinstance(loss, dict):
        kinds = [_loss_kind(loss.get(name)) for name in layout.names]
    elif isinstance(loss, list | tuple) and len(loss) == len(layout.sizes):
        kinds = [_loss_kind(x) for x in loss]
    known = [k for k in kinds if k is not None]
    mixed = len(set(known)) > 1
    if not mixed:
        squash = _output_squashes(model)
        mixed = len(squash) == len(layout.sizes) and any(squash) and not all(squash)
        if mixed:
            kinds = ["classification" if s else "regression" for s in squash]
    if mixed:
        spec = {n: k or "?" for n, k in zip(layout.names, kinds, strict=True)}
        raise ValueError(
            f"the model's outputs are of different kinds ({spec}), but likelihood="
            f"{likelihood.name!r} gives them one: a single beta would be pooled over regression "
            f"values and logits. Give each output its likelihood: likelihood={spec} (a dict by "
            "output name, or a list in output order)"
        )
