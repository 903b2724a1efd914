"""Per-layer curvature pieces: layer inputs and back-propagated output sensitivities.

The structured curvatures (:mod:`sigma.diag`, :mod:`sigma.kfac`) never form the (N, K, P)
Jacobian. For a layer computing z = a W + b (Dense) the per-sample gradient of a (pseudo-)output
u_k with respect to the layer's weights is an outer product,

    ∂u_k(x_n)/∂[W; b] = Σ_t ã_nt ⊗ s_nkt,   ã = [a, 1] (bias augmented),  s_nk = ∂u_k(x_n)/∂z_n,

summed over the positions t at which the weights are applied (t = 1 for a Dense layer on
vectors; the spatial positions of a convolution, whose input a is then the patch under the
kernel; every call of a layer used more than once). One forward pass records ã and z for every
such layer and one backward pass per output (K in all, each over the whole batch) gives s; the
heavy contractions then run over (B, T, D) and (K, B, T, C) tensors. The pseudo-outputs are u = f for the predictive
and u_n = L_nᵀ f_n for the generalised Gauss–Newton matrix (Λ_n = L_n L_nᵀ, see
:mod:`sigma.likelihoods`), so the GGN is Σ_n Σ_k g_nk g_nkᵀ with g_nk = ∂u_nk/∂w.

Which layers take which path
----------------------------
===========================================  =========  =========================================
Keras layer                                  path       weights per block
===========================================  =========  =========================================
``Dense`` (any input rank)                   fast       kernel (+ bias), D = d_in (+1), C = units
``Conv2D`` (channels_last, groups=1)         fast       patches via ``tf.image.extract_patches``
``Conv1D`` (channels_last, groups=1, incl.   fast       as Conv2D on a height-1 image
causal padding)
``Embedding``, ``BatchNormalization``,       generic    all trainable weights of the layer, one
``LayerNormalization``, ``Conv3D``,                     block; per-sample Jacobian by autodiff
``DepthwiseConv2D``, ``Conv2DTranspose``,
grouped convolutions, any custom layer,
LoRA / quantised layers, tied weights
Dropout, pooling, Flatten, Reshape, ...      —          no weights (inference mode: Dropout off)
===========================================  =========  =========================================

The fast path is found by patching, for the duration of one traced forward pass, the layer
instance's ``call`` (to record its input) and ``activation`` (to record and watch the
pre-activation z); this works for Sequential, Functional and subclassed models alike. A fit
first checks, on a few samples, that Σ_n Σ_k of the outer products equals the plain gradient of
the layer's weights; a layer whose weights are also used outside its ``call`` (tied weights)
fails the check and falls back to the generic path with a warning.

The generic path differentiates each sample's pseudo-outputs with respect to the layer's own
weights (``stateless_call``; ``tf.vectorized_map`` over the samples of K backward passes, or a
``tf.map_fn`` where pfor cannot convert an op, e.g. grouped convolutions): exact, but it costs
K backward passes per sample and B·K·P_layer memory per batch.

Used by the layer-wise structures (``diag`` and ``kfac``, :mod:`sigma.structures.layerwise`)
by the GGN products of the engine (:func:`product`) and by the ``lowrank`` predictive
(:func:`capture`, :func:`contract`). A model's probed plan is kept by its
:class:`~sigma.curvature.engine.Engine` (``engine.layer_plan``), with the traced functions
built on it.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from sigma import keras_compat
from sigma.curvature import blocks as fast_blocks
from sigma.curvature import vectorize
from sigma.curvature.accumulate import batch_size_for
from sigma.curvature.blocks import FastBlock

# Cap on the elements of the largest per-batch intermediate of the layer-wise structures.
LAYER_BUDGET = 2**24
# Patching is process-wide: replicas of a tf.distribute strategy trace their forward passes in
# threads, so the patched forward pass is serialised.
_PATCH_LOCK = threading.RLock()


@dataclass
class GenericBlock:
    """All trainable weights of one layer without a fast path (autodiff per-sample Jacobian)."""

    name: str
    variables: list[int]  # indices into model.trainable_variables
    index: np.ndarray  # (P_l,) positions in the flat weight vector
    layer_class: str = ""
    columns: list | None = None  # per variable: the selected flat indices, or None (all)
    # a normalisation layer whose per-sample Jacobian comes from the capture (its scale and
    # offset act per feature: "batchnorm" | "layernorm"), with each variable's role
    # ("gamma" | "beta"); None: autodiff per sample
    norm: str | None = None
    roles: tuple = ()
    layer: object = None

    @property
    def size(self) -> int:
        return int(self.index.size)


@dataclass
class LayerPlan:
    """How each trainable weight of a model is handled: fast blocks and generic blocks."""

    fast: list[FastBlock] = field(default_factory=list)
    generic: list[GenericBlock] = field(default_factory=list)
    n_params: int = 0
    excluded: tuple = ()  # layers forced onto the generic path
    generic_pfor: bool = True  # vectorised generic Jacobians (False: while loops)
    selection: object = None  # the sigma.weights.Selection covered (None: every weight)

    def table(self) -> list[dict]:
        """One row per block: layer name, class, path and number of weights."""
        rows = [
            {
                "layer": b.label or b.layer.name,
                "class": type(b.layer).__name__,
                "path": f"fast ({b.kind}{'' if b.role == 'kernel' else ', ' + b.role})",
                "weights": b.size,
                "positions": b.positions,
            }
            for b in self.fast
        ]
        rows += [
            {
                "layer": g.name,
                "class": g.layer_class,
                "path": "generic" if g.norm is None else "generic (from the capture)",
                "weights": g.size,
                "positions": None,
            }
            for g in self.generic
        ]
        return rows


def describe_plan(plan: LayerPlan, model) -> dict:
    """A JSON-able description of a probed plan, from which :func:`rebuild_plan` makes it again
    for the same architecture without probing (for saving a fitted structure). Layers are named
    by the position of their kernel among ``model.trainable_variables``: Keras numbers layer
    names per process, positions stay."""
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return {
        "fast": [int(b.kernel) for b in plan.fast],
        "positions": [int(b.positions) for b in plan.fast],
        "excluded": [position[id(keras_compat.own_variables(layer)[0])] for layer in plan.excluded],
        "generic": [list(map(int, g.variables)) for g in plan.generic],
        "generic_pfor": bool(plan.generic_pfor),
    }


def rebuild_plan(model, description: dict, *, fast: bool = True, selection=None) -> LayerPlan:
    """The plan :func:`describe_plan` described, for ``model`` and the same ``selection`` of
    its weights (ValueError if its layers no longer match)."""
    tv = model.trainable_variables
    owner = {}
    for layer in keras_compat.layers(model, include_self=True):
        for v in keras_compat.own_variables(layer):
            owner.setdefault(id(v), layer)
    try:
        excluded = tuple(owner[id(tv[i])] for i in description["excluded"])
    except (IndexError, KeyError):
        raise ValueError("the model's layers do not match the saved structure's") from None
    plan = plan_layers(model, fast=fast, exclude=excluded, selection=selection)
    found = (
        [int(b.kernel) for b in plan.fast],
        [list(map(int, g.variables)) for g in plan.generic],
    )
    if found != (description["fast"], description["generic"]):
        raise ValueError(
            "the model's layers do not match the saved structure's (its blocks of weights "
            f"differ: saved {description['fast']} / {description['generic']}, found "
            f"{found[0]} / {found[1]})"
        )
    for blk, positions in zip(plan.fast, description["positions"], strict=True):
        blk.positions = positions
    plan.generic_pfor = description["generic_pfor"]
    return plan


def plan_layers(model, *, fast: bool = True, exclude: tuple = (), selection=None) -> LayerPlan:
    """Assign every selected trainable weight of ``model`` to a fast or a generic block.

    ``fast=False`` sends every layer down the generic path (the reference in the tests);
    ``exclude`` lists layers (objects) forced onto the generic path. ``selection`` (a
    :class:`sigma.weights.Selection`; default every trainable weight): the blocks cover those
    weights, indexed in the selected vector. A fast layer needs its whole kernel selected; a
    bias that is not selected (or not trainable) is left out of the block (no augmenting 1);
    a layer with part of a variable selected (a mask) takes the generic path.
    """
    tv = model.trainable_variables
    pos = {id(v): i for i, v in enumerate(tv)}
    sizes = [int(np.prod(v.shape)) for v in tv]
    if selection is None:
        columns = {i: None for i in range(len(tv))}
    else:
        columns = selection.columns()
    order = sorted(columns)
    counts = [sizes[i] if columns[i] is None else int(columns[i].size) for i in order]
    starts = dict(
        zip(order, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), strict=False)
    )

    def flat(i):
        n = sizes[i] if columns[i] is None else int(columns[i].size)
        return np.arange(starts[i], starts[i] + n)

    plan = LayerPlan(n_params=int(sum(counts)), excluded=tuple(exclude), selection=selection)
    plan.generic_pfor = not keras_compat.runs_time_loops(model)  # see vectorize.per_sample
    taken = set()
    layers = keras_compat.layers(model, include_self=True)
    labels = keras_compat.layer_labels(model)
    for layer in layers:
        if not fast or any(layer is e for e in exclude):
            continue
        for blk in fast_blocks.layer_blocks(layer, pos, columns, flat):
            blk.label = labels[id(layer)]
            plan.fast.append(blk)
            taken.update({blk.kernel} if blk.bias is None else {blk.kernel, blk.bias})
    for layer in layers:
        own = [
            pos[id(v)]
            for v in keras_compat.own_variables(layer)
            if id(v) in pos and pos[id(v)] in columns and pos[id(v)] not in taken
        ]
        if own:
            roles = _norm_roles(layer, [tv[i] for i in own]) if fast else None
            if roles is not None and any(columns[i] is not None for i in own):
                roles = None
            if any(layer is e for e in exclude):
                roles = None
            plan.generic.append(
                GenericBlock(
                    labels[id(layer)],
                    own,
                    np.concatenate([flat(i) for i in own]),
                    type(layer).__name__,
                    [columns[i] for i in own],
                    norm=None if roles is None else _norm_kind(layer),
                    roles=() if roles is None else roles,
                    layer=layer,
                )
            )
            taken.update(own)
    rest = [i for i in order if i not in taken]
    for i in rest:  # weights no layer claims as its own (should be rare)
        plan.generic.append(GenericBlock(tv[i].path, [i], flat(i), "Variable", [columns[i]]))
    return plan


# -- capture -----------------------------------------------------------------------------------
class Captured(NamedTuple):
    """What one batch gives: per fast block ã (B, T, D) and s (K, B, T, C) (None if the layer
    was never called); per generic block the per-sample Jacobian (B, K, P_l); and f (B, K)."""

    acts: list
    sens: list
    jacs: list
    outputs: tf.Tensor


def _norm_kind(layer) -> str | None:
    """'batchnorm' or 'layernorm' for a Keras normalisation layer whose scale and offset act
    per feature along one axis (its per-sample Jacobian then comes from the capture)."""
    if type(layer) is keras.layers.BatchNormalization and isinstance(layer.axis, int):
        return "batchnorm"
    if type(layer) is keras.layers.LayerNormalization:
        axis = layer.axis if isinstance(layer.axis, int) else list(layer.axis)
        if isinstance(axis, int) or len(axis) == 1:
            return "layernorm"
    return None


def _norm_roles(layer, variables) -> tuple | None:
    """("gamma" | "beta" per variable) when every variable is the layer's scale or offset."""
    if _norm_kind(layer) is None:
        return None
    gamma, beta = getattr(layer, "gamma", None), getattr(layer, "beta", None)
    roles = []
    for v in variables:
        if gamma is not None and v is gamma:
            roles.append("gamma")
        elif beta is not None and v is beta:
            roles.append("beta")
        else:
            return None
    return tuple(roles)


