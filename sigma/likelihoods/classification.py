"""Softmax cross-entropy on logits, one softmax per head: E = −Σ_n Σ_k t_nk log softmax(f_n)_k,
Λ = diag(p) − p pᵀ. No β (it is 1, or 1/T for a tempered likelihood).

Λ has rank C − 1 for a head of C classes (Λ 1 = 0: the softmax ignores a common shift of the
logits), so its root L (C, C − 1) has C − 1 columns, and the GGN's pseudo-outputs — one
backward pass each in a layer-wise fit — are C − 1 per head, not C. With a reference class r
(each sample's most probable: p_r ≥ 1/C, so no step cancels in float32), g = f_{−r} − f_r
(the other classes' logits minus the reference's), p' = p_{−r} and q = √p' (|q|² = 1 − p_r):

    Λ = Eᵀ Λ' E,  E = [I, −1] (classes reordered),  Λ' = diag(p') − p' p'ᵀ = D^½ (I − q qᵀ) D^½,
    I − q qᵀ = (I − c q qᵀ)²  with  c = 1 / (1 + √p_r),

so L = Eᵀ L' with L' = D^½ (I − c q qᵀ): the pseudo-outputs u = Lᵀ f = √p' ⊙ (g − c p'ᵀ g)
and L u = v at the other classes, −Σ v at r, with v = √p' ⊙ u − c p' (√p'ᵀ u). Any root of
Λ gives the same GGN, so the reference may differ between samples. Exact: L Lᵀ = Λ (tested).

Heads: a model with one output of shape (C,) has one head of C classes; an output per position,
(T, C) or (H, W, C), has one head per position (token classification, segmentation); a model
with several outputs one head (or one per position) per output. A head of one logit is binary
(Bernoulli with a sigmoid link, the softmax over (0, f)): E = Σ softplus(f) − t f, labels 0/1,
Λ = p(1 − p). Λ is block-diagonal over heads and applied head by head, never formed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import as_array
from sigma.likelihoods.base import Groups, Likelihood, check_rows_cols

SCORES = ("nll", "brier", "ece")


def _expander(t):
    """Reshapes a (B, H, C) tensor to broadcast against t (B, H, C, ...)."""
    extra = t.shape.rank - 3
    if extra == 0:
        return lambda v: v
    return lambda v: tf.reshape(v, tf.concat([tf.shape(v), [1] * extra], 0))


def _reference(logits):
    """Each head's reference class, the most probable (so p_r ≥ 1/C and nothing cancels in
    float32): p' (B, H, C − 1), the other classes' probabilities, their indices (B, H, C − 1),
    the reference's index r (B, H, 1) and c (B, H, 1) = 1 / (1 + √p_r), from logits (B, H, C)."""
    p = tf.nn.softmax(logits, axis=-1)
    size = logits.shape[-1]
    r = tf.argmax(p, axis=-1, output_type=tf.int32)[..., None]
    k = tf.range(size - 1, dtype=tf.int32)
    others = k + tf.cast(k >= r, tf.int32)
    p_ref = tf.gather(p, r, axis=2, batch_dims=2)
    return tf.gather(p, others, axis=2, batch_dims=2), others, r, 1.0 / (1.0 + tf.sqrt(p_ref))


