"""The last-layer structure: the full curvature over the final Dense layer's weights only, every
other weight held at its trained value (MATH.md, "Structures"; Daxberger et al. 2021).

The final Dense layer computes f = act(z), z = φ̃ᵀ W̃ with φ̃ = [φ, 1] its (bias-augmented) input
features, φ = the output of the rest of the network. With its weights w̃ = W̃ flattened row-major
(kernel (D, K) then bias (K,): the package order restricted to this layer), z is linear in w̃,
∂z_k/∂w̃_(i,l) = φ̃_i δ_kl, i.e. ∂z/∂w̃ = φ̃ᵀ ⊗ I_K, and so

    C = Σ_n (φ̃_n φ̃_nᵀ) ⊗ M_n,     M_n = D_nᵀ Λ_n D_n     (GGN, D_n = ∂f/∂z, Λ_n = L_n L_nᵀ)
                                    M_n = ∂²E_n/∂z_n²       (exact Hessian of E_D in w̃)

in closed form (no Jacobian by autodiff over the network; for a linear output layer D_n = I and
both curvatures coincide; with the squared error too, M_n = I and C = (Σ_n φ̃_n φ̃_nᵀ) ⊗ I_K). C has P_last = (D + 1) K rows; it is eigen-decomposed once, and
the predictive is J(x) A⁻¹ J(x)ᵀ with J(x) V = D(x) (φ̃(x)ᵀ ⊗ I) V.

The posterior covers the last layer only: ``n_params`` is P_last and ``posterior_weights``
its weights (for E_W in the evidence). When only the last layer is trainable this is exactly
``structure="full"``.

The features are captured by recording the layer's input during a traced forward pass, so
Sequential, functional and subclassed models all work; the structure refuses a model whose
output is not the output of its last Dense layer (e.g. a separate ``Activation`` after it).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import check_inputs, n_samples, take
from sigma._linalg import eigh
from sigma.curvature.accumulate import (
    as_batches,
    batch_size_for,
    compiled,
    first_samples,
    is_dataset,
)
from sigma.curvature.engine import _spec_key, engine, flat_outputs
from sigma.memory import activation_elements, last_dense_size
from sigma.structures.full import Full


def final_dense(model) -> keras.layers.Dense:
    """The Dense layer producing the model output (the last Dense layer with trainable weights).

    Raises ValueError when there is none or when it does not produce the output.
    """
    layers = model._flatten_layers(include_self=False, recursive=True)
    dense = [la for la in layers if isinstance(la, keras.layers.Dense)]
    if not dense:
        raise ValueError(
            "structure='last_layer' needs a model whose final layer is a keras Dense layer"
        )
    layer = dense[-1]
    if not layer.trainable_variables:
        raise ValueError(
            f"structure='last_layer': the final Dense layer {layer.name!r} has no trainable "
            "weights (layer.trainable is False)"
        )
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"structure='last_layer' does not support LoRA/quantised layer {layer.name!r}"
        )
    return layer


class _Recorder:
    """Record a layer's input and output while a forward pass is traced (patched ``call``)."""

    def __init__(self, layer):
        self.layer, self.inputs, self.outputs = layer, [], []

    def __enter__(self):
        layer = self.layer
        self._own = layer.__dict__.get("call")
        original = layer.call

        def call(*args, **kwargs):
            self.inputs.append(args[0] if args else kwargs["inputs"])
            out = original(*args, **kwargs)
            self.outputs.append(out)
            return out

        object.__setattr__(layer, "call", call)
        return self

    def __exit__(self, *exc):
        if self._own is None:
            object.__delattr__(self.layer, "call")
        else:  # pragma: no cover - a layer with its own instance-level call
            object.__setattr__(self.layer, "call", self._own)
        return False