def _norm_layers(plan: LayerPlan) -> list:
    return [g for g in plan.generic if g.norm is not None]


def _layers_of(plan: LayerPlan) -> list:
    """The distinct layers the capture records: the fast blocks' (a LoRA layer has two
    blocks) and the normalisation layers'."""
    out = []
    for layer in [blk.layer for blk in plan.fast] + [g.layer for g in _norm_layers(plan)]:
        if not any(layer is other for other in out):
            out.append(layer)
    return out


def _layer_slot(plan: LayerPlan, layers: list) -> list[int]:
    """For each fast block, the position of its layer in ``layers``."""
    return [next(i for i, la in enumerate(layers) if la is blk.layer) for blk in plan.fast]


@contextlib.contextmanager
def _patched(layers: list, tape, records):
    """Record each layer's input and (watched) pre-activation output while active: a layer
    with an activation has it patched (z before the activation); an Embedding's output is its
    z."""
    with _PATCH_LOCK:
        saved = []
        try:
            for i, layer in enumerate(layers):
                own_call = layer.__dict__.get("call")
                orig_call = layer.call
                orig_act = getattr(layer, "activation", None)
                has_act = hasattr(layer, "activation")

                def watch(z, _i=i):
                    if tape is not None:
                        tape.watch(z)
                    records[_i][1].append(z)
                    return z

                def call(*args, _i=i, _orig=orig_call, _act=has_act, _watch=watch, **kwargs):
                    records[_i][0].append(args[0] if args else kwargs["inputs"])
                    out = _orig(*args, **kwargs)
                    return out if _act else _watch(out)

                def activation(z, _orig=orig_act, _watch=watch):
                    z = _watch(z)
                    return _orig(z) if _orig is not None else z

                saved.append((layer, own_call, orig_act, has_act))
                object.__setattr__(layer, "call", call)
                if has_act:
                    object.__setattr__(layer, "activation", activation)
            yield
        finally:
            for layer, own_call, orig_act, has_act in saved:
                if own_call is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", own_call)
                if has_act:
                    object.__setattr__(layer, "activation", orig_act)


