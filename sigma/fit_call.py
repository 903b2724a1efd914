"""What the running ``model.fit`` was called with, for :class:`~sigma.EvidenceCallback`.

Keras tells its callbacks the number of epochs and steps, not the data: neither the sample
weights (or class weights) nor the validation split. The callback needs both — the evidence's
likelihood is unweighted, and the held-out part of a ``validation_split`` must not enter the
curvature or N — so it reads them from the arguments of the ``fit`` call it runs in (after
Keras' own split: ``x``, ``y`` and ``sample_weight`` are then the training part):

* :func:`sigma.keras_compat.fit_arguments` — those arguments, or ``{}`` when the hooks are
  called outside ``fit`` (Keras does not expose them: read from the running call's frame);
* :func:`refuse_sample_weights` — a ValueError naming ``sample_weight``/``class_weight``;
* :func:`training_part` — the callback's own (x, y) cut to the samples ``fit`` trains on when
  they are ``fit``'s data before the split (Keras holds out the last ``validation_split``).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import n_samples, take


def _weighted_dataset(x) -> bool:
    """A dataset of (x, y, sample_weight) elements."""
    spec = getattr(x, "element_spec", None)
    return isinstance(x, tf.data.Dataset) and isinstance(spec, tuple) and len(spec) == 3


def refuse_sample_weights(args: dict) -> None:
    """ValueError when ``fit`` was given sample weights, class weights or a dataset of
    (x, y, sample_weight): the evidence's likelihood and curvature are unweighted."""
    if args.get("sample_weight") is not None:
        given = "sample_weight"
    elif args.get("class_weight"):
        given = "class_weight"
    elif _weighted_dataset(args.get("x")):
        given = "a dataset of (x, y, sample_weight)"
    else:
        return
    raise ValueError(
        f"model.fit was given {given}, but EvidenceCallback's evidence (its E_D, its curvature "
        "and N) is that of the unweighted likelihood: alpha and beta would belong to another "
        "objective than the one trained. Fit without sample_weight/class_weight; for whole-"
        "number weights (counts), repeat the samples instead (np.repeat(x, w, axis=0), the "
        "same for y and in the callback's data), which is the same likelihood"
    )


def _same(own, fit) -> bool:
    """The callback's arrays equal ``fit``'s, compared in ``fit``'s dtype (Keras converts
    float arrays to floatx before it splits them)."""
    parts_own, parts_fit = tf.nest.flatten(own), tf.nest.flatten(fit)
    if len(parts_own) != len(parts_fit):
        return False
    for p, q in zip(parts_own, parts_fit, strict=True):
        p, q = np.asarray(p), np.asarray(q)
        if p.shape != q.shape or p.dtype.kind not in "biuf" or q.dtype.kind not in "biuf":
            return False
        if not np.array_equal(p.astype(q.dtype), q):
            return False
    return True


def training_part(x, y, args: dict) -> tuple[object, object, int | None]:
    """(x, y, n_held_out): the callback's data without the samples ``fit`` holds out by its
    ``validation_split``. Keras trains on the first ⌊N (1 − split)⌋ samples; when the
    callback's (x, y) begin with exactly ``fit``'s training part and go on (they are ``fit``'s
    data before the split), they are cut there and ``n_held_out`` says how many were left out.
    Otherwise (no split, or other data than ``fit``'s) they are returned as given, with None."""
    split = args.get("validation_split") or 0.0
    fit_x, fit_y = args.get("x"), args.get("y")
    if not split or y is None or isinstance(x, tf.data.Dataset) or fit_x is None or fit_y is None:
        return x, y, None
    try:
        n_fit, n_own = n_samples(fit_x), n_samples(x)
    except (TypeError, ValueError, IndexError):
        return x, y, None
    if n_own <= n_fit:
        return x, y, None
    head = slice(0, n_fit)
    if _same(take(x, head), fit_x) and _same(take(y, head), fit_y):
        return take(x, head), take(y, head), n_own - n_fit
    return x, y, None