class Classification(Likelihood):
    """``heads``: (start, stop) of each softmax head in the flattened outputs (None: one head
    over all K). :meth:`bind` sets them from a model's outputs (one per output and position)."""

    name = "classification"
    noise = False
    tempered = True

    def __init__(self, heads=None):
        # one head of several classes is "no heads"; a binary head (one logit) stays explicit
        keep = heads is not None and (len(heads) > 1 or any(e - s == 1 for s, e in heads))
        self.heads = tuple(tuple(map(int, h)) for h in heads) if keep else None

    @property
    def key(self) -> tuple:
        return (self.name, self.heads)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "heads": None if self.heads is None else [list(h) for h in self.heads],
        }

    def bind(self, layout) -> Classification:
        if layout is None or self.heads is not None:
            return self
        heads = []
        for (start, _), shape in zip(layout.heads, layout.shapes, strict=True):
            size, count = int(shape[-1]), int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            heads += [(start + i * size, start + (i + 1) * size) for i in range(count)]
        return Classification(heads)

    def groups(self, k: int) -> Groups:
        return Groups.one("tempered", k, "logits")

    # -- heads, as runs of equal size -----------------------------------------------------------
    def runs(self, k):
        """(start, count, size) runs of consecutive heads of one size (static)."""
        heads = self.heads if self.heads is not None else ((0, k),)
        runs = []
        for s, e in heads:
            if runs and runs[-1][0] + runs[-1][1] * runs[-1][2] == s and runs[-1][2] == e - s:
                runs[-1][1] += 1
            else:
                runs.append([s, 1, e - s])
        return [tuple(r) for r in runs]

    @staticmethod
    def width(size: int) -> int:
        """Pseudo-outputs of a head of ``size`` logits: C − 1 (Λ's rank), 1 for a binary head."""
        return max(size - 1, 1)

    def pseudo_groups(self, k: int) -> np.ndarray:
        return np.zeros(sum(c * self.width(s) for _, c, s in self.runs(k)), dtype=np.int64)

    def _apply(self, f, j, fn, *, reduced_in: bool = False):
        """fn(run logits (B, H, C), run values (B, H, C or C − 1, ...)) over every run,
        concatenated along axis 1. ``reduced_in``: j holds pseudo-outputs (C − 1 per head)."""
        k = f.shape[-1]
        out, at = [], 0
        for start, count, size in self.runs(k):
            stop = start + count * size
            fr = tf.reshape(f[:, start:stop], (-1, count, size))
            w = self.width(size) if reduced_in else size
            jr = j[:, at : at + count * w]
            at += count * w
            jr = tf.reshape(jr, tf.concat([[tf.shape(jr)[0], count, w], tf.shape(jr)[2:]], 0))
            r = fn(fr, jr, size)
            out.append(
                tf.reshape(
                    r, tf.concat([[tf.shape(jr)[0], count * r.shape[2]], tf.shape(jr)[3:]], 0)
                )
            )
        return out[0] if len(out) == 1 else tf.concat(out, axis=1)

    def pseudo(self, f, j):
        """Lᵀ j per head, (B, K'[, ...]) with C − 1 rows per head of C classes (see the module
        docstring): √p' ⊙ (g − c p'ᵀ g), g = j_{−r} − j_r; binary: √(p(1 − p)) j."""

        def fn(fr, jr, size):
            fr = tf.cast(fr, jr.dtype)
            expand = _expander(jr)
            if size == 1:
                return expand(tf.sqrt(tf.sigmoid(fr) * tf.sigmoid(-fr))) * jr
            p, others, r, c = _reference(fr)
            g = tf.gather(jr, others, axis=2, batch_dims=2) - tf.gather(jr, r, axis=2, batch_dims=2)
            pg = tf.reduce_sum(expand(p) * g, axis=2, keepdims=True)
            return expand(tf.sqrt(p)) * (g - expand(c) * pg)

        return self._static(j, self._apply(f, j, fn), self.pseudo_groups(f.shape[-1]).size)

    def root(self, f, u):
        """L u per head, (B, K[, ...]) from u (B, K'[, ...]): v at the classes other than the
        reference r, −Σ v at r, v = √p' ⊙ u − c p' (√p'ᵀ u); binary: √(p(1 − p)) u."""

        def fn(fr, ur, size):
            fr = tf.cast(fr, ur.dtype)
            expand = _expander(ur)
            if size == 1:
                return expand(tf.sqrt(tf.sigmoid(fr) * tf.sigmoid(-fr))) * ur
            p, others, r, c = _reference(fr)
            sp = tf.sqrt(p)
            spu = tf.reduce_sum(expand(sp) * ur, axis=2, keepdims=True)
            v = expand(sp) * ur - expand(c * p) * spu  # (B, H, C − 1, ...)
            # v at the other classes, −Σ v at the reference: Eᵀ v with E = [I, −1] reordered
            place = tf.one_hot(others, size, dtype=v.dtype)  # (B, H, C − 1, C)
            ref = tf.one_hot(r[..., 0], size, dtype=v.dtype)  # (B, H, C)
            return tf.einsum("bhkc,bhk...->bhc...", place, v) - tf.einsum(
                "bhc,bh...->bhc...", ref, tf.reduce_sum(v, axis=2)
            )

        return self._static(u, self._apply(f, u, fn, reduced_in=True), f.shape[-1])

    @staticmethod
    def _static(like, out, width):
        out.set_shape([like.shape[0], width, *like.shape[2:]])
        return out

    def hessian_sqrt(self, f):
        """L_n, (B, K, K'), dense (block-diagonal over heads): for references and tests."""
        k = f.shape[-1]
        eye = tf.eye(k, batch_shape=tf.shape(f)[:1], dtype=f.dtype)  # (B, K, K)
        return tf.linalg.matrix_transpose(self.pseudo(f, eye))

    # -- the data term ---------------------------------------------------------------------------
    def data_error(self, f, t):
        """Cross-entropy −Σ t log softmax(f) on logits f, per head; a one-logit head is binary,
        Σ softplus(f) − t f (tensor, summed)."""
        total = 0.0
        for start, count, size in self.runs(f.shape[-1]):
            stop = start + count * size
            fr = tf.reshape(f[:, start:stop], (-1, count, size))
            tr = tf.reshape(t[:, start:stop], (-1, count, size))
            if size == 1:
                total += tf.reduce_sum(tf.nn.softplus(fr) - tr * fr)
            else:
                total += -tf.reduce_sum(tr * tf.nn.log_softmax(fr, axis=-1))
        return total

    # -- behaviour --------------------------------------------------------------------------------
    # a model that outputs probabilities does so at every input: a few thousand rows tell,
    # without a forward pass over all the data before the summary's (0.5 s of a transformer
    # classifier's 8.6 s diag fit at N = 10,000)
    check_rows = 4096

    def check_outputs(self, model, f, layout) -> None:
        """Logits, not probabilities (:func:`sigma.classification.check_logits`)."""
        from sigma.classification import check_logits

        check_logits(model, f, self.heads)

    def predictive_form(self, *, method: str = "probit", **_) -> str:

        return "variance" if method == "probit" else "covariance"

    def predictive(self, mean, second, *, noise_var=None, layout=None, method="probit",
                   n_samples=1000, seed=0, **_):  # fmt: skip
        """E[softmax(f)] per head by ``method`` (:mod:`sigma.classification`), (N, K)."""
        from sigma.classification import probabilities

        probs = probabilities(
            mean, second, method=method, n_samples=n_samples, seed=seed, heads=self.heads
        )
        return probs if layout is None else layout.unflatten(probs)

    def probabilities(self, prediction):
        return prediction

    metrics = SCORES

    def validation_values(self, n: int, k: int) -> int:
        return n

    def score(self, prediction, y, metric: str) -> float:
        from sigma import metrics

        fn = {"nll": metrics.nll, "brier": metrics.brier, "ece": metrics.expected_calibration_error}
        heads = self.heads or [(0, y.shape[1])]
        return sum(fn[metric](prediction[:, s:e], y[:, s:e]) for s, e in heads)

    conformal = "sets"

    def serve(self, mean, var, noise):
        z = mean / tf.sqrt(1.0 + np.pi / 8.0 * var)  # the probit link
        heads = self.heads or [(0, mean.shape[-1])]
        return tf.concat(
            [
                tf.sigmoid(z[:, s:e]) if e - s == 1 else tf.nn.softmax(z[:, s:e], axis=-1)
                for s, e in heads
            ],
            axis=-1,
        )

    # -- targets ---------------------------------------------------------------------------------
    def targets(self, y, n: int, k: int, name: str = "y", x_name: str = "x", layout=None):
        """One-hot targets (n, K): per head, integer labels (one per sample and position: (N,),
        (N, T), ...) or one-hot rows; per output for a model with several (a list, or a dict by
        output name), or one (N, K) array of one-hot rows for all heads side by side."""
        shapes = layout.shapes if layout is not None else ((k,),)
        parts = [y] if layout is None else layout.split(y, name)
        if len(parts) == 1 and len(shapes) > 1:  # one (n, K) array, one-hot per head
            if np.ndim(parts[0]) != 2:
                raise ValueError(
                    f"{name} for a model with {len(shapes)} classification outputs must be one "
                    f"(N, {k}) array of targets per head side by side, or one array of labels "
                    f"per output (a list, or a dict by output name); got shape "
                    f"{np.shape(parts[0])}"
                )
            arr = as_array(parts[0], name, ndim=2)
            check_rows_cols(arr, n, k, name, x_name)
            return np.concatenate(
                [
                    _one_output(arr[:, s:e], n, (e - s,), f"{name}[:, {s}:{e}]", x_name)
                    for s, e in layout.heads
                ],
                axis=1,
            )
        labels = layout.names if layout is not None else ["output"]
        if len(parts) == 1:
            return _one_output(parts[0], n, shapes[0], name, x_name)
        return np.concatenate(
            [
                _one_output(p, n, shape, f"{name}[{label!r}]", x_name)
                for p, shape, label in zip(parts, shapes, labels, strict=True)
            ],
            axis=1,
        )