def _pseudo_outputs(f, likelihood):
    """u_n = L_nᵀ f_n with L_n held constant (the GGN's pseudo-outputs), or f (the
    predictive's outputs) without a likelihood."""
    return f if likelihood is None else likelihood.pseudo_outputs(f)


def flat_outputs(out) -> tf.Tensor:
    """A model's output (a tensor, or a list/dict of tensors) as (B, K): each output flattened
    per sample, concatenated in ``tf.nest`` order (dict outputs: sorted by name)."""
    parts = []
    for o in tf.nest.flatten(out):
        size = int(np.prod(o.shape[1:])) if None not in o.shape[1:] else -1  # static K if known
        parts.append(tf.reshape(o, (tf.shape(o)[0], size)))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def _model_outputs(model, x):
    return flat_outputs(model(x, training=False))


def capture(model, plan: LayerPlan, x, *, likelihood=None) -> Captured:
    """Traceable: layer inputs, output sensitivities and generic Jacobians for a batch x.

    ``likelihood``: pseudo-outputs u = Lᵀ f with Λ = L Lᵀ its output Hessian (for the GGN),
    or None (u = f, for the predictive). Cost: one forward pass and a vectorised backward pass per
    output for the fast blocks; for generic blocks, per sample, one forward and K backward
    passes (``tf.vectorized_map``).
    """
    layers = _layers_of(plan)
    records = [([], []) for _ in layers]
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        with _patched(layers, tape, records):
            f = _model_outputs(model, x)
        # a sampled root (curvature="ggn_mc"): drawn once per batch, for every block
        draw = getattr(likelihood, "draw", None)
        draws = None if draw is None else draw(f)
        if draws is None:
            u = _pseudo_outputs(f, likelihood)
        else:
            u = likelihood.pseudo(tf.stop_gradient(f), f, draws)
        total = tf.reduce_sum(u, axis=0)  # (K,): samples are independent in inference mode
    zs = [z for _, zl in records for z in zl]
    looped = not (keras_compat.has_convolution(model) or keras_compat.runs_time_loops(model))
    grads = _sensitivities(tape, u, total, zs, looped=looped) if zs else []
    del tape
    per_layer, start = [], 0
    for layer, (al, zl) in zip(layers, records, strict=True):
        if len(al) != len(zl):
            raise RuntimeError(f"layer {layer.name}: inputs and outputs recorded unevenly")
        per_layer.append((al, grads[start : start + len(zl)]))
        start += len(zl)
    acts, sens = [], []
    for blk, slot in zip(plan.fast, _layer_slot(plan, layers), strict=True):
        al, gl = per_layer[slot]
        if not al:
            acts.append(None)
            sens.append(None)
            continue
        acts.append(_block_inputs(blk, al))
        sens.append(tf.concat([fast_blocks.sensitivities(blk, g) for g in gl], axis=2))
    normed = {}
    for g in _norm_layers(plan):
        slot = next(i for i, la in enumerate(layers) if la is g.layer)
        normed[id(g)] = _norm_jacobian(g, *per_layer[slot], f)
    autodiff = _generic_jacobians(model, plan, x, likelihood, draws) if plan.generic else []
    it = iter(autodiff)
    jacs = [normed[id(g)] if g.norm is not None else next(it) for g in plan.generic]
    return Captured(acts, sens, jacs, f)


