"""One curvature engine per model: every traced function sigma runs, built once and reused.

The curvature of the summed data error (docs/math.md) at the model's current weights,

    E_D = ½ Σ_n Σ_k (f_k(x_n; w) − t_nk)²              (summed, not averaged)
    G   = Σ_n J_nᵀ Λ_n J_n,   J_n = ∂f(x_n)/∂w (K×P)    (generalised Gauss–Newton; Λ = I for
                                                          regression, the softmax Hessian else)
    H   = ∇² E_D                                         (exact Hessian, nested tapes)

is computed from a handful of per-batch graphs, written once here:

* ``forward(w, x)`` — the model as a pure function of the flat weight vector w (order:
  ``model.trainable_variables`` flattened row-major, concatenated; :mod:`sigma.params`);
* ``jacobian(w, x)`` — f (B, K) and the per-sample Jacobian J (B, K, P);
* products ``C V`` with a block of vectors V (P, m) for C = G (through J when it is small, or
  matrix-free: J V by forward mode, Jᵀ U by reverse mode, both vectorised over the m columns)
  and C = H (reverse over reverse, vectorised over the columns);
* the dense C: Σ_n (Lᵀ J_n)ᵀ (Lᵀ J_n) for G; H I in column chunks for the Hessian;
* the data summary (N, E_D, E_D per output) and the outputs f(x).

Every structure, the dataset/strategy accumulation and :func:`sigma.hessian`,
:func:`sigma.gauss_newton`, :func:`sigma.output_jacobian` use these. The layer-wise capture of
inputs and output sensitivities (:mod:`sigma.curvature.capture`) keeps its traced functions in
the same cache.

**Compiled once per model.** :func:`engine` returns the model's :class:`Engine`, cached on the
model and rebuilt when its set of variables changes (a layer frozen or added). Its graphs take
the data as arguments with a batch dimension of ``None`` and read the weights from the model's
variables when they run, so a second ``Laplace`` on the same model, every ``predict``, a scan
over α or β and a refit after more training (the evidence callback) reuse them: nothing is
traced per call, per object or per batch.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import tensorflow as tf

from sigma import keras_compat
from sigma import likelihoods as _likelihoods
from sigma._checks import model_dtype
from sigma._linalg import one_blas_thread
from sigma.curvature import capture as layer_capture
from sigma.curvature import vectorize
from sigma.curvature.accumulate import Accumulator, ArrayBatches, batch_size_for, compiled
from sigma.curvature.capture import flat_outputs
from sigma.outputs import OutputLayout
from sigma.params import num_params

ZERO = tf.UnconnectedGradients.ZERO
SMALL_K = 4  # up to this many outputs, J per sample is K gradients (cheaper to trace than a
# vectorised jacobian inside the per-sample vectorisation; above it, slower)
ROW_CHUNK = 128  # columns of H per product when the dense Hessian is accumulated
JACOBIAN_ROUTE = 2**18  # GGN products through per-sample Jacobians up to this K·P
CAPTURE_CACHE = 2**30  # bytes of layer inputs/sensitivities kept across product passes


def engine(model, selection=None) -> Engine:
    """The :class:`Engine` of ``model``: built on first use, cached on the model, and rebuilt
    when the model's variables change (e.g. ``layer.trainable`` toggled).

    ``selection`` (a :class:`sigma.weights.Selection`): the engine of those weights only — w is
    then the (P_s,) vector of the selected weights, every other weight read from its variable
    as a constant; kept by the model's engine, so it is built once per model and selection."""
    current = model.__dict__.get("_sigma_engine")
    if current is None or current.signature != _signature(model):
        current = Engine(model)
        object.__setattr__(model, "_sigma_engine", current)  # not a tracked Keras attribute
    if selection is None or selection.full:
        return current
    return current.restricted(selection)


def _signature(model) -> tuple:
    # variables are never reshaped: their identities say whether the set changed
    return (
        tuple(map(id, model.trainable_variables)),
        tuple(map(id, model.non_trainable_variables)),
    )