def _one_output(y, n, shape, name, x_name):
    """(n, prod(shape)) one-hot targets of one output of per-sample shape (..., C)."""
    arr = as_array(y, name)
    classes = int(shape[-1])
    positions = tuple(shape[:-1])
    if arr.ndim == 0 or arr.shape[0] != n:
        got = arr.shape[0] if arr.ndim else "no"
        raise ValueError(f"{name} has {got} rows but {x_name} has {n}: they must match")
    if classes == 1:  # a binary head per position: labels 0/1
        arr = arr.reshape(n, -1)
        if arr.shape[1] != int(np.prod(shape)):
            raise ValueError(
                f"{name} must hold one label 0 or 1 per sample"
                + (
                    f" and position, shape ({n}, {', '.join(map(str, positions))})"
                    if positions
                    else ""
                )
                + f" for a binary classifier (one logit), got shape {np.shape(y)}"
            )
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(
                f"{name} must hold labels 0 or 1 for a binary classifier (one logit), got "
                f"values in [{arr.min()}, {arr.max()}]"
            )
        return arr.astype(np.float64)
    label_shape = (n, *positions)
    if arr.shape == (*label_shape, 1):  # labels with a trailing axis, as Keras' sparse loss takes
        arr = arr.reshape(label_shape)
    if arr.shape == label_shape or (not positions and arr.ndim == 1):
        if arr.size and (not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= classes):
            what = "1-D array" if not positions else f"array of shape {label_shape}"
            raise ValueError(
                f"{name} as a {what} must hold integer class labels in [0, {classes}), got "
                f"values in [{arr.min()}, {arr.max()}]"
            )
        return np.eye(classes)[arr.astype(int)].reshape(n, -1)
    if arr.shape == (n, *shape) or (arr.ndim == 2 and arr.shape[1] == int(np.prod(shape))):
        onehot = arr.reshape(n, -1, classes)
        if not (np.all((onehot == 0) | (onehot == 1)) and np.all(onehot.sum(axis=-1) == 1)):
            raise ValueError(
                f"{name} must be one-hot (each row a single 1, zeros elsewhere) or integer "
                "labels for likelihood='classification'"
            )
        return onehot.reshape(n, -1).astype(np.float64)
    if not positions and arr.ndim == 2:
        check_rows_cols(arr, n, classes, name, x_name)
    want = (
        f"labels ({', '.join(map(str, label_shape))}) or one-hot rows "
        f"({n}, {', '.join(map(str, shape))})"
    )
    raise ValueError(f"{name} has shape {arr.shape}; expected {want}")