def normalised(g: GenericBlock, x):
    """x̂ of a normalisation layer at inference, in x's layout and dtype: (x − μ)/√(σ² + ε)
    with the moving statistics (BatchNormalization) or each position's own along the layer's
    axis (LayerNormalization; ``rms_scaling``: x/√(σ² + ε))."""
    layer = g.layer
    rank = x.shape.rank
    axis = (layer.axis if isinstance(layer.axis, int) else list(layer.axis)[0]) % rank
    eps = tf.cast(layer.epsilon, x.dtype)
    if g.norm == "batchnorm":
        shape = [1] * rank
        shape[axis] = -1
        mean = tf.reshape(tf.cast(tf.convert_to_tensor(layer.moving_mean.value), x.dtype), shape)
        var = tf.reshape(tf.cast(tf.convert_to_tensor(layer.moving_variance.value), x.dtype), shape)
        return (x - mean) * tf.math.rsqrt(var + eps)
    # Keras' own moments (the same rounding as the layer's forward pass)
    if getattr(layer, "rms_scaling", False):
        return x * tf.math.rsqrt(keras.ops.var(x, axis=[axis], keepdims=True) + eps)
    mean, var = keras.ops.moments(x, axes=[axis], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps)


def _features_last(g: GenericBlock, t, lead: int):
    """t with the layer's feature axis last and every other axis after ``lead`` leading ones
    flattened into positions: (*lead, T, C)."""
    layer = g.layer
    rank = t.shape.rank - lead
    axis = (layer.axis if isinstance(layer.axis, int) else list(layer.axis)[0]) % rank
    perm = list(range(lead)) + [lead + i for i in range(rank) if i != axis] + [lead + axis]
    t = tf.transpose(t, perm)
    shape = tf.shape(t)
    return tf.reshape(t, tf.concat([shape[: lead + 1], [-1], shape[-1:]], 0))