def _features_function(model, layer):
    """Traceable: x_b -> (φ (B, D), f (B, K), the layer's output), φ the input of ``layer``,
    f the model output flattened per sample."""

    def features(xb):
        with _Recorder(layer) as rec:
            out = model(xb, training=False)
        if len(rec.inputs) != 1:
            raise ValueError(
                f"structure='last_layer': the final Dense layer {layer.name!r} is called "
                f"{len(rec.inputs)} times in a forward pass; it must be called exactly once"
            )
        phi, dense_out = rec.inputs[0], rec.outputs[0]
        if phi.shape.rank != 2:
            raise ValueError(
                f"structure='last_layer': the final Dense layer {layer.name!r} acts on inputs of "
                f"shape {phi.shape}; it must act on vectors (batch, features)"
            )
        return phi, flat_outputs(out), dense_out

    return features


class LastLayer(Full):
    """The exact curvature over the final Dense layer's kernel and bias; other weights fixed."""

    name = "last_layer"
    curvatures = ("ggn", "hessian")
    streaming = True
    per_output_beta = False
    can_clip = True
    memory_summary = "a P_last×P_last matrix over the final Dense layer"

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=False):
        lik = likelihoods.get(likelihood)
        eng = engine(model)
        layer = final_dense(model)
        self.layer_name = layer.name
        self._kernel_index = _kernel_position(model, layer)
        kernel = layer.kernel.numpy().astype(np.float64)
        bias = None if layer.bias is None else layer.bias.numpy().astype(np.float64)
        trainable = {id(v) for v in layer.trainable_variables}
        if id(layer.kernel) not in trainable or (
            bias is not None and id(layer.bias) not in trainable
        ):
            raise ValueError(
                f"structure='last_layer': the kernel and bias of {layer.name!r} must both be trainable"
            )
        d, k = kernel.shape
        self._d1, self._k = d + (bias is not None), k
        self.n_params = self._d1 * k
        self._w = np.concatenate([kernel.ravel()] + ([] if bias is None else [bias]))
        self._layer = layer
        self._check_output(eng, layer, first_samples(x, 2))
        identity = lik.has_beta and _is_linear(layer.activation)
        n = 1 if is_dataset(x) else n_samples(x)
        per_sample = (self._d1 if identity else self._d1 * k * k) + activation_elements(model)
        data = as_batches(
            x,
            y if curvature == "hessian" else None,
            batch_size=batch_size_for(n, per_sample, batch_size),
        )
        if curvature == "hessian" and len(data.element_spec) < 2:
            raise ValueError("curvature='hessian' needs the targets y")
        key = ("last_layer", id(layer), curvature, lik.key, identity)
        body = _curvature_body(eng, layer, lik, curvature, identity)
        c = eng.accumulator(
            key, body, data, strategy=strategy, progress=progress, desc="last layer"
        )()
        c = 0.5 * (c + c.T)
        if identity:  # eigenpairs of S ⊗ I_K: those of S, each K times, vectors V ⊗ I_K
            s_eig, s_vecs = eigh(c)
            self._set_matrix(np.kron(c, np.eye(k)))
            self._eig, self._vecs = np.repeat(s_eig, k), np.kron(s_vecs, np.eye(k))
        else:
            self._set_matrix(c)
            self._eig, self._vecs = eigh(c)
        self.psd = curvature == "ggn"
        return self

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        d1, kk = last_dense_size(model)
        pl = d1 * kk
        per = d1 * kk * kk + activation_elements(model)
        return 4 * pl * pl * 8 + batch_size_for(n_data, per, batch_size) * per * 8

    def _check_output(self, eng, layer, example):
        """The final Dense layer's output must be the model's output (checked once per model,
        layer and input shape, eagerly on two samples)."""
        example = check_inputs(eng.model, example)
        key = ("last_layer-output-check", id(layer), _spec_key(eng.spec(example)))
        if eng.store.get(key):
            return
        example = tf.nest.map_structure(tf.constant, example)
        _, f, dense_out = _features_function(eng.model, layer)(example)
        try:
            n_outputs = len(eng.model.outputs or [None])
        except (AttributeError, ValueError):  # a subclassed model declares none
            n_outputs = 1
        if int(tf.size(dense_out)) != int(tf.size(f)) or n_outputs > 1:
            raise ValueError(
                f"structure='last_layer' needs a model whose whole output is its final Dense "
                f"layer's; this model's output ({n_outputs} output(s), {int(f.shape[-1])} values "
                f"per sample) is not that of {self.layer_name!r}: use another structure "
                "(diag, kfac, lowrank or full)"
            )
        dense_out = tf.reshape(dense_out, tf.shape(f))
        if dense_out.shape != f.shape or not np.array_equal(dense_out.numpy(), f.numpy()):
            raise ValueError(
                f"structure='last_layer': the model's output is not the output of its final "
                f"Dense layer {self.layer_name!r} (a layer after it, e.g. a separate Activation?); "
                "fold the activation into the Dense layer or use another structure"
            )
        eng.store[key] = True

    @property
    def eigenvalues(self) -> np.ndarray:
        return self._eig

    def posterior_weights(self, model) -> np.ndarray:
        """The weights the posterior covers: the final layer's kernel (row-major) and bias."""
        return self._w

    def posterior_variables(self, model) -> list:
        layer = getattr(self, "_layer", None) or final_dense(model)
        return [layer.kernel] + ([] if layer.bias is None else [layer.bias])

    def state(self):
        arrays, info = super().state()
        arrays.update(eigenvalues=self._eig, vectors=self._vecs, weights=self._w)
        info.update(kernel=self._kernel_index, d1=self._d1, k=self._k)
        return arrays, info

    def restore(self, model, arrays, info):
        super().restore(model, arrays, info)
        layer = final_dense(model)
        position = _kernel_position(model, layer)
        if position != info["kernel"]:  # positions, not names: Keras numbers names anew
            raise ValueError(
                "the saved last-layer structure covers another layer than the model's final "
                f"Dense layer {layer.name!r} (kernel at position {position} of the trainable "
                f"variables, saved {info['kernel']})"
            )
        self._kernel_index = position
        self.layer_name, self._layer = layer.name, layer
        self._d1, self._k, self._w = int(info["d1"]), int(info["k"]), arrays["weights"]
        return self

    def export(self, model, alpha, beta):
        return {"factor": self._inverse_factor(alpha, beta)}, {"kernel": self._kernel_index}

    @staticmethod
    def graph_variance(model, spec, arrays, x):
        layer = final_dense(model)
        js = _project(engine(model), layer, x, arrays["factor"])
        return tf.reduce_sum(tf.square(js), axis=-1)

    def output_blocks(self, model, x, *, batch_size=None):  # pragma: no cover - declared off
        raise NotImplementedError

    def reweighted(self, matrix):  # pragma: no cover - declared off
        raise NotImplementedError

    # -- predictive -----------------------------------------------------------------------------
    def _jacobian_batches(self, model, x, batch_size):
        """Yield J(x) per batch, (B, K, P_last) float64: the projection with V = I."""
        yield from self._projected(model, x, batch_size, np.eye(self.n_params))

    def _projected(self, model, x, batch_size, vectors=None):
        """Yield J(x) V per batch, (B, K, P_last) float64; one traced graph per model and input
        shape (V is an argument; default the eigenvectors of C)."""
        eng = engine(model)
        x = check_inputs(model, x)
        layer = self._layer
        spec = eng.spec(x)
        proj = eng.function(
            ("last_layer-projection", id(layer), _spec_key(spec)),
            lambda: _projection_function(eng, layer, spec),
        )
        v = tf.constant(self._vecs if vectors is None else vectors)
        n = n_samples(x)
        bs = batch_size_for(n, 2 * self._k * self.n_params, batch_size)
        for start in range(0, n, bs):
            yield proj(take(x, slice(start, start + bs)), v).numpy()