class Engine:
    """The traced curvature functions of one model (see the module docstring).

    Attributes: ``dtype`` (of the trainable weights), ``n_params`` (P), ``store`` (the traced
    functions by key; :class:`~sigma.curvature.accumulate.Accumulator` keeps its steps there).
    The engine holds the model weakly: it lives on the model and dies with it.
    """

    selection = None  # every trainable weight

    def __init__(self, model):
        self._model = weakref.ref(model)
        self.signature = _signature(model)
        self.dtype = model_dtype(model)
        self.n_params = num_params(model)
        self.sizes = [int(np.prod(v.shape)) for v in model.trainable_variables]
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        # Model.__call__ drops `training` for a call() without it; stateless_call does not.
        self._kwargs = {"training": False} if keras_compat.call_has_training_arg(model) else {}
        self.store: dict = {}
        # pfor cannot vectorise a while loop's gradient: loop over the samples from the start
        self.vectorizing: dict = {"pfor": not keras_compat.runs_time_loops(model)}
        self._k: dict = {}

    @property
    def model(self):
        model = self._model()
        if model is None:  # pragma: no cover - the engine lives on the model
            raise RuntimeError("the model of this curvature engine no longer exists")
        return model

    def spec(self, x):
        """Input signature of batches of x: its per-sample shape, a batch dimension of None."""
        return tf.nest.map_structure(
            lambda a: tf.TensorSpec([None, *np.shape(a)[1:]], self.dtype), x
        )

    def function(self, key, build):
        """The traced function cached under ``key``, built by ``build()`` on first use."""
        fn = self.store.get(key)
        if fn is None:
            fn = self.store[key] = build()
        return fn

    def accumulator(self, key, body, data, **kwargs) -> Accumulator:
        """An :class:`Accumulator` over ``data`` whose traced step is cached under ``key``."""
        return Accumulator(body, data, store=self.store, key=key, **kwargs)

    # -- traceable pieces ---------------------------------------------------------------------
    def weights(self) -> tf.Tensor:
        """The current weights as one (P,) tensor, read from the variables when the graph runs."""
        return tf.concat(
            [
                tf.reshape(tf.convert_to_tensor(v.value), [-1])
                for v in self.model.trainable_variables
            ],
            axis=0,
        )

    def flat_weights(self) -> np.ndarray:
        """The current weights (P,) in the model's dtype, read by one traced call (reading
        each Keras variable from Python costs a dispatch per variable)."""
        fn = self.function(("weights",), lambda: compiled(self.weights, []))
        return fn().numpy()

    def unflatten(self, w) -> list[tf.Tensor]:
        """The values of ``model.trainable_variables`` with the weights w (P,) in place."""
        parts = tf.split(w, self.sizes)
        return [tf.reshape(p, s) for p, s in zip(parts, self.shapes, strict=True)]

    def restricted(self, selection) -> SubsetEngine:
        """The engine of the weights ``selection`` picks, built once and kept here."""
        key = ("subset", selection.key)
        sub = self.store.get(key)
        if sub is None:
            sub = self.store[key] = SubsetEngine(self, selection)
        return sub

    def forward(self, w, x) -> tf.Tensor:
        """f(w, x) (B, K) in inference mode, a pure function of the flat weights w
        (``stateless_call``: differentiable in w; normalisation statistics read as they are)."""
        model = self.model
        non_trainable = [v.value for v in model.non_trainable_variables]
        out, _ = model.stateless_call(self.unflatten(w), non_trainable, x, **self._kwargs)
        return flat_outputs(out)

    def disconnected(self, x) -> list[int]:
        """Indices into ``model.trainable_variables`` of the variables no output has a gradient
        for (an op without a registered gradient in a layer's call, a layer whose output is not
        used): one eager backward pass on the few samples ``x``, once per engine."""
        found = self.store.get(("disconnected",))
        if found is None:
            model = self.model
            values = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            with tf.GradientTape() as tape:
                tape.watch(values)
                out, _ = model.stateless_call(values, frozen, x, **self._kwargs)
                total = tf.reduce_sum(flat_outputs(out))
            grads = tape.gradient(total, values)
            found = self.store[("disconnected",)] = [i for i, g in enumerate(grads) if g is None]
        return list(found)

    def jacobian(self, w, x):
        """f (B, K) and J (B, K, P), one sample at a time (``tf.vectorized_map`` over a (K, P)
        jacobian): O(B·K·P). A jacobian of the whole batch output would back-propagate each of
        the B·K outputs through all B samples, O(B²·K·P).

        Vectorising the jacobian is the costliest part of tracing a graph (pfor rewrites every
        op of the backward pass), so it is traced once per engine and input structure, as a
        function of its own that every graph needing J calls: the GGN, the predictive
        variance, the low-rank projections, the served model. That is for graphs traced for
        any batch size (x's batch dimension None); a fixed batch size (an eager call, or a
        call inside the user's own ``tf.vectorized_map``, where TensorFlow cannot vectorise a
        function traced for a batch of None) traces it inline, as does a tf.distribute
        strategy (a function traced in one replica's context would read that replica's
        variables)."""
        if tf.distribute.has_strategy() or tf.nest.flatten(x)[0].shape[0] is not None:
            return self._jacobian(w, x)
        spec = tf.nest.map_structure(lambda t: tf.TensorSpec([None, *t.shape[1:]], t.dtype), x)
        w_spec = tf.TensorSpec(w.shape, w.dtype)
        fn = self.function(
            ("jacobian-fn", spec_key(spec), spec_key(w_spec)),
            lambda: compiled(self._jacobian, [w_spec, spec]),
        )
        return fn(w, x)

    def _jacobian(self, w, x):
        def one(xn):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(w)
                f = self.forward(w, tf.nest.map_structure(lambda t: t[None], xn))[0]
                k = f.shape[0]
                rows = [f[i] for i in range(k)] if k is not None and k <= SMALL_K else None
            if rows is None:
                j = vectorize.jacobian(tape, f, w, unconnected_gradients=ZERO)
            else:  # a few outputs: one gradient each, no pfor inside the per-sample pfor
                j = tf.stack([tape.gradient(r, w, unconnected_gradients=ZERO) for r in rows])
            return f, j

        def signature():  # for the loop over samples where pfor cannot convert the model
            k = self.forward(w, tf.nest.map_structure(lambda t: t[:1], x)).shape[1]
            return tf.TensorSpec([k], w.dtype), tf.TensorSpec([k, self.n_params], w.dtype)

        return vectorize.per_sample(one, x, signature, memo=self.vectorizing)

    def pseudo_jacobian(self, lik, f, j):
        """Lᵀ J per sample, (B, K', P) float64, with Λ = L Lᵀ the likelihood's output Hessian."""
        return lik.pseudo(tf.cast(f, tf.float64), tf.cast(j, tf.float64))

    # -- per-batch bodies ---------------------------------------------------------------------
    def _summary_body(self, lik, groups):
        def body(batch):
            x, y = batch
            f = tf.cast(self.forward(self.weights(), x), tf.float64)
            t = tf.cast(y, tf.float64)
            count = tf.cast(tf.shape(f)[0], tf.float64)
            per_output = 0.5 * tf.reduce_sum(tf.square(f - t), axis=0)
            square = tf.reduce_sum(tf.square(f))
            e_d = tf.cast(lik.data_error(f, t), tf.float64)
            per_group = tf.cast(lik.group_errors(f, t, groups), tf.float64)
            return count, e_d, per_output, square, per_group

        return body

    def _gradient_body(self, lik, groups):
        def body(batch, beta):
            x, y = batch
            w = self.weights()
            with tf.GradientTape() as tape:
                tape.watch(w)
                f = tf.cast(self.forward(w, x), tf.float64)
                e = tf.cast(lik.group_errors(f, tf.cast(y, tf.float64), groups), tf.float64)
                total = tf.reduce_sum(beta * e)
            grad = tape.gradient(total, w, unconnected_gradients=ZERO)
            return total, tf.cast(grad, tf.float64)

        return body

    def _ggn_dense_body(self, lik, columns):
        p = self.n_params

        def gram(lj):
            lj = tf.reshape(lj, (-1, p))
            return tf.matmul(lj, lj, transpose_a=True)

        def body(batch):
            f, j = self.jacobian(self.weights(), batch[0])
            lj = self.pseudo_jacobian(lik, f, j)  # (B, K', P)
            if columns is None:
                return gram(lj)
            return tf.stack([gram(tf.gather(lj, c, axis=1)) for c in columns])

        return body

    def _ggn_product_body(self, lik, route):
        """(batch, V (P, m)) -> G_batch V (P, m) float64."""

        def through_jacobian(batch, v):
            f, j = self.jacobian(self.weights(), batch[0])
            lj = self.pseudo_jacobian(lik, f, j)  # Lᵀ J (B, K, P)
            u = tf.einsum("bkp,pm->bkm", lj, tf.cast(v, tf.float64))
            return tf.einsum("bkp,bkm->pm", lj, u)

        def matrix_free(batch, v):
            w, x = self.weights(), batch[0]

            def jvp(vi):
                with tf.autodiff.ForwardAccumulator(w, vi) as acc:
                    f = self.forward(w, x)
                return acc.jvp(f, unconnected_gradients=ZERO)

            with vectorize.converting():
                jv = tf.vectorized_map(jvp, tf.transpose(v))  # (m, B, K)
            with tf.GradientTape() as tape:
                tape.watch(w)
                f = self.forward(w, x)
                fixed = tf.stop_gradient(f)
                jv = tf.transpose(jv, (1, 2, 0))  # (B, K, m)
                jv = lik.root(fixed, lik.pseudo(fixed, jv))  # Λ (J v) = L (Lᵀ J v)
                s = tf.einsum("bk,bkm->m", f, tf.stop_gradient(jv))
            jt = vectorize.jacobian(tape, s, w, unconnected_gradients=ZERO)
            return tf.transpose(tf.cast(jt, tf.float64))

        return through_jacobian if route == "jacobian" else matrix_free

    def _layerwise_product_body(self, lik, plan):
        """(batch, V (P, m)) -> G_batch V (P, m) float64, from the layer-wise capture: two
        layer-sized products per vector, no Jacobian formed (:func:`layers.product`)."""
        model = self.model

        def body(batch, v):
            cap = layer_capture.capture(model, plan, batch[0], likelihood=lik)
            return tf.cast(
                layer_capture.product(plan, cap, tf.cast(v, cap.outputs.dtype)), tf.float64
            )

        return body

    def _hessian_product_body(self, lik):
        """((x, y), V (P, m)) -> H_batch V (P, m) float64: the jacobian (pfor over the m
        columns) of Vᵀ ∇E_D, i.e. reverse over reverse."""

        def body(batch, v):
            w = self.weights()
            x, y = batch
            with tf.GradientTape() as outer:
                outer.watch(w)
                with tf.GradientTape() as inner:
                    inner.watch(w)
                    e = lik.data_error(self.forward(w, x), y)
                g = inner.gradient(e, w, unconnected_gradients=ZERO)
                gv = tf.linalg.matvec(v, g, transpose_a=True)  # (m,)
            hv = vectorize.jacobian(outer, gv, w, unconnected_gradients=ZERO)
            return tf.transpose(tf.cast(hv, tf.float64))

        return body

    # -- host-side entry points ---------------------------------------------------------------
    def n_outputs(self, x) -> int:
        """K, the number of outputs per sample (all outputs flattened), for inputs like x."""
        key = _shape_key(x)
        if key not in self._k:
            self._k[key] = int(self.outputs(tf.nest.map_structure(lambda a: a[:1], x)).shape[1])
        return self._k[key]

    def output_layout(self, x) -> OutputLayout:
        """The structure of the model's outputs for inputs like x (one eager call, kept)."""
        key = ("layout", _shape_key(x))
        if key not in self.store:
            one = tf.nest.map_structure(lambda a: tf.constant(np.asarray(a[:1])), x)
            layout = OutputLayout.of(self.model(one, training=False))
            names = keras_compat.output_names(self.model)
            if layout.kind == "list" and names and len(set(names)) == len(layout.sizes):
                layout = dataclasses.replace(layout, names=tuple(names))  # the output layers'
            self.store[key] = layout
        return self.store[key]

    def outputs(self, x, *, batch_size: int = 4096) -> np.ndarray:
        """f(x) at the current weights in inference mode, (N, K) float64, computed in the
        model's dtype by one traced forward pass per batch."""
        spec = self.spec(x)
        fn = self.function(
            ("outputs", spec_key(spec)),
            lambda: compiled(lambda xb: self.forward(self.weights(), xb), [spec]),
        )
        return np.concatenate(
            [np.asarray(fn(b[0]), np.float64) for b in ArrayBatches((x,), batch_size)]
        )

    def jacobians(self, x, *, batch_size: int | None = None, extra: int = 1):
        """Yield (f (B, K), J (B, K, P)) NumPy arrays (model dtype) for batches of x; the batch
        holds at most ``ELEMENT_BUDGET / extra`` Jacobian elements unless ``batch_size`` is set."""
        spec = self.spec(x)
        fn = self.function(
            ("jacobian", spec_key(spec)),
            lambda: compiled(lambda xb: self.jacobian(self.weights(), xb), [spec]),
        )
        n = len(tf.nest.flatten(x)[0])
        k = self.n_outputs(x)
        bs = batch_size_for(n, extra * k * self.n_params, batch_size)
        for batch in ArrayBatches((x,), bs):
            f, j = fn(batch[0])
            yield f.numpy(), j.numpy()

    def summary(self, data, likelihood, groups=None):
        """(N, E_D, E_D per output (K,), Σ f², E_h per precision group (G,)) over ``(x, y)``
        batches; E_D is the likelihood's summed data term (½ Σ (f − t)² for regression, the
        cross-entropy for classification), E_h its part on group h's outputs."""
        lik = _likelihoods.get(likelihood)
        if groups is None:
            k = int(data.element_spec[1].shape[-1])
            groups = lik.groups(k)
        key = ("summary", lik.key, tuple(groups.outputs.tolist()))
        acc = self.accumulator(key, self._summary_body(lik, groups), data)
        count, e_d, per_output, square, per_group = acc()
        return int(round(float(count))), float(e_d), per_output, float(square), per_group

    def data_gradient(self, data, likelihood, groups, beta, *, progress=None):
        """(Σ_h β_h E_h, its gradient ∇_w (P,)) in float64 at the current weights, summed over
        the ``(x, y)`` batches of ``data`` (one traced step per likelihood and grouping, kept
        here)."""
        lik = _likelihoods.get(likelihood)
        key = ("data gradient", lik.key, tuple(groups.outputs.tolist()))
        acc = self.accumulator(
            key, self._gradient_body(lik, groups), data,
            arg_specs=[tf.TensorSpec([groups.n_groups], tf.float64)], progress=progress,
            desc="gradient",
        )  # fmt: skip
        total, grad = acc(tf.constant(np.asarray(beta, np.float64).reshape(groups.n_groups)))
        return float(total), grad

    def dense(
        self,
        data,
        likelihood,
        curvature: str,
        *,
        strategy=None,
        progress=None,
        row_chunk: int = ROW_CHUNK,
        groups=None,
    ) -> np.ndarray:
        """The (P, P) curvature summed over ``data`` (batches ``(x,)`` for "ggn", ``(x, y)`` for
        "hessian"), float64, symmetric; with ``groups`` (:class:`sigma.likelihoods.Groups` of
        several precision groups, GGN) one (P, P) block per group, (G, P, P)."""
        lik = _likelihoods.get(likelihood)
        columns = None
        if groups is not None and groups.n_groups > 1:
            if curvature != "ggn":
                raise ValueError(
                    "several precision groups (a likelihood per head, one beta per output) need "
                    f"curvature='ggn': the exact Hessian is not split by groups, got {curvature!r}"
                )
            pseudo = lik.pseudo_groups(groups.outputs.size)  # each pseudo-output's group
            columns = [np.flatnonzero(pseudo == g) for g in range(groups.n_groups)]
        if curvature == "ggn" and strategy is None and isinstance(data, ArrayBatches):
            # In-memory batches: Lᵀ J from the graph, Σ (Lᵀ J)ᵀ (Lᵀ J) by BLAS on one thread
            # (1.6 ms against TensorFlow's 4.4 ms for a 300 × 403 block on this machine).
            spec = data.element_spec[0]
            p = self.n_params

            def build():
                def lj(xb):
                    f, j = self.jacobian(self.weights(), xb)
                    return self.pseudo_jacobian(lik, f, j)

                return compiled(lj, [spec])

            fn = self.function(("pseudo_jacobian", lik.key, spec_key(spec)), build)
            parts = [np.arange(0)] if columns is None else columns
            total = np.zeros((len(parts), p, p))
            for batch in data:
                block = fn(batch[0]).numpy()  # (B, K', P)
                with one_blas_thread(), np.errstate(over="ignore", invalid="ignore"):
                    for g, cols in enumerate(parts):  # an overflow is reported by the structure
                        sub = (block if columns is None else block[:, cols]).reshape(-1, p)
                        total[g] += sub.T @ sub
            total = np.stack([_symmetric(t) for t in total])
            return total[0] if columns is None else total
        if curvature == "ggn":
            acc = self.accumulator(
                ("ggn", lik.key, None if columns is None else tuple(map(tuple, columns))),
                self._ggn_dense_body(lik, columns),
                data,
                strategy=strategy,
                progress=progress,
                desc="ggn P×P",
            )
            out = acc()
            return _symmetric(out) if columns is None else np.stack([_symmetric(m) for m in out])
        products = self.products(
            data, lik, "hessian", strategy=strategy, cache=True, progress=progress
        )
        p = self.n_params
        eye = np.eye(p, dtype=self.dtype)
        h = np.concatenate(
            [products(eye[:, s : s + row_chunk]).T for s in range(0, p, row_chunk)], axis=0
        )
        return _symmetric(h)

    def products(
        self,
        data,
        likelihood,
        curvature: str,
        *,
        route="auto",
        strategy=None,
        cache=False,
        progress=None,
        plan_inputs=None,
    ):
        """The product V ↦ C V (V (P, m) or (P,)) summed over ``data``, as a reusable function.

        ``route`` (GGN): "jacobian" forms each batch's (B, K, P) Jacobian; "layerwise" contracts
        the layer-wise capture (:func:`layers.product`; ``plan_inputs``: a few inputs to probe
        the layer plan with); "matrix_free" uses forward and reverse mode vectorised over the
        columns of V; "auto" takes the Jacobian when K·P is small, else "matrix_free". The per-batch graph is traced once per engine (``m`` may vary);
        ``products.accumulator`` is the :class:`Accumulator` behind it.
        """
        lik = _likelihoods.get(likelihood)
        p = self.n_params
        if curvature == "hessian" or route == "hessian":
            body, key = self._hessian_product_body(lik), ("hessian_product", lik.key)
        elif route == "layerwise":
            if plan_inputs is None:
                raise ValueError("route='layerwise' needs plan_inputs: a few inputs to probe")
            plan = self.layer_plan(plan_inputs)
            if strategy is None and isinstance(data, ArrayBatches):
                product = self._captured_products(lik, plan, data)
                if product is not None:
                    return product
            key = ("ggn_product", lik.key, route, id(plan), plan.generic_pfor)
            body = self._layerwise_product_body(lik, plan)
        else:
            if route == "auto":
                route = "jacobian" if self._k_max() * p <= JACOBIAN_ROUTE else "matrix_free"
            body, key = self._ggn_product_body(lik, route), ("ggn_product", lik.key, route)
        acc = self.accumulator(
            key,
            body,
            data,
            arg_specs=[tf.TensorSpec([p, None], self.dtype)],
            strategy=strategy,
            cache=cache,
            progress=progress,
            desc=f"{curvature} products",
        )

        def product(v):
            v = np.asarray(v)
            block = v.reshape(p, -1).astype(self.dtype)
            out = acc(block)
            return out.reshape(v.shape)

        product.accumulator = acc
        product.route = route if curvature == "ggn" else "hessian"
        product.tracing_count = lambda: acc.tracing_count
        return product

    def _captured_products(self, lik, plan, data: ArrayBatches):
        """G V for in-memory batches, capturing each batch's layer inputs and sensitivities
        once and contracting them with every block of vectors afterwards (the capture — a
        forward and K backward passes — is then paid once, not once per pass). None when the
        captures would not fit in :data:`CAPTURE_CACHE` bytes."""
        model, dtype = self.model, self.dtype
        spec = data.element_spec[0]
        present = [blk.positions > 0 for blk in plan.fast]

        def capture_flat(xb):
            cap = layer_capture.capture(model, plan, xb, likelihood=lik)
            return (
                [a for a in cap.acts if a is not None]
                + [s for s in cap.sens if s is not None]
                + list(cap.jacs)
            )

        capture_fn = self.function(
            ("capture", lik.key, id(plan), plan.generic_pfor, spec_key(spec)),
            lambda: compiled(capture_flat, [spec]),
        )
        batches = iter(data)
        first = capture_fn(next(batches)[0])
        n_first = min(data.batch_size, data.n)
        per_sample = sum(int(np.prod(t.shape)) for t in first) * np.dtype(dtype).itemsize / n_first
        if per_sample * data.n > CAPTURE_CACHE:
            return None
        cached = [first] + [capture_fn(b[0]) for b in batches]
        n_acts = sum(present)
        specs = [  # the batch axis: 0 for ã (B, T, D) and J (B, K, P_l), 1 for s (K, B, T, C)
            tf.TensorSpec(
                [None if axis == (1 if n_acts <= i < 2 * n_acts else 0) else d
                 for axis, d in enumerate(t.shape)],
                t.dtype,
            )
            for i, t in enumerate(first)
        ]  # fmt: skip

        def apply(flat, v):
            it = iter(flat)
            acts = [next(it) if p else None for p in present]
            sens = [next(it) if p else None for p in present]
            cap = layer_capture.Captured(acts, sens, list(it), None)
            return tf.cast(layer_capture.product(plan, cap, tf.cast(v, dtype)), tf.float64)

        apply_fn = self.function(
            ("captured_product", lik.key, id(plan), plan.generic_pfor, spec_key(spec)),
            lambda: compiled(apply, [specs, tf.TensorSpec([self.n_params, None], dtype)]),
        )

        def product(v):
            v = np.asarray(v)
            block = tf.constant(v.reshape(self.n_params, -1).astype(dtype))
            total = sum(apply_fn(flat, block).numpy() for flat in cached)
            return total.reshape(v.shape)

        product.route = "layerwise"
        product.tracing_count = lambda: max(
            capture_fn.experimental_get_tracing_count(), apply_fn.experimental_get_tracing_count()
        )
        return product

    def product_route(self, x, curvature: str) -> str:
        """The route :meth:`products` should take for inputs like x: "jacobian" when K·P is
        small, else "layerwise" (the Hessian: "hessian")."""
        if curvature == "hessian":
            return "hessian"
        return "jacobian" if self.n_outputs(x) * self.n_params <= JACOBIAN_ROUTE else "layerwise"

    def layer_plan(self, x, *, fast: bool = True) -> layer_capture.LayerPlan:
        """The probed :class:`~sigma.curvature.capture.LayerPlan` for inputs like ``x`` (a few
        samples run eagerly once), kept here so it is probed once per model."""
        key = ("plan", bool(fast), _shape_key(x))
        plan = self.store.get(key)
        if plan is None:
            first = tf.nest.map_structure(lambda a: np.asarray(a[:8]), x)
            model = self.model
            plan = layer_capture.plan_layers(model, fast=fast, selection=self.selection)
            plan = layer_capture.probe(model, plan, first)
            self.store[key] = plan
        return plan

    def generator(self, seed: int) -> tf.random.Generator:
        """The model's one random generator (curvature="ggn_mc" draws its labels from it),
        reset from ``seed``: the traced graphs capture it once, a fit's draws depend on the
        seed alone."""
        gen = self.store.get("generator")
        if gen is None:
            with tf.init_scope():
                gen = self.store["generator"] = tf.random.Generator.from_seed(int(seed))
        gen.reset_from_seed(int(seed))
        return gen

    def described_plan(self, description: dict, *, fast: bool = True) -> layer_capture.LayerPlan:
        """The plan a saved structure describes (:func:`~sigma.curvature.capture.describe_plan`):
        the one this engine already holds when it is the same — so a loaded structure reuses
        the graphs traced on it — else rebuilt once and kept."""
        key = ("described-plan", repr(description), bool(fast))
        if key in self.store:
            return self.store[key]
        model = self.model
        for k, plan in list(self.store.items()):
            if (
                isinstance(plan, layer_capture.LayerPlan)
                and k[0] == "plan"
                and layer_capture.describe_plan(plan, model) == description
            ):
                self.store[key] = plan
                return plan
        plan = self.store[key] = layer_capture.rebuild_plan(
            model, description, fast=fast, selection=self.selection
        )
        return plan

    def _k_max(self) -> int:
        return max(self._k.values()) if self._k else 1