def _norm_jacobian(g: GenericBlock, inputs: list, grads: list, f):
    """The per-sample Jacobian (B, K, P_l) of a normalisation layer's scale γ and offset β:
    Σ_t x̂_t ⊙ s_t and Σ_t s_t over every call and position (s the sensitivities of its
    output, (K, B, ...))."""
    if not inputs:  # the layer was never called
        return tf.zeros(tf.concat([tf.shape(f)[:1], [tf.shape(f)[1], g.size]], 0), f.dtype)
    parts = {"gamma": 0.0, "beta": 0.0}
    for x, s in zip(inputs, grads, strict=True):
        xh = _features_last(g, normalised(g, x)[None], 1)[0]  # (B, T, C)
        st = _features_last(g, s, 1)  # (K, B, T, C)
        parts["gamma"] += tf.einsum("btc,kbtc->bkc", tf.cast(xh, st.dtype), st)
        parts["beta"] += tf.transpose(tf.reduce_sum(st, axis=2), (1, 0, 2))
    return tf.concat([parts[r] for r in g.roles], axis=-1)


def capture_inputs(model, plan: LayerPlan, x) -> Captured:
    """Traceable: the fast blocks' inputs ã alone (one forward pass, no sensitivities) and f,
    for a block whose pre-activation is the model's output (its sensitivities are known)."""
    layers = _layers_of(plan)
    records = [([], []) for _ in layers]
    with _patched(layers, None, records):
        f = _model_outputs(model, x)
    acts = []
    for blk, slot in zip(plan.fast, _layer_slot(plan, layers), strict=True):
        al = records[slot][0]
        acts.append(_block_inputs(blk, al) if al else None)
    return Captured(acts, [None] * len(acts), [], f)


def output_block(model, plan: LayerPlan):
    """The plan's one fast block when its pre-activation is the model's output (a Dense head
    with a linear activation, e.g. ``weights="last_layer"``), else None: its per-sample
    Jacobian is then ã ⊗ I, and the predictive needs no backward pass."""
    if len(plan.fast) != 1 or plan.generic:
        return None
    blk = plan.fast[0]
    if blk.kind != "dense" or blk.role != "kernel" or blk.positions != 1:
        return None
    try:
        outputs = list(model.outputs)
    except (AttributeError, ValueError):
        return None
    history = keras_compat.history(outputs[0]) if len(outputs) == 1 else None
    act = getattr(blk.layer, "activation", None)
    linear = act is None or getattr(act, "__name__", "") == "linear"
    if history is None or history.operation is not blk.layer or not linear:
        return None
    return blk


def _block_inputs(blk: FastBlock, inputs: list):
    """ã (B, T, D) of a block over every call of its layer, bias-augmented (ids for a sparse
    block)."""
    a = tf.concat([fast_blocks.inputs(blk, x) for x in inputs], axis=1)
    if blk.bias is not None:
        a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
    return a


_LOOP_OUTPUTS = 64  # up to this many outputs, one backward pass each; beyond, pfor


def _sensitivities(tape, u, total, zs, *, looped: bool = False):
    """∂u_k/∂z for every recorded z, stacked over k: each (K, *z.shape).

    Samples are independent in inference mode, so the gradient of Σ_n u_nk with respect to z
    holds every sample's own sensitivity. One backward pass per output, faster to run than
    ``jacobian``'s pfor here; pfor for many outputs. ``looped`` (in a traced function): the K
    passes as one ``tf.while_loop``, so the backward graph is built once, not K times — a
    transformer classifier's diag fit traced in 4.6 s instead of 7.4 s, and ran as fast. A
    convolutional network's ran 20% slower in the loop (4.8 s against 4.0 s for a diag fit of
    bench/cnn.py's CNN, N = 1,000), so the caller unrolls the passes there.
    """
    k = u.shape[1]
    zero = tf.UnconnectedGradients.ZERO
    if k is None or k > _LOOP_OUTPUTS:
        return vectorize.jacobian(tape, total, zs, unconnected_gradients=zero)
    rows = tf.fill(tf.shape(u)[:1], 0)

    def backward(i):
        return tape.gradient(
            u,
            zs,
            output_gradients=tf.one_hot(rows + i, k, dtype=u.dtype),
            unconnected_gradients=zero,
        )

    if not looped or not tf.inside_function():
        per_k = [backward(i) for i in range(k)]
        return [tf.stack([g[j] for g in per_k]) for j in range(len(zs))]
    arrays = [tf.TensorArray(z.dtype, size=k, element_shape=z.shape) for z in zs]

    def body(i, *arrays):
        return (i + 1, *[ta.write(i, g) for ta, g in zip(arrays, backward(i), strict=True)])

    out = tf.while_loop(lambda i, *_: i < k, body, (tf.constant(0), *arrays))
    return [ta.stack() for ta in out[1:]]


