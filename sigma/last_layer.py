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
from sigma._checks import model_dtype
from sigma.distribute import (
    Accumulator,
    as_dataset,
    batch_size_for,
    first_samples,
    is_dataset,
)
from sigma.memory import activation_elements
from sigma.structures import Eigenbasis


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
        return phi, tf.reshape(out, (tf.shape(out)[0], -1)), dense_out

    return features


class LastLayer(Eigenbasis):
    """The exact curvature over the final Dense layer's kernel and bias; other weights fixed."""

    name = "last_layer"
    streaming = True

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=False):
        lik = likelihoods.get(likelihood)
        layer = final_dense(model)
        self.layer_name = layer.name
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
        self._kernel, self._bias, self._activation = kernel, bias, layer.activation
        dtype = model_dtype(model)
        features = _features_function(model, layer)
        example = first_samples(x, 2)
        self._features = features
        self._spec = tf.TensorSpec([None, *example.shape[1:]], dtype)
        self._check_output(tf.cast(example, dtype))

        kernel_t, bias_t = tf.constant(kernel), None if bias is None else tf.constant(bias)
        d1 = self._d1

        act = self._activation
        identity = lik.has_beta and (act is None or act is keras.activations.linear)

        def body(batch):
            phi, _, _ = features(tf.cast(batch[0], dtype))
            phi = self._augment(tf.cast(phi, tf.float64))  # (B, D1)
            if identity:  # squared error, linear output: M_n = I, C = (Σ φ̃ φ̃ᵀ) ⊗ I_K
                return tf.matmul(phi, phi, transpose_a=True)
            z = tf.matmul(phi[:, :d], kernel_t) + (0.0 if bias_t is None else bias_t)
            m = self._curvature_blocks(z, None if curvature == "ggn" else batch[1], lik)
            y4 = phi[:, :, None, None] * m[:, None, :, :]  # φ̃_nj M_nkl, (B, D1, K, K)
            c4 = tf.einsum("ni,njkl->ikjl", phi, y4)  # Σ_n φ̃_ni φ̃_nj M_nkl
            return tf.reshape(c4, (d1 * k, d1 * k))

        n = 1 if is_dataset(x) else len(x)
        per_sample = (d1 if identity else d1 * k * k) + activation_elements(model)
        bs = batch_size_for(n, per_sample, batch_size)
        data = as_dataset(x, y if curvature == "hessian" else None, batch_size=bs)
        if curvature == "hessian" and len(data.element_spec) < 2:
            raise ValueError("curvature='hessian' needs the targets y")
        c = Accumulator(body, data, strategy=strategy, progress=progress, desc="last layer")()
        if identity:  # eigenpairs of S ⊗ I_K: those of S, each K times, vectors V ⊗ I_K
            s_eig, s_vecs = np.linalg.eigh(0.5 * (c + c.T))
            self.matrix = np.kron(0.5 * (c + c.T), np.eye(k))
            self._eig, self._vecs = np.repeat(s_eig, k), np.kron(s_vecs, np.eye(k))
        else:
            self.matrix = 0.5 * (c + c.T)
            self._eig, self._vecs = np.linalg.eigh(self.matrix)
        self._proj = None
        return self

    def _augment(self, phi):
        if self._bias is None:
            return phi
        return tf.concat([phi, tf.ones_like(phi[:, :1])], axis=1)

    def _check_output(self, example):
        """The final Dense layer's output must be the model's output."""
        _, f, dense_out = self._features(example)
        dense_out = tf.reshape(dense_out, tf.shape(f))
        if dense_out.shape != f.shape or not np.array_equal(dense_out.numpy(), f.numpy()):
            raise ValueError(
                f"structure='last_layer': the model's output is not the output of its final "
                f"Dense layer {self.layer_name!r} (a layer after it, e.g. a separate Activation?); "
                "fold the activation into the Dense layer or use another structure"
            )

    def _curvature_blocks(self, z, yb, lik):
        """M_n (B, K, K): D_nᵀ Λ_n D_n (GGN, yb None) or ∂²E_n/∂z_n² (Hessian)."""
        act = self._activation
        linear = act is None or act is keras.activations.linear
        if yb is None:
            if linear:
                f, dmat = z, None
            else:
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    f = act(z)
                dmat = tape.batch_jacobian(f, z)  # D_n = ∂f/∂z, (B, K, K)
            root = lik.hessian_sqrt(f)
            r = (
                dmat
                if root is None
                else (
                    tf.transpose(root, (0, 2, 1))
                    if dmat is None
                    else tf.einsum("bkj,bkl->bjl", root, dmat)
                )
            )  # R_n = L_nᵀ D_n
            if r is None:
                return tf.eye(self._k, batch_shape=[tf.shape(z)[0]], dtype=z.dtype)
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

    @property
    def eigenvalues(self) -> np.ndarray:
        return self._eig

    def posterior_weights(self, model) -> np.ndarray:
        """The weights the posterior covers: the final layer's kernel (row-major) and bias."""
        return self._w

    def clip_negative(self):
        self._eig = np.maximum(self._eig, 0.0)
        self.matrix = (self._vecs * self._eig) @ self._vecs.T

    # -- predictive -----------------------------------------------------------------------------
    def _projection(self, model):
        """Traced once: x_b -> J(x_b) V, (B, K, P_last), float64."""
        if self._proj is None:
            d, k, d1 = self._kernel.shape[0], self._k, self._d1
            v4 = tf.constant(self._vecs.reshape(d1, k, -1))  # V[(i, l), m] → (i, l, m)
            kernel_t = tf.constant(self._kernel)
            bias_t = None if self._bias is None else tf.constant(self._bias)
            act = self._activation
            linear = act is None or act is keras.activations.linear
            features = self._features

            @tf.function(input_signature=[self._spec], autograph=False)
            def proj(xb):
                phi, _, _ = features(xb)
                phi = self._augment(tf.cast(phi, tf.float64))
                q = tf.einsum("ni,ilm->nlm", phi, v4)  # (φ̃ᵀ ⊗ I) V, (B, K, P_last)
                if linear:
                    return q
                z = tf.matmul(phi[:, :d], kernel_t) + (0.0 if bias_t is None else bias_t)
                with tf.GradientTape() as tape:
                    tape.watch(z)
                    f = act(z)
                return tf.einsum("nkl,nlm->nkm", tape.batch_jacobian(f, z), q)

            self._proj = proj
        return self._proj

    def _projected(self, model, x, batch_size):
        proj = self._projection(model)
        bs = batch_size_for(len(x), 2 * self._k * self.n_params, batch_size)
        for start in range(0, len(x), bs):
            yield proj(x[start : start + bs]).numpy()