class SubsetEngine(Engine):
    """The engine of a selection of the weights (:mod:`sigma.weights`): w is the (P_s,) vector
    of the selected weights in package order; the others enter the model as constants read from
    their variables when the graph runs. Every graph of :class:`Engine` then differentiates
    with respect to the selected weights only (their Jacobian, GGN, Hessian and products)."""

    def __init__(self, parent: Engine, selection):
        super().__init__(parent.model)
        self.vectorizing = parent.vectorizing  # what pfor failed on, it fails on for a subset
        self.selection = selection
        self.n_params = selection.n_params
        self._parent = parent

    def weights(self) -> tf.Tensor:
        """The selected weights as one (P_s,) tensor, read when the graph runs."""
        tv = self.model.trainable_variables
        parts = []
        for i, cols in self.selection.parts:
            flat = tf.reshape(tf.convert_to_tensor(tv[i].value), [-1])
            parts.append(flat if cols is None else tf.gather(flat, cols))
        return tf.concat(parts, axis=0)

    def unflatten(self, w) -> list[tf.Tensor]:
        values = [tf.convert_to_tensor(v.value) for v in self.model.trainable_variables]
        pieces = tf.split(w, list(self.selection.sizes))
        for (i, cols), piece in zip(self.selection.parts, pieces, strict=True):
            if cols is None:
                values[i] = tf.reshape(piece, self.shapes[i])
            else:
                flat = tf.reshape(values[i], [-1])
                flat = tf.tensor_scatter_nd_update(flat, cols[:, None], piece)
                values[i] = tf.reshape(flat, self.shapes[i])
        return values


def _structure(x) -> str:
    """The nesting of x (a list, a dict by key, ...) with its leaves blanked, as a string."""
    return repr(tf.nest.map_structure(lambda _: None, x))


def spec_key(spec) -> tuple:
    shapes = tuple((tuple(s.shape.as_list()), s.dtype.name) for s in tf.nest.flatten(spec))
    return (_structure(spec), shapes)


def _shape_key(x) -> tuple:
    return (_structure(x), tuple(tuple(np.shape(a)[1:]) for a in tf.nest.flatten(x)))


def _symmetric(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + m.T)