def _generic_jacobians(model, plan: LayerPlan, x, likelihood, draws=None):
    """Per generic block the per-sample Jacobian of the pseudo-outputs, (B, K, P_l).

    ``tf.vectorized_map`` over the samples of K backward passes (one per output, unrolled as in
    :func:`_sensitivities`): linear in B. When pfor cannot convert some op of the model
    (:func:`with_pfor_fallback` finds out), a ``tf.map_fn`` over the samples instead: slower,
    same values.
    """
    tv = model.trainable_variables
    blocks = [blk for blk in plan.generic if blk.norm is None]  # the others: from the capture
    if not blocks:
        return []
    generic = [i for blk in blocks for i in blk.variables]
    columns = [c for blk in blocks for c in (blk.columns or [None] * len(blk.variables))]
    values = [tf.convert_to_tensor(v.value) for v in tv]
    non_trainable = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    kwargs = {"training": False} if keras_compat.call_has_training_arg(model) else {}
    pfor = plan.generic_pfor

    def one(elems):
        # The weights enter as plain tensors (stateless_call): gradients with respect to them
        # also work inside tf.map_fn, where variables captured by the loop body would not.
        xn, cn = elems if draws is not None else (elems, None)
        weights = list(values)
        with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
            for i in generic:
                weights[i] = tf.identity(values[i])
                tape.watch(weights[i])
            out, _ = model.stateless_call(
                weights, non_trainable, tf.nest.map_structure(lambda t: t[None], xn), **kwargs
            )
            fn = flat_outputs(out)
            if cn is None:
                u = _pseudo_outputs(fn, likelihood)[0]
            else:  # the batch's sampled root, this sample's row
                u = likelihood.pseudo(tf.stop_gradient(fn), fn, cn[None])[0]
        variables = [weights[i] for i in generic]
        zero = tf.UnconnectedGradients.ZERO
        k = u.shape[0]
        if k is None or k > _LOOP_OUTPUTS:
            if pfor:
                jac = vectorize.jacobian(tape, u, variables, unconnected_gradients=zero)
            else:
                jac = tape.jacobian(
                    u, variables, unconnected_gradients=zero, experimental_use_pfor=False
                )
            return [tf.reshape(j, (tf.shape(u)[0], -1)) for j in jac]
        rows = [
            tape.gradient(
                u,
                variables,
                output_gradients=tf.one_hot(i, k, dtype=u.dtype),
                unconnected_gradients=zero,
            )
            for i in range(k)
        ]
        return [tf.stack([tf.reshape(r[v], [-1]) for r in rows]) for v in range(len(variables))]

    if pfor:
        with vectorize.converting():
            per_var = tf.vectorized_map(one, x if draws is None else (x, draws))
    else:
        sig = [tf.TensorSpec([None, int(np.prod(tv[i].shape))], values[i].dtype) for i in generic]
        per_var = tf.map_fn(one, x if draws is None else (x, draws), fn_output_signature=sig)
    # a variable selected in part (a mask): its selected columns, (B, K, n)
    per_var = [
        j if c is None else tf.gather(j, c, axis=2) for j, c in zip(per_var, columns, strict=True)
    ]
    out, i = [], 0
    for blk in blocks:
        n = len(blk.variables)
        out.append(tf.concat(per_var[i : i + n], axis=-1))
        i += n
    return out