def _kernel_position(model, layer) -> int:
    """The position of a layer's kernel among the model's trainable variables."""
    return [id(v) for v in model.trainable_variables].index(id(layer.kernel))


def _is_linear(act) -> bool:
    return act is None or act is keras.activations.linear


def _layer_weights(layer):
    """(kernel (D, K), bias (K,) or None) of a Dense layer as float64 tensors, read from its
    variables when the graph runs."""
    kernel = tf.cast(tf.convert_to_tensor(layer.kernel.value), tf.float64)
    bias = (
        None if layer.bias is None else tf.cast(tf.convert_to_tensor(layer.bias.value), tf.float64)
    )
    return kernel, bias


def _augmented_features(eng, layer, xb):
    """φ̃ = [φ, 1] (B, D1) float64 (no 1 without a bias) and z = φ W + b (B, K)."""
    phi, _, _ = _features_function(eng.model, layer)(xb)
    phi = tf.cast(phi, tf.float64)
    kernel, bias = _layer_weights(layer)
    z = tf.matmul(phi, kernel) + (0.0 if bias is None else bias)
    if bias is not None:
        phi = tf.concat([phi, tf.ones_like(phi[:, :1])], axis=1)
    return phi, z


def _curvature_body(eng, layer, lik, curvature, identity):
    """Per-batch C of the last layer: Σ_n (φ̃_n φ̃_nᵀ) ⊗ M_n, or Σ φ̃ φ̃ᵀ when M_n = I."""
    k = int(layer.kernel.shape[-1])

    def body(batch):
        xb = tf.nest.map_structure(lambda t: tf.cast(t, eng.dtype), batch[0])
        phi, z = _augmented_features(eng, layer, xb)
        if identity:  # squared error, linear output: M_n = I, C = (Σ φ̃ φ̃ᵀ) ⊗ I_K
            return tf.matmul(phi, phi, transpose_a=True)
        yb = None if curvature == "ggn" else batch[1]
        m = _curvature_blocks(layer.activation, z, yb, lik, k)
        d1 = phi.shape[1]
        y4 = phi[:, :, None, None] * m[:, None, :, :]  # φ̃_nj M_nkl, (B, D1, K, K)
        c4 = tf.einsum("ni,njkl->ikjl", phi, y4)  # Σ_n φ̃_ni φ̃_nj M_nkl
        return tf.reshape(c4, (d1 * k, d1 * k))

    return body


