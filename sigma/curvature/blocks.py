"""Layers whose weights are a matrix acting on their inputs: the blocks of the fast path.

A layer computes, at every position t at which its weights are applied, z_t = ã_t W (+ its
activation afterwards), with W a (D, C) matrix view of one of its weight variables and ã_t a
D-vector made from the layer's input. The per-sample gradient of a (pseudo-)output u_k is then

    ∂u_k(x_n)/∂W = Σ_t ã_nt ⊗ s_nkt,      s_nkt = ∂u_k(x_n)/∂z_nt   (C),

and every structure of the layer-wise family (diag, kfac, ekfac, the products and the
predictive) needs only ã (B, T, D) and s (K, B, T, C). This module says, for each kind of
layer, what W, ã, T, D and C are, and implements the few contractions of ã and s the
structures use (:func:`input_gram`, :func:`gradient_squares`, :func:`quadratic`,
:func:`jacobian_product`, :func:`transpose_product`, :func:`outer_sum`).

==================  ===========================================  ================================
kind                ã at a position                              positions T per sample
==================  ===========================================  ================================
``dense``           the input's last axis (+ 1 for the bias)     every other input axis
``conv1d/conv2d``   the patch under the kernel (+ 1)             the output's spatial positions
``einsum``          the input's contracted axes (+ 1 for a       the axes the input shares with
                    bias over every kernel output axis)          the output (sequence, heads …)
``embedding``       the one-hot row of the token (never formed:  the tokens
                    ã is held as the token ids)
==================  ===========================================  ================================

Keras' LoRA (``layer.enable_lora(r)``: kernel = W₀ + c A B) gives two blocks per layer, the
adapters A (D × ··· × r) and B (r × E): for A, ã is the layer's own and s the sensitivity
times c Bᵀ; for B, ã = c (ã A) at every position and every output axis but the last, and s the
layer's own. An einsum kernel's last axis must be an output axis for that (it is in every
Keras and KerasHub transformer layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from sigma import keras_compat

KINDS = ("dense", "conv1d", "conv2d", "einsum", "embedding")


@dataclass
class FastBlock:
    """One (D, C) weight matrix of a layer on the fast path (see the module docstring)."""

    layer: keras.layers.Layer
    kind: str  # one of KINDS: how the layer's input and output map to (B, T, D) and (B, T, C)
    kernel: int  # index into model.trainable_variables of the block's matrix variable
    bias: int | None  # index of the bias (an augmented row of 1s) or None
    d_in: int  # D: rows of the (bias-augmented) matrix
    d_out: int  # C: columns
    index: np.ndarray  # (D·C,) positions in the flat weight vector, row-major over (D, C)
    positions: int = 1  # T per sample (set by probing a forward pass)
    role: str = "kernel"  # "kernel", or "lora_a" / "lora_b": Keras' LoRA adapters
    spec: dict = field(default_factory=dict)  # kind-specific facts (einsum letters, shapes)
    label: str = ""  # the layer's name unique within the model (keras_compat.layer_labels)

    @property
    def size(self) -> int:
        return self.d_in * self.d_out

    @property
    def sparse(self) -> bool:
        """ã is a one-hot row, held as token ids (B, T): an embedding table or its LoRA A."""
        return self.kind == "embedding" and self.role != "lora_b"


# -- which layers, which blocks ------------------------------------------------------------------
def _kind(layer) -> str | None:
    if getattr(layer, "quantization_mode", None):
        return None
    if isinstance(layer, keras.layers.Dense) and type(layer).call is keras.layers.Dense.call:
        return "dense"
    if (
        isinstance(layer, keras.layers.EinsumDense)
        and type(layer).call is keras.layers.EinsumDense.call
    ):
        return "einsum" if einsum_spec(layer) is not None else None
    if (
        isinstance(layer, keras.layers.Embedding)
        and type(layer).call is keras.layers.Embedding.call
    ):
        return "embedding"
    for cls, kind in ((keras.layers.Conv2D, "conv2d"), (keras.layers.Conv1D, "conv1d")):
        if (
            isinstance(layer, cls)
            and type(layer).call is cls.call
            and type(layer).convolution_op is cls.convolution_op
            and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1
            and not getattr(layer, "lora_enabled", False)
        ):
            return kind
    return None


def einsum_spec(layer) -> dict | None:
    """The letters of an EinsumDense equation as the fast path reads it: the input's batch (or
    a leading ``...``), its shared axes S (positions), the contracted axes C and the kernel's
    output axes O — z[b, S, O] = Σ_C x[b, S, C] W[C, O]. None for an equation of another form
    (an input axis summed without the kernel, a kernel axis shared with the input and the
    output, an ellipsis elsewhere)."""
    eq = layer.equation.replace(" ", "")
    lhs, out = eq.split("->")
    x_eq, k_eq = lhs.split(",")
    if "..." in k_eq:
        return None
    if "..." in x_eq or "..." in out:
        if not (x_eq.startswith("...") and out.startswith("...")):
            return None
        if "..." in x_eq[3:] or "..." in out[3:]:
            return None
        x_eq, out = x_eq[3:], out[3:]
    else:
        if not x_eq or not out or x_eq[0] != out[0] or x_eq[0] in k_eq:
            return None
        x_eq, out = x_eq[1:], out[1:]
    if any(len(set(s)) != len(s) for s in (x_eq, k_eq, out)):
        return None
    shared = [c for c in x_eq if c in out and c not in k_eq]
    contracted = [c for c in k_eq if c in x_eq and c not in out]
    outputs = [c for c in k_eq if c in out and c not in x_eq]
    if len(shared) + len(contracted) != len(x_eq) or len(contracted) + len(outputs) != len(k_eq):
        return None
    if len(shared) + len(outputs) != len(out):
        return None
    return {"x": x_eq, "k": k_eq, "out": out, "S": shared, "C": contracted, "O": outputs}


def layer_blocks(layer, position: dict, columns: dict, flat) -> list[FastBlock]:
    """The fast blocks of ``layer`` over the selected weights (none if it has no fast path).

    position : id(variable) → index in ``model.trainable_variables``; columns : index → None
    (whole variable selected) for the selected variables; flat : index → its positions in
    the selected flat vector. A block needs its whole matrix variable selected; a bias rides
    along as an augmented row when it is selected whole and adds to every output of the
    block, else it is left to the generic path."""
    kind = _kind(layer)
    if kind is None:
        return []

    def chosen(var):
        i = position.get(id(var)) if var is not None else None
        return i if i is not None and i in columns and columns[i] is None else None

    lora = keras_compat.lora_adapters(layer)
    stored = (
        keras_compat.embedding_variable(layer)
        if kind == "embedding"
        else keras_compat.kernel_variable(layer)
    )
    if stored is None:
        return []
    shape = tuple(int(d) for d in stored.shape)
    spec = _shape_spec(layer, kind, shape)
    if spec is None:
        return []
    bias = chosen(getattr(layer, "bias", None)) if kind != "embedding" else None
    bias_index = _bias_index(layer, kind, spec, flat, bias) if bias is not None else None
    blocks = []
    k = chosen(stored)
    if k is not None:
        index = flat(k).reshape(shape).transpose(spec["kernel_perm"]).reshape(spec["d0"], -1)
        if bias_index is not None:
            index, bias_taken = np.concatenate([index, bias_index[None]]), bias
        else:
            bias_taken = None
        blocks.append(_block(layer, kind, k, bias_taken, index, "kernel", spec))
        if bias_taken is not None:
            bias = bias_index = None
    if lora is not None and (kind != "einsum" or spec["lora_ok"]):
        a_var, b_var, scale = lora
        spec = dict(spec, scale=scale, rank=int(b_var.shape[0]))
        a = chosen(a_var)
        if a is not None:  # A: (C..., O'..., r) as (D0, Cp·r)
            a_shape = tuple(int(d) for d in a_var.shape)
            index = flat(a).reshape(a_shape).transpose(spec["lora_a_perm"])
            blocks.append(
                _block(layer, kind, a, None, index.reshape(spec["d0"], -1), "lora_a", spec)
            )
        b = chosen(b_var)
        if b is not None:  # B: (r, E); the bias rides along when it adds to E alone
            index = flat(b).reshape(int(b_var.shape[0]), -1)
            with_bias = bias_index is not None and spec["cp"] == 1
            if with_bias:
                index = np.concatenate([index, bias_index.reshape(1, -1)])
            blocks.append(
                _block(layer, kind, b, bias if with_bias else None, index, "lora_b", spec)
            )
    return blocks


def _block(layer, kind, var, bias, index, role, spec) -> FastBlock:
    d, c = index.shape
    return FastBlock(layer, kind, var, bias, int(d), int(c), index.ravel(), role=role, spec=spec)


def _shape_spec(layer, kind, shape) -> dict | None:
    """The kernel's (D0, Cp, E) view: D0 input features, E = its last axis, Cp the product of
    its other output axes (einsum), with the permutations to (C…, O…) order."""
    if kind in ("dense", "embedding", "conv1d", "conv2d"):
        d0 = int(np.prod(shape[:-1]))
        return {
            "d0": d0, "cp": 1, "e": shape[-1], "kernel_perm": list(range(len(shape))),
            "lora_a_perm": [0, 1] if len(shape) == 2 else None, "lora_ok": len(shape) == 2,
        }  # fmt: skip
    spec = dict(einsum_spec(layer))
    dims = dict(zip(spec["k"], shape, strict=True))
    k_eq, c_letters, o_letters = spec["k"], spec["C"], spec["O"]
    spec["d0"] = int(np.prod([dims[c] for c in c_letters]))
    spec["kernel_perm"] = [k_eq.index(c) for c in c_letters + o_letters]
    spec["lora_ok"] = bool(o_letters) and k_eq[-1] == o_letters[-1]
    spec["e"] = dims[o_letters[-1]] if o_letters else 1
    spec["cp"] = int(np.prod([dims[c] for c in o_letters[:-1]])) if o_letters else 1
    a_letters = k_eq[:-1] + "#"  # LoRA A: the kernel's axes but the last, then the rank
    spec["lora_a_perm"] = (
        [a_letters.index(c) for c in c_letters + o_letters[:-1] + ["#"]]
        if spec["lora_ok"]
        else None
    )
    return spec


def _bias_index(layer, kind, spec, flat, b) -> np.ndarray | None:
    """The bias's flat positions in the order of the block's output columns (C,), or None
    when the bias does not add one value to each output column (an einsum bias over some of
    the kernel's output axes, or over a position axis)."""
    shape = tuple(int(d) for d in layer.bias.shape)
    if kind != "einsum":
        return flat(b) if len(shape) == 1 else None
    out, bias_axes = spec["out"], layer.bias_axes or ""
    if set(bias_axes) != set(spec["O"]):
        return None
    letters = out[len(out) - len(shape) :]  # the bias spans the output's trailing axes
    if len(letters) != len(shape):
        return None
    keep = [i for i, c in enumerate(letters) if c in bias_axes]
    if any(shape[i] != 1 for i in range(len(shape)) if i not in keep):
        return None
    index = flat(b).reshape(shape)
    index = index.reshape([shape[i] for i in keep])
    kept = [letters[i] for i in keep]
    return index.transpose([kept.index(c) for c in spec["O"]]).ravel()


# -- the layer's input and output as (B, T, D) and (K, B, T, C) ------------------------------------
def inputs(blk: FastBlock, x):
    """ã (B, T, D) for the recorded layer input x (without the bias's 1s), or the token ids
    (B, T) int32 of a sparse block. Traceable."""
    base = _base_inputs(blk, x)
    if blk.role != "lora_b":
        return base
    a_var, _, scale = keras_compat.lora_adapters(blk.layer)
    if blk.kind == "embedding":  # c · A[id] at each token
        return scale * tf.cast(tf.gather(tf.convert_to_tensor(a_var.value), base), x.dtype)
    spec = blk.spec
    a = tf.cast(tf.convert_to_tensor(a_var.value), base.dtype)
    if blk.kind == "einsum":
        a = tf.transpose(a, spec["lora_a_perm"])
    a = tf.reshape(a, (spec["d0"], spec["cp"], -1))
    xa = scale * tf.einsum("btd,dpr->btpr", base, a)
    return tf.reshape(xa, (tf.shape(xa)[0], -1, xa.shape[-1]))


def sensitivities(blk: FastBlock, g):
    """s (K, B, T, C) from the gradients g (K, B, *z.shape[1:]) of the pseudo-outputs with
    respect to the recorded pre-activation z. Traceable."""
    s = _base_sensitivities(blk, g)  # (K, B, T, Cp, E)
    k, b = tf.shape(s)[0], tf.shape(s)[1]
    if blk.role == "kernel":
        return tf.reshape(s, (k, b, -1, blk.d_out))
    if blk.role == "lora_b":
        return tf.reshape(s, (k, b, -1, s.shape[-1]))
    _, b_var, scale = keras_compat.lora_adapters(blk.layer)
    bmat = tf.cast(tf.convert_to_tensor(b_var.value), s.dtype)
    sb = scale * tf.einsum("kbtpe,re->kbtpr", s, bmat)
    return tf.reshape(sb, (k, b, -1, blk.d_out))


def _base_inputs(blk, x):
    layer = blk.layer
    if blk.kind == "embedding":
        return tf.reshape(tf.cast(x, tf.int32), (tf.shape(x)[0], -1))
    if blk.kind == "dense":
        return tf.reshape(x, (tf.shape(x)[0], -1, x.shape[-1]))
    if blk.kind == "einsum":
        spec, rank = blk.spec, x.shape.rank
        lead = rank - len(spec["x"])
        perm = list(range(lead)) + [lead + spec["x"].index(c) for c in spec["S"] + spec["C"]]
        x = tf.transpose(x, perm)
        return tf.reshape(x, (tf.shape(x)[0], -1, spec["d0"]))
    if blk.kind == "conv1d":
        if layer.padding == "causal":
            left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
            x = tf.pad(x, [[0, 0], [left, 0], [0, 0]])
        padding = "VALID" if layer.padding in ("valid", "causal") else "SAME"
        x = x[:, None]
        sizes = [1, 1, layer.kernel_size[0], 1]
        strides = [1, 1, layer.strides[0], 1]
        rates = [1, 1, layer.dilation_rate[0], 1]
    else:
        padding = layer.padding.upper()
        sizes = [1, *layer.kernel_size, 1]
        strides = [1, *layer.strides, 1]
        rates = [1, *layer.dilation_rate, 1]
    p = tf.image.extract_patches(x, sizes=sizes, strides=strides, rates=rates, padding=padding)
    return tf.reshape(p, (tf.shape(p)[0], -1, p.shape[-1]))


def _base_sensitivities(blk, g):
    """g (K, B, *z.shape[1:]) as (K, B, T, Cp, E)."""
    spec = blk.spec
    k, b = tf.shape(g)[0], tf.shape(g)[1]
    if blk.kind == "einsum":
        rank = g.shape.rank - 1  # z's rank
        lead = rank - len(spec["out"])
        order = spec["S"] + spec["O"]
        perm = [0] + [1 + i for i in range(lead)]
        perm += [1 + lead + spec["out"].index(c) for c in order]
        g = tf.transpose(g, perm)
    return tf.reshape(g, (k, b, -1, spec["cp"], spec["e"]))


# -- contractions of ã and s (traceable) -------------------------------------------------------------
def input_gram(blk: FastBlock, a):
    """Σ_n Σ_t ã_nt ã_ntᵀ: (D, D), or its diagonal (D,) — the token counts — for a sparse
    block (a one-hot row has one 1)."""
    if blk.sparse:
        return tf.math.bincount(
            tf.reshape(a, [-1]), minlength=blk.d_in, maxlength=blk.d_in, dtype=tf.float64
        )
    a2 = tf.reshape(a, (-1, blk.d_in))
    return tf.matmul(a2, a2, transpose_a=True)


def sensitivity_gram(blk: FastBlock, s):
    """Σ_n Σ_t Σ_k s_nkt s_nktᵀ (C, C)."""
    s2 = tf.reshape(s, (-1, blk.d_out))
    return tf.matmul(s2, s2, transpose_a=True)


def outer_sum(blk: FastBlock, a, s):
    """Σ_n Σ_t ã_nt ⊗ s_nt (D, C) for s (B, T, C) without an output axis (the gradient of the
    summed outputs with respect to the block's matrix)."""
    if blk.sparse:
        return tf.math.unsorted_segment_sum(
            tf.reshape(s, (-1, blk.d_out)), tf.reshape(a, [-1]), blk.d_in
        )
    return tf.einsum("btd,btc->dc", a, s)


def _token_sums(blk: FastBlock, a, s):
    """Per (sample, token) pairs of a sparse block: the per-sample gradient rows
    G_u = Σ_{t: id_nt = v} s_nkt (U, K, C), their table rows v (U,) and samples n (U,)."""
    b = tf.shape(a)[0]
    key = tf.cast(tf.range(b)[:, None], tf.int64) * blk.d_in + tf.cast(a, tf.int64)
    uniq, idx = tf.unique(tf.reshape(key, [-1]))
    k = tf.shape(s)[0]
    rows = tf.reshape(tf.transpose(s, (1, 2, 0, 3)), (-1, k, blk.d_out))  # (B·T, K, C)
    g = tf.math.unsorted_segment_sum(rows, idx, tf.size(uniq))
    return g, tf.cast(uniq % blk.d_in, tf.int32), tf.cast(uniq // blk.d_in, tf.int32)


def _per_sample_gradients(a, s):
    """G_nk = Σ_t ã_nt s_nktᵀ for every k at once, (B, D, K·C), as one batched product per
    sample, ã_nᵀ (D, T) by the sensitivities laid out (T, K·C): TensorFlow's einsum
    "btd,kbtc->kbdc" takes twice as long (it transposes its (K, B, D, C) result; 75 ms against
    41 ms for a transformer's projection, B = 192, T = 32, D = 65, C = 64, K = 10)."""
    b, t, k, c = tf.shape(s)[1], tf.shape(s)[2], tf.shape(s)[0], tf.shape(s)[3]
    st = tf.reshape(tf.transpose(s, (1, 2, 0, 3)), (b, t, k * c))
    return tf.matmul(a, st, transpose_a=True)


def gradient_squares(blk: FastBlock, a, s):
    """Σ_n Σ_k G_nk ⊙ G_nk (D, C), G_nk = Σ_t ã_nt s_nktᵀ the per-sample gradients: the exact
    GGN diagonal of the block (in the basis ã and s are given in)."""
    if blk.sparse:
        g, rows, _ = _token_sums(blk, a, s)
        return tf.math.unsorted_segment_sum(tf.reduce_sum(tf.square(g), 1), rows, blk.d_in)
    if blk.positions == 1:  # d = Σ_n ã_n² ⊗ Σ_k s_nk²
        return tf.matmul(
            tf.square(a[:, 0]), tf.reduce_sum(tf.square(s[:, :, 0]), 0), transpose_a=True
        )
    g = _per_sample_gradients(a, s)  # (B, D, K·C)
    k, c = tf.shape(s)[0], tf.shape(s)[3]
    # the sum over samples first, over a leading axis, then over k: one reduce_sum over the
    # axes (0, 2) of (B, D, K, C) strides through memory and took 3× as long (19 ms against
    # 6.6 ms for the projection above with K = 9)
    g = tf.reduce_sum(tf.square(g), axis=0)  # (D, K·C)
    return tf.reduce_sum(tf.reshape(g, (tf.shape(g)[0], k, c)), axis=1)


def quadratic(blk: FastBlock, a, s, w, *, covariance: bool):
    """Per sample Σ_dc G_nk,dc G_nl,dc W_dc: (B, K, K) with ``covariance``, else its diagonal
    (B, K); in W's dtype. With one position no per-sample gradient is formed."""
    if blk.positions > 1 and not blk.sparse:
        return _positions_quadratic(a, s, w, covariance=covariance)
    s = tf.cast(s, w.dtype)
    if blk.sparse:
        g, rows, sample = _token_sums(blk, a, s)
        wr = tf.gather(w, rows)
        n = tf.shape(a)[0]
        if covariance:
            per = tf.einsum("ukc,ulc,uc->ukl", g, g, wr)
        else:
            per = tf.einsum("ukc,uc->uk", tf.square(g), wr)
        return tf.math.unsorted_segment_sum(per, sample, n)
    a = tf.cast(a, w.dtype)  # one position: d = Σ_dc ã_d² W_dc s_c², no G formed
    a2w = tf.matmul(tf.square(a[:, 0]), w)  # (B, C)
    s0 = s[:, :, 0]  # (K, B, C)
    if covariance:
        return tf.einsum("bc,kbc,lbc->bkl", a2w, s0, s0)
    return tf.transpose(tf.einsum("bc,kbc->kb", a2w, tf.square(s0)))


def _positions_quadratic(a, s, w, *, covariance: bool):
    """:func:`quadratic` of a block used at several positions: G_nk = Σ_t ã_nt s_nktᵀ for
    every k at once (:func:`_per_sample_gradients`), in the model's dtype (at least float32):
    the sum over positions is most of the work, and float32 takes half float64's time. The
    covariance is contracted in W's dtype, whose
    inverse eigenvalues overflow float32 for tiny α, β. Its diagonal, Σ_dc G² W (positive
    terms), in the model's dtype with G and W scaled to at most 1: a transformer's projection
    (B = 200, T = 32, D = 65, C = 64, K = 10) took 10 ms instead of 24 ms with einsum
    "btd,kbtc->bkdc" in float64, within 2e-7 of it."""
    dtype = a.dtype if a.dtype.size >= 4 else tf.float32  # float16's squares overflow at 6.5e4
    a, s = tf.cast(a, dtype), tf.cast(s, dtype)
    b, d, k, c = tf.shape(a)[0], tf.shape(a)[2], tf.shape(s)[0], tf.shape(s)[3]
    g = _per_sample_gradients(a, s)  # (B, D, K·C)
    if covariance:
        g = tf.cast(tf.reshape(g, (b, d, k, c)), w.dtype) * tf.sqrt(w)[None, :, None, :]
        g = tf.reshape(tf.transpose(g, (0, 2, 1, 3)), (b, k, d * c))
        return tf.matmul(g, g, transpose_b=True)
    # every term scaled to at most 1 (G by its largest entry per sample, W by its largest), so
    # that neither G² nor W over- or underflows the model's dtype; the scales back in W's
    top = tf.reduce_max(w)
    top = tf.where(top > 0, top, tf.ones_like(top))
    big = tf.reduce_max(tf.abs(g), axis=(1, 2))  # (B,)
    big = tf.where(big > 0, big, tf.ones_like(big))
    scaled = tf.tile(tf.cast(w / top, dtype), (1, k))  # (D, K·C)
    g2 = tf.reduce_sum(tf.square(g / big[:, None, None]) * scaled, 1)  # (B, K·C)
    g2 = tf.cast(tf.reduce_sum(tf.reshape(g2, (b, k, c)), -1), w.dtype)
    return g2 * tf.square(tf.cast(big, w.dtype))[:, None] * top


def rotate(blk: FastBlock, a, s, u_in, u_out):
    """ã U_in and s U_out (either None: unrotated); a sparse block's rows are never rotated
    (its input factor is diagonal: U_in is the identity)."""
    if u_in is not None and not blk.sparse:
        a = tf.einsum("btd,de->bte", a, tf.cast(u_in, a.dtype))
    if u_out is not None:
        s = tf.einsum("kbtc,ce->kbte", s, tf.cast(u_out, s.dtype))
    return a, s


def jacobian_product(blk: FastBlock, a, s, vb):
    """J_block V_b per sample, (B, K, m), for V_b (D, C, m): Σ_t sᵀ (ã V_b)."""
    if blk.sparse:
        av = tf.gather(vb, a)  # (B, T, C, m)
    else:
        av = tf.einsum("btd,dcm->btcm", tf.cast(a, vb.dtype), vb)
    return tf.einsum("kbtc,btcm->bkm", tf.cast(s, vb.dtype), av)


def transpose_product(blk: FastBlock, a, s, u):
    """J_blockᵀ U for U (B, K, m): Σ_n Σ_t ã_nt ⊗ (s_nt U_n), (D·C, m)."""
    r = tf.einsum("kbtc,bkm->btcm", tf.cast(s, u.dtype), u)
    if blk.sparse:
        m = tf.shape(u)[2]
        out = tf.math.unsorted_segment_sum(
            tf.reshape(r, (-1, blk.d_out, m)), tf.reshape(a, [-1]), blk.d_in
        )
    else:
        out = tf.einsum("btd,btcm->dcm", tf.cast(a, u.dtype), r)
    return tf.reshape(out, (blk.size, -1))


def per_sample_elements(blk: FastBlock, k: int) -> int:
    """Elements the largest intermediates of this block hold per sample (for a batch size)."""
    t = max(blk.positions, 1)
    n = 2 * k * t * blk.d_out + (t if blk.sparse else t * blk.d_in)
    if blk.sparse:
        n += 2 * k * t * blk.d_out  # the per-token rows of the per-sample gradients
    elif t > 1:
        n += 2 * k * blk.size  # per-sample gradients of a weight-shared layer
    return n