# -- probing and checking the fast path ---------------------------------------------------------
def probe(model, plan: LayerPlan, x, *, rtol: float | None = None) -> LayerPlan:
    """Run the fast path eagerly on a few samples x: set each block's positions T and check
    Σ_n Σ_k Σ_t ã ⊗ s against the plain gradient of Σ f. A block that disagrees (weights also
    used outside the layer's ``call``) moves to the generic path, with a warning."""
    tv = model.trainable_variables
    if rtol is None:
        rtol = 1e-3 if tv[0].dtype in ("float16", "bfloat16", "float32") else 1e-8
    x = tf.nest.map_structure(tf.constant, x)
    n = int(tf.nest.flatten(x)[0].shape[0])
    layers = _layers_of(plan)
    records = [([], []) for _ in layers]
    with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
        for blk in plan.fast:
            tape.watch(tv[blk.kernel].value)
            if blk.bias is not None:
                tape.watch(tv[blk.bias].value)
        for g in _norm_layers(plan):
            for i in g.variables:
                tape.watch(tv[i].value)
        with _patched(layers, tape, records):
            total = tf.reduce_sum(_model_outputs(model, x))
    # every gradient the checks need from one backward pass (one per block took 0.3 s more
    # on a transformer's six blocks, eagerly)
    bad, checks, wanted = [], [], []
    for blk, slot in zip(plan.fast, _layer_slot(plan, layers), strict=True):
        al, zl = records[slot]
        if not zl:
            blk.positions = 0
            continue
        if any(a.shape[0] != n for a in al) or (blk.sparse and not _token_ids(al, blk.d_in)):
            bad.append(blk.layer)  # samples folded into the batch axis; not token ids
            continue
        refs = [tv[blk.kernel].value] + ([] if blk.bias is None else [tv[blk.bias].value])
        checks.append((blk, al, len(wanted), len(zl), refs))
        wanted += list(zl) + refs
    norms = []
    for g in _norm_layers(plan):  # Σ_n of the captured per-sample Jacobian: the gradient
        slot = next(i for i, la in enumerate(layers) if la is g.layer)
        al, zl = records[slot]
        if not zl:
            continue
        if any(a.shape[0] != n for a in al):
            bad.append(g.layer)
            continue
        refs = [tv[i].value for i in g.variables]
        norms.append((g, al, len(wanted), len(zl), refs))
        wanted += list(zl) + refs
    zero = tf.UnconnectedGradients.ZERO  # a layer whose output never reaches f: zeros
    grads = tape.gradient(total, wanted, unconnected_gradients=zero) if wanted else []
    for blk, al, start, nz, refs in checks:
        a = _block_inputs(blk, al)
        s = tf.concat(
            [fast_blocks.sensitivities(blk, g[None])[0] for g in grads[start : start + nz]],
            axis=1,
        )
        blk.positions = int(a.shape[1])
        fast = fast_blocks.outer_sum(blk, a, s).numpy().ravel()
        ref = np.concatenate(
            [
                np.ravel(tf.convert_to_tensor(g).numpy())  # an embedding's: IndexedSlices
                if g is not None
                else np.zeros(int(np.prod(r.shape)))
                for g, r in zip(grads[start + nz : start + nz + len(refs)], refs, strict=True)
            ]
        )
        fast = _in_variable_order(blk, fast, [int(np.prod(r.shape)) for r in refs])
        if not np.all(np.isfinite(ref)):
            continue  # an overflow inside the network: reported when the curvature is checked
        if not np.all(np.isfinite(fast)):
            bad.append(blk.layer)
            continue
        if not _close(fast, ref, rtol):
            bad.append(blk.layer)
    for g, al, start, nz, refs in norms:
        s = [tf.convert_to_tensor(gr)[None] for gr in grads[start : start + nz]]
        fast = tf.reduce_sum(_norm_jacobian(g, al, s, total[None, None]), axis=(0, 1)).numpy()
        ref = np.concatenate(
            [
                np.ravel(tf.convert_to_tensor(r).numpy())
                for r in grads[start + nz : start + nz + len(refs)]
            ]
        )
        if np.all(np.isfinite(ref)) and not _close(fast, ref, rtol):
            bad.append(g.layer)
    del tape
    if bad:
        names = ", ".join(layer.name for layer in bad)
        warnings.warn(
            f"layers {names}: their weights are also used outside their call() (tied weights?) "
            "or see a batch axis other than the model's samples; they take the generic "
            "autodiff path instead",
            stacklevel=keras_compat.user_stacklevel(),
        )
        replanned = plan_layers(
            model, exclude=plan.excluded + tuple(bad), selection=getattr(plan, "selection", None)
        )
        return probe(model, replanned, x, rtol=rtol)
    return plan


def _close(fast, ref, rtol) -> bool:
    # in float64: a float32 division by 1e-300 (an all-zero reference: a LoRA layer at Keras'
    # zero start of B) would underflow to 0/0
    fast, ref = np.asarray(fast, np.float64), np.asarray(ref, np.float64)
    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)  # norms of scaled vectors
    return np.linalg.norm((fast - ref) / scale) <= rtol * max(np.linalg.norm(ref / scale), 1e-30)


def _token_ids(inputs: list, rows: int) -> bool:
    """Whether every recorded input holds integer indices into a table of ``rows`` rows."""
    for x in inputs:
        v = np.asarray(x)
        if v.size and not (np.all(v == np.round(v)) and v.min() >= 0 and v.max() < rows):
            return False
    return True


def _in_variable_order(blk: FastBlock, values: np.ndarray, sizes: list[int]) -> np.ndarray:
    """A block's (D·C,) values rearranged into its variables' own flat order (kernel, then
    bias): the block's index holds one contiguous range of positions per variable."""
    index = blk.index
    out = np.zeros(sum(sizes))
    if blk.bias is None:
        out[index - index.min()] = values
        return out
    n_k, n_b = sizes
    first_is_kernel = blk.kernel < blk.bias
    lo = index.min()
    in_first = index < lo + (n_k if first_is_kernel else n_b)
    second_lo = index[~in_first].min()
    if first_is_kernel:
        local = np.where(in_first, index - lo, n_k + index - second_lo)
    else:
        local = np.where(in_first, n_k + index - lo, index - second_lo)
    out[local] = values
    return out


def with_pfor_fallback(plan: LayerPlan, run):
    """``run()``; if it fails while generic blocks use pfor (which cannot convert some ops,
    e.g. grouped convolutions), switch ``plan`` to while-loop Jacobians and run again."""
    try:
        return run()
    except (tf.errors.OpError, ValueError, NotImplementedError, TypeError):
        if not (plan.generic and plan.generic_pfor):
            raise
        plan.generic_pfor = False
        return run()


def per_sample_elements(plan: LayerPlan, k: int) -> int:
    """Elements held per sample by the largest intermediates of a batch (for a batch size)."""
    n = sum(fast_blocks.per_sample_elements(b, k) for b in plan.fast)
    n += sum(4 * k * g.size for g in plan.generic)  # vectorised Jacobian intermediates
    return max(n, 1)