def _curvature_blocks(act, z, yb, lik, k):
    """M_n (B, K, K): D_nᵀ Λ_n D_n (GGN, yb None) or ∂²E_n/∂z_n² (Hessian)."""
    linear = _is_linear(act)
    if yb is None:
        if linear:
            f, dmat = z, None
        else:
            with tf.GradientTape() as tape:
                tape.watch(z)
                f = act(z)
            dmat = tape.batch_jacobian(f, z)  # D_n = ∂f/∂z, (B, K, K)
        root = lik.hessian_sqrt(f)
        if root is None and dmat is None:
            return tf.eye(k, batch_shape=[tf.shape(z)[0]], dtype=z.dtype)
        if root is None:
            r = dmat
        elif dmat is None:
            r = tf.transpose(root, (0, 2, 1))
        else:
            r = tf.einsum("bkj,bkl->bjl", root, dmat)  # R_n = L_nᵀ D_n
        return tf.einsum("bjk,bjl->bkl", r, r)  # R_nᵀ R_n
    yb = tf.cast(yb, tf.float64)
    with tf.GradientTape() as outer:
        outer.watch(z)
        with tf.GradientTape() as inner:
            inner.watch(z)
            e = lik.data_error(z if linear else act(z), yb)
        g = inner.gradient(e, z)
    m = outer.batch_jacobian(g, z)
    return 0.5 * (m + tf.transpose(m, (0, 2, 1)))


def _project(eng, layer, xb, v):
    """Traceable: J(x_b) V, (B, K, P_last) float64, for V (P_last, m)."""
    k = int(layer.kernel.shape[-1])
    phi, z = _augmented_features(eng, layer, xb)
    v4 = tf.reshape(v, (tf.shape(phi)[1], k, -1))  # V[(i, l), m] → (i, l, m)
    q = tf.einsum("ni,ilm->nlm", phi, v4)  # (φ̃ᵀ ⊗ I) V, (B, K, P_last)
    if _is_linear(layer.activation):
        return q
    with tf.GradientTape() as tape:
        tape.watch(z)
        f = layer.activation(z)
    return tf.einsum("nkl,nlm->nkm", tape.batch_jacobian(f, z), q)


def _projection_function(eng, layer, spec):
    """Traced: (x_b, V (P_last, P_last)) -> J(x_b) V, (B, K, P_last) float64."""
    return compiled(
        lambda xb, v: _project(eng, layer, xb, v), [spec, tf.TensorSpec([None, None], tf.float64)]
    )
