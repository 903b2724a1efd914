"""The shared machinery of the layer-wise structures (``diag`` and ``kfac``).

Both accumulate per-layer statistics over batches from the capture of layer inputs and output
sensitivities (:func:`sigma.curvature.capture.capture`) and predict by contracting the inputs
and sensitivities of a test batch with each block's inverse (:func:`~sigma.curvature.capture.
contract`), never forming the Jacobian J. Their graphs are kept by the model's engine, keyed by
the structure's kind and options, so a second fit or predict on the same model traces nothing.
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import check_inputs, n_samples, take
from sigma.curvature.accumulate import (
    ArrayBatches,
    as_batches,
    batch_size_for,
    compiled,
    first_samples,
    is_dataset,
)
from sigma.curvature.capture import (
    Captured,
    LayerPlan,
    capture,
    capture_inputs,
    contract,
    describe_plan,
    output_block,
    plan_layers,
    with_pfor_fallback,
)
from sigma.memory import activation_elements
from sigma.progress import bar as progress_bar
from sigma.structures.base import Structure, restore_groups

# Cap on the elements a batch of the layer-wise structures holds in its captured inputs and
# sensitivities and their products (2²⁷: 512 MB in float32). The capture's own cap (2²⁴,
# LAYER_BUDGET) gave a 1.2M-weight CNN (issue 26) batches of 9 samples: 1,112 graph calls for
# N = 10,000, each paying the per-call fixed costs (a 9,217² Gram of the Dense layer's inputs
# written at B = 9, fetched and added in float64) — 129 gradient passes for a KFAC fit.
LAYERWISE_BUDGET = 2**27


def fit_elements(plan: LayerPlan, k: int, *, per_sample_gradients: bool = True) -> int:
    """Elements held per sample by a fit's batch: ã (T·D) and s (K·T·C, twice: the K backward
    passes' gradients and their stack) per fast block, the per-sample gradients (K·D·C, and
    their squares) of a block used at several positions when ``per_sample_gradients`` (diag,
    ekfac's second pass; kfac sums ã ãᵀ and s sᵀ without them), the generic blocks'
    vectorised Jacobians (K·P_l, four times) and the K backward passes through their layer that
    the vectorisation keeps per sample (K times its output, twice: a MobileNet's depthwise
    convolutions hold far more there than their few weights). The callers add the forward pass's activations, which the capture's
    tape keeps for the K backward passes (``2 * activation_elements(model)``): without them a
    last-layer fit on issue 26's CNN took all 10,000 images in one batch (3 GB)."""
    n = 0
    for b in plan.fast:
        n += b.positions * b.d_in + 2 * k * b.positions * b.d_out
        if per_sample_gradients and b.positions > 1:  # an embedding's: per token, (K, C)
            n += 2 * k * (b.positions * b.d_out if b.sparse else b.size)
    n += sum(4 * k * g.size + 2 * k * _output_elements(g.layer) for g in plan.generic)
    return max(n, 1)


def _output_elements(layer) -> int:
    """Output values per sample of ``layer`` from its symbolic output (0 when unknown)."""
    try:
        return int(np.prod([d for d in layer.output.shape[1:] if d is not None]))
    except (AttributeError, ValueError, TypeError):
        return 0


def layerwise_batch_size(n: int, per_sample: int, batch_size: int | None) -> int:
    """``batch_size`` if given, else the largest batch (≤ n) within :data:`LAYERWISE_BUDGET`."""
    return batch_size_for(n, per_sample, batch_size, budget=LAYERWISE_BUDGET)


def _positions_hint(blk, plan) -> int:
    """T of a fast block from its layer's symbolic output: output elements per sample over the
    layer's output width C (the kernel's, or its LoRA B's, columns); 1 when unknown."""
    try:
        shape = blk.layer.output.shape
        elements = int(np.prod([d for d in shape[1:] if d is not None]))
    except (AttributeError, ValueError, TypeError):
        return 1
    widths = [b.d_out for b in plan.fast if b.layer is blk.layer and b.role in ("kernel", "lora_b")]
    return max(1, elements // max(widths[0] if widths else blk.d_out, 1))


class Layerwise(Structure):
    """Base of :class:`~sigma.structures.diag.Diag` and :class:`~sigma.structures.kfac.KFAC`.

    Subclasses define ``_batch_stats(plan, cap, **options)`` (traced: per-batch sums; a pure
    function of the plan and the options, so its graph can be shared), ``_finish`` (given the
    summed statistics, or with several precision groups a list of them, one per group) and
    ``_block_params(alpha, beta)`` (the per-block rotations and inverse eigenvalues), and
    ``statistics_options`` (the options the statistics depend on).

    Parameters
    ----------
    fast : use the fast path for Dense/Conv layers (False: every layer generic; for tests).
    """

    def __init__(self, *, fast: bool = True):
        self.fast = bool(fast)

    statistics_options: tuple[str, ...] = ()  # options passed to ``_batch_stats``

    def _fit_elements(self, plan, k) -> int:
        """Elements per sample of a batch of the fit (for its batch size)."""
        return fit_elements(plan, k)

    def _statistics_options(self) -> dict:
        return {name: getattr(self, name) for name in self.statistics_options}

    # memory -------------------------------------------------------------------------------------
    def static_plan(self, model) -> LayerPlan:
        """The blocks a fit of ``model`` would have (over :attr:`selection`), with each fast
        block's positions read from its layer's symbolic output shape (1 where the model has
        none, e.g. a subclassed model): for memory estimates, without a forward pass."""
        plan = plan_layers(model, fast=self.fast, selection=self.selection)
        for blk in plan.fast:
            blk.positions = _positions_hint(blk, plan)
        return plan

    def _batch_elements(self, model, plan, k) -> int:
        """Elements per sample of a batch of the fit, for ``k`` pseudo-outputs: its captures and
        the forward pass's activations (which the capture's tape keeps)."""
        return self._fit_elements(plan, k) + 2 * activation_elements(model)

    def _batch_bytes(self, model, plan, n_data, n_outputs, batch_size) -> int:
        """Bytes of one batch of the fit (sized as :meth:`fit` sizes it)."""
        per = self._batch_elements(model, plan, n_outputs)
        itemsize = max((np.dtype(v.dtype).itemsize for v in model.trainable_variables), default=4)
        return layerwise_batch_size(n_data, per, batch_size) * per * itemsize

    @staticmethod
    def _generic_bytes(plan, max_block=None) -> int:
        """Bytes of the generic blocks: exact (P_l²) up to ``max_block`` weights, else diagonal."""
        total = 0
        for g in plan.generic:
            total += (
                g.size * g.size if max_block is not None and g.size <= max_block else 4 * g.size
            )
        return 8 * total

    # fitting ------------------------------------------------------------------------------------
    def fit(
        self,
        model,
        x,
        y=None,
        *,
        likelihood="regression",
        curvature="ggn",
        batch_size=None,
        strategy=None,
        progress=None,
    ):
        """Accumulate the layer-wise curvature over x: arrays (N, ...) in batches of
        ``batch_size`` (default: automatic), or a ``tf.data.Dataset`` of ``(x, y)`` batches;
        under a ``tf.distribute.Strategy`` when given. ``y`` is not needed (GGN)."""
        if curvature != "ggn":
            raise ValueError(
                f"structure={self.name!r} supports curvature='ggn' only (the exact Hessian has "
                f"no layer-wise factorisation here), got curvature={curvature!r}: use "
                "structure='full' for the Hessian of a small model"
            )
        lik = likelihoods.get(likelihood)
        eng = self.engine_for(model)
        if is_dataset(x):
            first = check_inputs(model, first_samples(x, 8))
        else:
            x = check_inputs(model, x)
            first = take(x, slice(0, 8))
        k = eng.n_outputs(first)
        self.plan = plan = eng.layer_plan(first, fast=self.fast)
        self._model = weakref.ref(model)
        self.n_params, self.n_outputs = plan.n_params, k
        if not is_dataset(x):  # sized by the pseudo-outputs (one per group for ggn_mc, not K)
            per = self._batch_elements(model, plan, len(lik.pseudo_groups(k)))
            bs = layerwise_batch_size(n_samples(x), per, batch_size)
            x = as_batches(x, batch_size=bs)
        options, stats_fn = self._statistics_options(), type(self)._batch_stats
        self.groups = groups = lik.groups(k)
        pseudo = lik.pseudo_groups(k)  # the precision group of each pseudo-output
        columns = [np.flatnonzero(pseudo == g) for g in range(groups.n_groups)]

        def body(batch):
            cap = capture(model, plan, batch[0], likelihood=lik)
            count = tf.cast(tf.shape(cap.outputs)[0], cap.outputs.dtype)
            per_group = [
                stats_fn(plan, cap if len(columns) == 1 else restrict(cap, cols), **options)
                for cols in columns
            ]
            return (*[t for p in per_group for t in p], count)

        def run():
            key = (
                "layerwise", type(self).__name__, tuple(sorted(options.items())), lik.key,
                self.fast, plan.generic_pfor, tuple(map(tuple, columns)),
            )  # fmt: skip
            return eng.accumulator(
                key, body, x, strategy=strategy, progress=progress, desc=f"{self.name} curvature"
            )()

        stats = list(with_pfor_fallback(plan, run))  # _finish may release its entries
        self.n_data = int(round(float(stats.pop())))
        n_stats = len(stats) // len(columns)
        per_group = [stats[g * n_stats : (g + 1) * n_stats] for g in range(len(columns))]
        del stats
        self._finish(per_group[0] if len(columns) == 1 else per_group)
        return self

    # predictive ---------------------------------------------------------------------------------
    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        """diag J(x) A⁻¹ J(x)ᵀ per sample, (N, K) float64, from the layer-wise inverse."""
        return self._predict(model, x, alpha, beta, batch_size, covariance=False)

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        """J(x) A⁻¹ J(x)ᵀ per sample, (N, K, K) float64, from the layer-wise inverse."""
        return self._predict(model, x, alpha, beta, batch_size, covariance=True)

    def _predict(self, model, x, alpha, beta, batch_size, *, covariance):
        if getattr(self, "_model", lambda: None)() is not model:
            raise ValueError(
                f"structure {self.name!r} was fitted on another model (its layers are "
                "recorded by identity): predict with the model it was fitted on"
            )
        x = check_inputs(model, x)
        k = self.engine_for(model).n_outputs(x)
        # The contractions run in float64, whatever the model's dtype: inverse eigenvalues
        # 1/(α + β c) overflow float32 for tiny α, β. The rotations of a fast block (its first
        # two entries) are applied in the model's dtype (``contract`` casts them to it): cast
        # here once, not in every batch's graph (a 9,217² rotation is 85M elements).
        dtype = self.engine_for(model).dtype
        n_fast = len(self.plan.fast)
        head = output_block(model, self.plan) is not None

        def constants():
            blocks = self._block_params(alpha, float(beta))
            if head and not covariance and blocks[0][1] is not None:
                blocks = [_head_columns(blocks[0], dtype)]
            return [
                [
                    None
                    if t is None
                    else tf.constant(t, dtype if i < n_fast and j < 2 else tf.float64)
                    for j, t in enumerate(blk)
                ]
                for i, blk in enumerate(blocks)
            ]

        # a head at the same precisions again (predict after predict_proba): the same
        # constants, not another conversion of its K×K rotation (a body's rotations, as large
        # as 9,217² for a CNN's Dense layer, are not kept beyond the call)
        key = (np.asarray(alpha, np.float64).tobytes(), float(beta), covariance, str(dtype))
        params = self.memo("head_constants", key, constants) if head else constants()
        flat = [t for blk in params for t in blk if t is not None]
        fn = self._predict_fn(model, x, params, covariance)
        if head:  # K per input, K² with covariances
            per = self.plan.fast[0].d_in + (k * k if covariance else 2 * k)
        else:
            # contract holds the captured batch and, per block used at several positions, the
            # per-sample gradients, in float64: twice a fit's elements per sample
            per = 2 * fit_elements(self.plan, k) + 2 * activation_elements(model)
        bs = layerwise_batch_size(n_samples(x), per, batch_size)
        batches = progress_bar(ArrayBatches((x,), bs), desc=f"{self.name} predictive")
        out = [np.asarray(fn(b[0], flat), dtype=np.float64) for b in batches]
        return np.concatenate(out)

    def _head_predict_fn(self, model, x, params, covariance):
        """The predictive of a posterior over the model's output layer alone (a linear head):
        J = ã ⊗ I, so J A⁻¹ Jᵀ = U_h diag(v) U_hᵀ with v = (ã U_q)² W per input — no backward
        pass, K numbers per input (a 5,000-class head: 40 kB per input, not K² numbers)."""
        eng, plan = self.engine_for(model), self.plan
        layout = tuple(t is not None for t in params[0])
        kept = len(layout) == 5  # [U_in, U_out, W, w₀, r]: the kept columns, any number of them
        specs = [
            tf.TensorSpec((t.shape[0], None) if kept and j in (1, 2) else t.shape, t.dtype)
            for j, t in enumerate(params[0])
            if t is not None
        ]
        spec = eng.spec(x)
        key = (
            "head-predict", type(self).__name__, covariance, id(plan), layout,
            tuple((tuple(s.shape), s.dtype.name) for s in specs),
            tuple(tuple(s.shape.as_list()) for s in tf.nest.flatten(spec)),
        )  # fmt: skip

        def build():
            def fn(xb, flat):
                it = iter(flat)
                u_in, u_out, w = [next(it) if present else None for present in layout[:3]]
                a = capture_inputs(model, plan, xb).acts[0][:, 0]  # (B, D)
                if u_in is not None:  # the rotation in the model's dtype (as contract's)
                    a = tf.matmul(tf.cast(a, u_in.dtype), u_in)
                a = tf.cast(a, tf.float64)
                v = tf.matmul(tf.square(a), w)  # (B, K): eigenvalues of the covariance
                if u_out is None:
                    return tf.linalg.diag(v) if covariance else v
                if covariance:
                    u_out = tf.cast(u_out, tf.float64)
                    return tf.einsum("kj,bj,lj->bkl", u_out, v, u_out)
                # diag(U_h diag(v) U_hᵀ) = v (U_h²)ᵀ: K² per input, the whole cost for many
                # classes, so in U_h's dtype (the model's: float32 halves it) with each row of
                # v scaled to at most 1 (v may exceed float32's range for a tiny α). Only the
                # columns the curvature moves off the prior are kept (_head_columns): the
                # others share one column w₀, and add (ã² w₀) r with r = their Σ_j U_kj².
                scale = tf.reduce_max(v, axis=1, keepdims=True)
                scale = tf.where(scale > 0, scale, tf.ones_like(scale))
                scaled = tf.cast(v / scale, u_out.dtype)
                diag = tf.cast(tf.matmul(scaled, tf.square(u_out), transpose_b=True), tf.float64)
                diag = diag * scale
                if kept:  # w₀ (D,), r (K,)
                    w0, rest = next(it), next(it)
                    diag += tf.matmul(tf.square(a), w0[:, None]) * rest[None, :]
                return diag

            return compiled(fn, [spec, specs])

        return eng.function(key, build)

    def _predict_fn(self, model, x, params, covariance):
        eng, plan = self.engine_for(model), self.plan
        if output_block(model, plan) is not None:
            return self._head_predict_fn(model, x, params, covariance)
        layout = tuple(tuple(t is not None for t in blk) for blk in params)
        specs = [tf.TensorSpec(t.shape, t.dtype) for blk in params for t in blk if t is not None]
        spec = eng.spec(x)
        key = (
            "layerwise-predict", type(self).__name__, covariance, id(plan), plan.generic_pfor,
            layout, tuple((tuple(s.shape), s.dtype.name) for s in specs),
            tuple(tuple(s.shape.as_list()) for s in tf.nest.flatten(spec)),
        )  # fmt: skip

        def build():
            def fn(xb, flat):
                it = iter(flat)
                blocks = [[next(it) if present else None for present in blk] for blk in layout]
                return contract(plan, capture(model, plan, xb), blocks, covariance=covariance)

            return compiled(fn, [spec, specs])

        return eng.function(key, build)

    # serving ------------------------------------------------------------------------------------
    def export(self, model, alpha, beta):
        blocks = self._block_params(alpha, float(beta))
        arrays, layout = {}, []
        for i, blk in enumerate(blocks):
            layout.append([t is not None for t in blk])
            for j, t in enumerate(blk):
                if t is not None:
                    arrays[f"b{i}_{j}"] = np.asarray(t, np.float64)
        return arrays, {
            "plan": describe_plan(self.plan, model),
            "fast": self.fast,
            "layout": layout,
        }

    @staticmethod
    def graph_variance(eng, spec, arrays, x):
        model = eng.model
        plan = served_plan(eng, spec)
        blocks = [
            [arrays[f"b{i}_{j}"] if present else None for j, present in enumerate(row)]
            for i, row in enumerate(spec["layout"])
        ]
        return contract(plan, capture(model, plan, x), blocks, covariance=False)

    def _fitted_copy(self):
        """A copy of this fitted structure as one precision group, for :meth:`combine`."""
        new = self.fresh_copy()
        new.groups = None
        return new

    # saving -------------------------------------------------------------------------------------
    def state(self):
        arrays, info = self._state()
        info.update(
            plan=describe_plan(self.plan, self._model()), fast=self.fast, n_params=self.n_params,
            n_outputs=self.n_outputs, n_data=self.n_data,
            groups=None if self.groups is None else self.groups.describe(),
        )  # fmt: skip
        if self.groups is not None:
            arrays["group_outputs"] = self.groups.outputs
        return arrays, info

    def restore(self, model, arrays, info):
        self.plan = self.engine_for(model).described_plan(info["plan"], fast=info["fast"])
        self._model = weakref.ref(model)
        self.n_params, self.n_outputs = int(info["n_params"]), int(info["n_outputs"])
        self.n_data = int(info["n_data"])
        self.groups = restore_groups(info.get("groups"), arrays.get("group_outputs"))
        self._restore(arrays)
        return self

    def _state(self) -> tuple[dict, dict]:
        raise NotImplementedError

    def _restore(self, arrays: dict) -> None:
        raise NotImplementedError

    # hooks --------------------------------------------------------------------------------------
    @staticmethod
    def _batch_stats(plan, cap: Captured, **options) -> list:
        """Traced: the batch's sums of each block's statistics (tensors of static shape)."""
        raise NotImplementedError

    def _finish(self, stats: list) -> None:
        """From the summed statistics (float64 arrays), the fitted curvature."""
        raise NotImplementedError

    def _block_inverses(self, alpha, beta) -> list:
        """Per fast block [R_in or None, R_out or None, W (D, C), ln|A_block|]; per generic block
        [R or None, w, ln|A_block|]: that block of A = D_α + βC has the inverse
        (R_in ⊗ R_out) diag(W) (R_in ⊗ R_out)ᵀ (resp. R diag(w) Rᵀ), None standing for the
        identity. ``alpha``: a float or α of each weight (P,)."""
        raise NotImplementedError

    def block_inverses(self, alpha, beta) -> list:
        key = (np.asarray(alpha, np.float64).tobytes(), float(beta))
        return self.memo("block_inverses", key, lambda: self._block_inverses(alpha, beta))

    def _block_params(self, alpha, beta) -> list:
        """The inverse of A block by block, for :func:`~sigma.curvature.capture.contract`."""
        return [blk[:-1] for blk in self.block_inverses(alpha, beta)]

    def logdet(self, alpha, beta) -> float:
        """ln|D_α + β C|, block by block."""
        return float(sum(blk[-1] for blk in self.block_inverses(alpha, beta)))

    def inverse_diagonal(self, alpha, beta) -> np.ndarray:
        """diag(A⁻¹), (P,): per fast block (R_in²) W (R_out²)ᵀ, per generic block (R²) w."""
        out = np.zeros(self.n_params)
        blocks = self.plan.fast + self.plan.generic
        for blk, spec in zip(blocks, self.block_inverses(alpha, beta), strict=True):
            if len(spec) == 4:
                r_in, r_out, w, _ = spec
                d = w if r_in is None else (r_in**2) @ w
                d = d if r_out is None else d @ (r_out**2).T
            else:
                r, w, _ = spec
                d = w if r is None else (r**2) @ w
            out[blk.index] = np.ravel(d)
        return out

    def inverse_quadratic(self, v, alpha, beta) -> float:
        """vᵀA⁻¹v block by block: per fast block Σ W ∘ (R_inᵀ V R_out)² with V the block's part
        of v as (D, C), per generic block Σ w ∘ (Rᵀ v)²."""
        v = np.asarray(v, np.float64)
        total = 0.0
        blocks = self.plan.fast + self.plan.generic
        for blk, spec in zip(blocks, self.block_inverses(alpha, beta), strict=True):
            if len(spec) == 4:
                r_in, r_out, w, _ = spec
                z = v[blk.index].reshape(w.shape)
                z = z if r_in is None else r_in.T @ z
                z = z if r_out is None else z @ r_out
            else:
                r, w, _ = spec
                z = v[blk.index] if r is None else r.T @ v[blk.index]
            total += float(np.sum(w * z**2))
        return total

    def _alpha_blocks(self, alpha):
        """α of each block's weights: (D, C) per fast block, (P_l,) per generic block."""
        a = np.broadcast_to(np.asarray(alpha, np.float64), (self.n_params,))
        fast = [a[b.index].reshape(b.d_in, b.d_out) for b in self.plan.fast]
        return fast, [a[g.index] for g in self.plan.generic]

    def matrix(self) -> np.ndarray:
        """The approximate curvature C as an explicit (P, P) float64 matrix (small models only;
        for tests: the structures themselves never form it)."""
        raise NotImplementedError


def restrict(cap: Captured, cols) -> Captured:
    """The capture of the pseudo-outputs ``cols`` alone (one precision group's)."""
    cols = tf.constant(np.asarray(cols, np.int64))
    return Captured(
        cap.acts,
        [None if s is None else tf.gather(s, cols, axis=0) for s in cap.sens],
        [tf.gather(j, cols, axis=1) for j in cap.jacs],
        cap.outputs,
    )


def served_plan(eng, spec):
    """The layer plan of an exported structure: the engine's own when it is the same (one
    trace for the served model and the structure's predictive)."""
    return eng.described_plan(spec["plan"], fast=spec.get("fast", True))


def _head_columns(params, dtype):
    """A head's predictive parameters [U_in, U_out, W] (float64 arrays) with only the output
    eigen-directions j the curvature moves off the prior: a direction of the output factor
    with no curvature (a class no training label was drawn from, the softmax's shift of all
    logits) has W[:, j] = w₀, the prior's column, so those add (ã² w₀) r_k with
    r_k = Σ_j U_kj² over them: one number per output, not K. A column counts as the prior's
    within K·ε (the numerical-rank tolerance of the K×K eigendecomposition, as
    numpy.linalg.matrix_rank's; ε of the model's ``dtype``, in which U_out is applied): every
    term of a variance is positive and each dropped one within that of its value, so the
    variances are exact to K·ε relative (6·10⁻⁴ for 5,000 float32 classes, 10⁻¹² in
    float64). Returns [U_in, U_out's kept columns, W's, w₀, r], or ``params`` unchanged."""
    u_in, u_out, w = params
    u_out, w = np.asarray(u_out, np.float64), np.asarray(w, np.float64)
    tol = u_out.shape[0] * float(np.finfo(tf.as_dtype(dtype).as_numpy_dtype).eps)
    w0 = w.max(axis=1)  # the prior's column: the largest variance of each input direction
    free = np.all(np.abs(w - w0[:, None]) <= tol * w0[:, None], axis=0)
    if not free.any():
        return params
    return [u_in, u_out[:, ~free], w[:, ~free], w0, np.sum(np.square(u_out[:, free]), axis=1)]