def layer_batch_size(n: int, per_sample: int, batch_size: int | None) -> int:
    """``batch_size`` if given, else the largest batch (≤ n) within :data:`LAYER_BUDGET`."""
    return batch_size_for(n, per_sample, batch_size, budget=LAYER_BUDGET)


def contract(plan: LayerPlan, cap: Captured, blocks: list, *, covariance: bool):
    """Σ over blocks of g A_block⁻¹ gᵀ for every sample, without forming g (traceable).

    For a fast block with (rotated) inputs ã (B, T, D), sensitivities s (K, B, T, C) and inverse
    eigenvalues W (D, C): the per-sample gradient is G_nk = Σ_t ã_nt s_nktᵀ (D, C), and
    g A⁻¹ gᵀ = Σ_dc G_nk,dc G_nl,dc W_dc (:func:`sigma.curvature.blocks.quadratic`; with one
    position no per-sample gradient is formed at all). Returns (B, K) variances or (B, K, K)
    covariances, in the dtype of the blocks' inverse eigenvalues W (float64 for the
    structures' predictive: no overflow for tiny α, β).
    """
    nf = len(plan.fast)
    out = 0.0
    for blk, a, s, (u_in, u_out, w) in zip(plan.fast, cap.acts, cap.sens, blocks[:nf], strict=True):
        if a is None:
            continue
        # rotations in the model's dtype (orthogonal: nothing overflows), squares in W's
        a, s = fast_blocks.rotate(blk, a, s, u_in, u_out)
        out += fast_blocks.quadratic(blk, a, s, w, covariance=covariance)
    for j, (v, w) in zip(cap.jacs, blocks[nf:], strict=True):
        j = tf.cast(j, w.dtype)
        if v is not None:
            j = tf.einsum("bkp,pr->bkr", j, v)
        if covariance:
            out += tf.einsum("bkp,p,blp->bkl", j, w, j)
        else:
            out += tf.einsum("bkp,p->bk", tf.square(j), w)
    if isinstance(out, float):  # no weights reached the outputs
        k = tf.shape(cap.outputs)[1]
        shape = (tf.shape(cap.outputs)[0], k, k) if covariance else tf.shape(cap.outputs)
        dtype = blocks[0][-1].dtype if blocks else cap.outputs.dtype
        out = tf.zeros(shape, dtype)
    return out


def product_elements(plan: LayerPlan, k: int, m: int) -> int:
    """Elements held per sample by :func:`product` with m vectors (for a batch size)."""
    n = per_sample_elements(plan, k) + k * m
    n += sum(2 * b.positions * b.d_out * m for b in plan.fast)  # ã V and s U per block
    return max(n, 1)


def jacobian_product(plan: LayerPlan, cap: Captured, v):
    """J V for the captured batch, (B, K, m) (or 0.0 when no weight reaches the outputs):
    per fast block Σ_t sᵀ (ã V_b), per generic block J_l V_l; in V's dtype (traceable)."""
    m = tf.shape(v)[1]
    jv = 0.0
    for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
        if a is None:
            continue
        vb = tf.reshape(tf.gather(v, blk.index), (blk.d_in, blk.d_out, m))
        jv += fast_blocks.jacobian_product(blk, a, s, vb)
    for blk, j in zip(plan.generic, cap.jacs, strict=True):
        jv += tf.einsum("bkp,pm->bkm", tf.cast(j, v.dtype), tf.gather(v, blk.index))
    return jv


def product(plan: LayerPlan, cap: Captured, v):
    """Σ_n J_nᵀ (J_n V) for the captured batch, V (P, m): the GGN product (the capture's
    pseudo-outputs u = Lᵀ f make it Σ J_nᵀ Λ_n J_n V), without forming J (traceable).

    For a fast block with inputs ã (B, T, D), sensitivities s (K, B, T, C) and V's rows of the
    block as V_b (D, C, m): J V = Σ_t sᵀ (ã V_b) and Jᵀ U = Σ_t ã ⊗ (s U) — two products of
    the layer's size per vector, as a forward pass. Generic blocks use their per-sample
    Jacobian. Returns (P, m) in V's dtype.
    """
    blocks = plan.fast + plan.generic
    m = tf.shape(v)[1]
    jv = jacobian_product(plan, cap, v)
    out = []
    for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
        if a is None or isinstance(jv, float):
            out.append(tf.zeros((blk.size, m), v.dtype))
            continue
        out.append(fast_blocks.transpose_product(blk, a, s, jv))
    for j in cap.jacs:
        out.append(
            tf.zeros((tf.shape(j)[2], m), v.dtype)
            if isinstance(jv, float)
            else tf.einsum("bkp,bkm->pm", j, jv)
        )
    order = np.argsort(np.concatenate([blk.index for blk in blocks]))
    return tf.gather(tf.concat(out, axis=0), order)
