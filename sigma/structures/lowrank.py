"""The low-rank structure: the top-k eigenpairs of the curvature by block Lanczos on matrix-free
curvature products, for any differentiable model (docs/math.md, "Structures").

    C ≈ U diag(λ) Uᵀ,   U (P, k) orthonormal,   the other P − k eigenvalues taken as zero

    A⁻¹ = U diag(1/(α + βλ)) Uᵀ + (1/α)(I − U Uᵀ)                       (needs α > 0)
    σ_k²(x) − 1/β = gᵀA⁻¹g = (1/α)(‖g‖² − ‖Uᵀg‖²) + Σ_i (u_iᵀg)² / (α + βλ_i)

**At the cost of its rank.** Each pass over the data multiplies C by a whole block of b vectors
(:meth:`sigma.curvature.engine.Engine.products`: G V through per-sample Jacobians, or J V by
forward mode and Jᵀ U by reverse mode vectorised over the columns; H V by nested tapes), so the
Krylov space grows by b dimensions per pass instead of one: :func:`block_lanczos` keeps every
block, re-orthogonalises fully, and stops when the top-k Ritz residuals fall below ``tol``
times the largest eigenvalue — for k = 20 typically in a handful of passes where single-vector
Lanczos needed over a hundred. "Top" means largest in magnitude: the best rank-k approximation
of C (for the Hessian, large negative curvature is kept and the positive-definiteness check
can see it). When 2k + 1 > P the P×P curvature is accumulated and eigen-decomposed exactly
instead (``method == "dense"``).

Memory: U and the Krylov basis, P·(k + passes·b) floats; per batch the activations of the
vectorised forward/backward passes. The predictive needs, per test sample, Uᵀg_k (k forward-mode
products per batch) and ‖g_k‖² — the diagonal of J Jᵀ, from the layer inputs and output
sensitivities of :mod:`sigma.curvature.capture` (for a Dense layer ‖∂f_k/∂W‖² = ‖ã‖² ‖s_k‖², no
per-sample gradient formed), or with ``predictive="jacobian"`` from per-sample Jacobians in
memory-bounded chunks.
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import check_inputs, check_positive_int, check_seed, n_samples, take
from sigma.curvature.accumulate import (
    ELEMENT_BUDGET,
    as_batches,
    batch_size_for,
    compiled,
    first_samples,
    is_dataset,
)
from sigma.curvature.capture import (
    capture,
    contract,
    describe_plan,
    jacobian_product,
    per_sample_elements,
    product_elements,
)
from sigma.curvature.engine import CAPTURE_CACHE, spec_key
from sigma.lanczos import block_lanczos, default_block
from sigma.memory import activation_elements, itemsize, kernel_blocks
from sigma.progress import bar as progress_bar
from sigma.structures.base import Structure
from sigma.structures.diag import Diag
from sigma.structures.full import Full
from sigma.structures.layerwise import served_plan


class LowRank(Structure):
    """C ≈ U diag(λ) Uᵀ from its top-``rank`` eigenpairs (block Lanczos), the rest taken as zero.

    Parameters
    ----------
    rank : k, the number of eigenpairs kept (capped at P).
    tol : tolerance on the Ritz residuals relative to the largest eigenvalue (default 1e-8 for
        float64 models, 1e-5 for lower precision).
    block : vectors per pass over the data (default ⌈k/2⌉, at least 8).
    max_passes : cap on the passes over the data (default 30).
    seed : seed of the random start block.
    predictive : how ‖g‖² and Uᵀg are computed at test inputs: "layerwise" (J Jᵀ from layer
        inputs and sensitivities, :mod:`sigma.curvature.capture`; Uᵀg by k forward-mode
        products) or "jacobian" (per-sample Jacobians in memory-bounded chunks; the reference).
    diag : "lowrank+diag" — the P − k directions the low-rank part leaves out get the exact GGN
        diagonal minus the low-rank part's, r = diag(G) − diag(UΛUᵀ) ≥ 0, instead of the
        bare prior: C ≈ UΛUᵀ + diag(r). Default: on for the GGN (one more pass over the data,
        as the ``diag`` structure), off for the Hessian (no exact diagonal is computed for it).

    After ``fit``: ``eigenvalues`` (k,), ``vectors`` (P, k), ``method`` ("lanczos" or "dense"),
    ``info`` (passes, products, residuals). Needs α > 0 unless k = P.
    """

    name = "lowrank"
    curvatures = ("ggn", "hessian")
    can_clip = True
    memory_summary = "k eigenvectors and the Krylov basis, P floats each"

    def __init__(
        self,
        rank: int = 20,
        *,
        tol: float | None = None,
        block: int | None = None,
        max_passes: int | None = None,
        seed: int = 0,
        predictive: str = "layerwise",
        diag: bool | None = None,
    ):
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or int(rank) < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        if predictive not in ("layerwise", "jacobian"):
            raise ValueError(f"predictive must be 'layerwise' or 'jacobian', got {predictive!r}")
        if tol is not None and not (isinstance(tol, float | int) and 0 < tol < 1):
            raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
        if seed is None:  # the start block, and so the fitted subspace, must be reproducible
            raise ValueError("seed must be a non-negative integer for lowrank, got None")
        self.rank, self.tol, self.seed = int(rank), tol, check_seed(seed)
        self.block = None if block is None else check_positive_int(block, "block")
        self.max_passes = (
            None if max_passes is None else check_positive_int(max_passes, "max_passes")
        )
        self.predictive = predictive
        if diag is not None and not isinstance(diag, bool):
            raise ValueError(f"diag must be True, False or None, got {diag!r}")
        self.diag = diag

    def _block_size(self, p):
        k = min(self.rank, p)
        return default_block(k, p) if self.block is None else min(p, self.block)

    def fit(self, model, x, y, *, likelihood, curvature, batch_size, strategy=None, progress=None):
        eng = self.engine_for(model)
        p = self.n_params = eng.n_params
        k = min(self.rank, p)
        likelihood = likelihoods.get(likelihood)
        groups = likelihood.groups(eng.n_outputs(check_inputs(model, first_samples(x, 1))))
        if groups.n_groups > 1:
            raise ValueError(
                f"structure 'lowrank' holds the top eigenpairs of one curvature, so it takes one "
                f"precision group; the likelihood has {groups.n_groups} ({list(groups.names)}: a "
                "likelihood per head or one beta per output). Use structure 'full', 'kfac', "
                "'ekfac' or 'diag', which keep each group's curvature"
            )
        self.groups = groups
        # the layer plan of the layer-wise predictive, probed on training inputs
        first = check_inputs(model, first_samples(x, 8))
        layerwise = self.predictive == "layerwise" and k < p
        self._plan = eng.layer_plan(first) if layerwise else None
        self._model_ref = weakref.ref(model)
        if 2 * k + 1 > p:
            full = self.sibling(Full).fit(
                model, x, y, likelihood=likelihood, curvature=curvature, batch_size=batch_size,
                strategy=strategy, progress=progress,
            )  # fmt: skip
            lam, vecs = full.eigenvalues, full.vectors
            top = np.argsort(-np.abs(lam))[:k]
            top = top[np.argsort(-lam[top])]
            self._eig, self._vecs = lam[top], vecs[:, top]
            self.method, self.info = "dense", {"passes": 1, "steps": 0}
        else:
            tol = self.tol
            if tol is None:
                tol = 1e-8 if eng.dtype == "float64" else 1e-5
            b = self._block_size(p)
            n = 1 if is_dataset(x) else n_samples(x)
            route = eng.product_route(first, curvature)
            kk = eng.n_outputs(first)
            if route == "jacobian":  # per sample: its (K, P) Jacobian and Lᵀ J
                per_sample = 2 * kk * p
            elif route == "layerwise":  # per sample: the capture and b vectors per layer
                per_sample = product_elements(eng.layer_plan(first), kk, b)
            else:  # per sample: the activations of b tangents, forward and backward
                per_sample = 4 * (b + 1) * activation_elements(model)
            data = as_batches(
                x,
                y if curvature == "hessian" else None,
                batch_size=batch_size_for(n, per_sample, batch_size),
            )
            if curvature == "hessian" and len(data.element_spec) < 2:
                raise ValueError("curvature='hessian' needs the targets y")
            products = eng.products(
                data,
                likelihood,
                curvature,
                route=route,
                strategy=strategy,
                progress=False,  # one bar for the whole eigensolver, not one per pass
                plan_inputs=first,
            )
            self._eig, self._vecs, self.info = block_lanczos(
                products,
                p,
                k,
                block=b,
                tol=tol,
                max_passes=self.max_passes,
                seed=self.seed,
                progress=progress,
            )
            self.info["tracing_count"] = products.tracing_count()
            self.method = "lanczos"
        # Products in the model's dtype are exact to ~eps(dtype)·‖C‖: eigenvalues below that
        # (e.g. the null space of a GGN of rank < k) are round-off, i.e. zero.
        eps = float(np.finfo(eng.dtype).eps)
        if self._eig.size:
            self._eig = np.where(
                np.abs(self._eig) <= 10 * eps * np.abs(self._eig).max(), 0.0, self._eig
            )
        self.residual_diagonal = None
        use_diag = self._with_diag(curvature)
        if use_diag and self._vecs.shape[1] < p:
            if curvature != "ggn":
                raise ValueError(
                    "LowRank(diag=True) needs curvature='ggn' (the exact diagonal is the "
                    "Gauss–Newton one); use diag=False with the Hessian"
                )
            d = self.sibling(Diag).fit(
                model, x, y, likelihood=likelihood, curvature="ggn", batch_size=batch_size,
                strategy=strategy, progress=progress,
            ).diagonal  # fmt: skip
            residual = d - (self._vecs**2) @ self._eig
            # below the precision of the model dtype (relative to d) the residual is round-off
            residual[residual <= 100 * eps * d] = 0.0
            self.residual_diagonal = residual if residual.any() else None
        self.evidence_from_eigenvalues = (
            self.residual_diagonal is None
        )  # the evidence from the eigenvalues
        # ‖g‖² − ‖Uᵀg‖² cancels; both come from the same g, contracted in float64, so what is
        # left of a g in span(U) is g's own rounding, (eps·‖g‖)²: below that it is zero.
        self._resid_floor = 1e3 * eps**2 + 100 * float(np.finfo(np.float64).eps)
        return self

    @property
    def eigenvalues(self) -> np.ndarray:
        """The k kept eigenvalues of C, decreasing, (k,)."""
        return self._eig

    @property
    def vectors(self) -> np.ndarray:
        """The k eigenvectors U, (P, k), orthonormal columns."""
        return self._vecs

    def clip_negative(self):
        self._eig = np.maximum(self._eig, 0.0)

    def export(self, model, alpha, beta):
        """var = diag(J diag(s) Jᵀ) − diag(J u M uᵀ Jᵀ): s = 1/α, u = U,
        M = diag(1/α − 1/(α + βλ)) in the eigenbasis; s = 1/D, u = D⁻¹U, M = S by Woodbury."""
        if self._uses_eigenbasis(alpha):
            s = np.full(self.n_params, 1.0 / alpha)
            u, m = self._vecs, np.diag(1.0 / alpha - 1.0 / (alpha + beta * self._eig))
        else:
            d, u, m, _ = self._woodbury(alpha, beta)
            s = 1.0 / d
        spec = {"path": "layerwise" if self._plan is not None else "jacobian"}
        if self._plan is not None:
            spec["plan"] = describe_plan(self._plan, model)
        return {"scale": s, "u": np.asarray(u, np.float64), "m": np.asarray(m, np.float64)}, spec

    @staticmethod
    def graph_variance(eng, spec, arrays, x):
        model = eng.model
        s, u, m = arrays["scale"], arrays["u"], arrays["m"]
        if spec["path"] == "layerwise":
            plan = served_plan(eng, spec)
            blocks = [
                [None, None, tf.reshape(tf.gather(s, b.index), (b.d_in, b.d_out))]
                for b in plan.fast
            ]
            blocks += [[None, tf.gather(s, g.index)] for g in plan.generic]
            cap = capture(model, plan, x)
            gram = contract(plan, cap, blocks, covariance=False)
            ju = jacobian_product(plan, cap, u)
        else:
            _, j = eng.jacobian(eng.weights(), x)
            j = tf.cast(j, tf.float64)
            gram = tf.einsum("bkp,p->bk", tf.square(j), s)
            ju = tf.einsum("bkp,pr->bkr", j, u)
        return tf.maximum(gram - tf.einsum("bkr,rq,bkq->bk", ju, m, ju), 0.0)

    def state(self):
        arrays = {"eigenvalues": self._eig, "vectors": self._vecs}
        if self.residual_diagonal is not None:
            arrays["residual_diagonal"] = self.residual_diagonal
        info = {
            "n_params": self.n_params,
            "plan": None if self._plan is None else describe_plan(self._plan, self._model_ref()),
            "method": self.method,
            "resid_floor": self._resid_floor,
            "info": {k: v for k, v in self.info.items() if not isinstance(v, np.ndarray)},
        }
        return arrays, info

    def restore(self, model, arrays, info):
        self.n_params, self.method = int(info["n_params"]), info["method"]
        self._eig, self._vecs = arrays["eigenvalues"], arrays["vectors"]
        self.residual_diagonal = arrays.get("residual_diagonal")
        self.evidence_from_eigenvalues = self.residual_diagonal is None
        self._resid_floor, self.info = float(info["resid_floor"]), dict(info["info"])
        plan = info.get("plan")  # absent from files written before serving existed
        self._plan = None if plan is None else self.engine_for(model).described_plan(plan)
        self._model_ref = weakref.ref(model)
        return self

    def _with_diag(self, curvature) -> bool:
        """lowrank+diag: the default for the GGN, off for the Hessian, or as asked."""
        return (curvature == "ggn") if self.diag is None else bool(self.diag)

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        eng = self.engine_for(model)
        p = eng.n_params
        r = min(self.rank, p)
        if 2 * r + 1 > p:
            return self.sibling(Full).memory_bytes(
                model, n_data=n_data, n_outputs=n_outputs, batch_size=batch_size,
                curvature=curvature,
            )  # fmt: skip
        b = self._block_size(p)
        passes = (
            -(-min(p, max(4 * r, r + 60)) // b) + 2 if self.max_passes is None else self.max_passes
        )
        steps = min(p, passes * b)
        item = itemsize(model)
        act = activation_elements(model)
        per = 4 * (b + 1) * act
        products = batch_size_for(n_data, per, batch_size) * per * item
        predictive = max(min(ELEMENT_BUDGET, 4 * n_outputs * p), n_outputs * p) * item * 2
        # in-memory data: every batch's layer inputs and sensitivities kept across the passes
        # (curvature.engine.CAPTURE_CACHE), and the exact-diagonal pass of lowrank+diag
        blocks, _ = kernel_blocks(model)
        captured = n_data * sum(d + n_outputs * c for d, c in blocks) * item
        captured = captured if captured <= CAPTURE_CACHE else 0
        diagonal = 0
        if self._with_diag(curvature):
            diagonal = self.sibling(Diag).memory_bytes(
                model, n_data=n_data, n_outputs=n_outputs, batch_size=batch_size,
                curvature=curvature,
            )  # fmt: skip
        return (
            (steps + 2 * r + 4) * p * 8 + 3 * p * b * 8 + products + predictive + captured
            + diagonal
        )  # fmt: skip

    # -- predictive -----------------------------------------------------------------------------
    def _projection(self, model, x):
        """The traced x_b, U, w -> (J diag(w) Jᵀ (B, K, K), J U (B, K, k)) float64, its per-sample
        elements and its path; one graph per model (U and w are arguments).

        ``"layerwise"``: J Jᵀ from the layer inputs and output sensitivities of
        :mod:`sigma.curvature.capture` (no per-sample gradient for Dense layers; K backward
        passes per batch) and J U by k forward-mode products. ``"jacobian"``: both from
        per-sample Jacobians in chunks — used when k = P, and as the reference.
        """
        eng = self.engine_for(model)
        r, k = self._vecs.shape[1], eng.n_outputs(x)
        path = "jacobian" if r == self.n_params else self.predictive
        spec = eng.spec(x)
        u_spec = tf.TensorSpec([self.n_params, None], tf.float64)
        w_spec = tf.TensorSpec([self.n_params], tf.float64)
        if path == "layerwise":
            plan = eng.layer_plan(x)

            def build():
                # J diag(w) Jᵀ and J U from one capture, contracted in float64: the two terms
                # of gᵀA⁻¹g that nearly cancel come from the same numbers.
                def proj(xb, u, scale):
                    scale = tf.cast(scale, tf.float64)
                    blocks = [
                        [None, None, tf.reshape(tf.gather(scale, b.index), (b.d_in, b.d_out))]
                        for b in plan.fast
                    ]
                    blocks += [[None, tf.gather(scale, g.index)] for g in plan.generic]
                    cap = capture(model, plan, xb)
                    gram = contract(plan, cap, blocks, covariance=True)
                    ju = jacobian_product(plan, cap, tf.cast(u, tf.float64))
                    if isinstance(ju, float):  # no weight reaches the outputs
                        ju = tf.zeros(
                            tf.concat([tf.shape(gram)[:2], tf.shape(u)[1:]], 0), tf.float64
                        )
                    return gram, ju

                return compiled(proj, [spec, u_spec, w_spec])

            per_sample = per_sample_elements(plan, k) + 2 * k * (r + 2)
            key = ("lowrank-projection", path, id(plan), spec_key(spec))
        else:

            def build():
                def proj(xb, u, scale):
                    _, j = eng.jacobian(eng.weights(), xb)  # (B_c, K, P), a chunk
                    j = tf.cast(j, tf.float64)
                    return tf.einsum("bkp,p,blp->bkl", j, scale, j), tf.einsum("bkp,pr->bkr", j, u)

                return compiled(proj, [spec, u_spec, w_spec])

            per_sample = 2 * k * self.n_params
            key = ("lowrank-projection", path, spec_key(spec))
        self._path = path
        return eng.function(key, build), per_sample

    def _parts(self, model, x, alpha, batch_size, u=None, scale=None):
        """Yield (J diag(scale) Jᵀ, J u) per batch (defaults: scale 1, u = U)."""
        if self._vecs.shape[1] < self.n_params and not np.min(alpha) > 0:
            raise ValueError(
                f"structure 'lowrank' keeps {self._vecs.shape[1]} of the P = {self.n_params} "
                "eigenvalues of C and takes the others as zero, so A = alpha*I + beta*C needs "
                f"alpha > 0, got alpha={np.min(alpha):g}"
            )
        x = check_inputs(model, x)
        proj, per_sample = self._projection(model, x)
        u = tf.constant(np.asarray(self._vecs if u is None else u, np.float64))
        scale = tf.ones(self.n_params, tf.float64) if scale is None else tf.constant(scale)
        n = n_samples(x)
        bs = batch_size_for(n, per_sample, None)
        if batch_size is not None:
            bs = min(bs, batch_size_for(n, 1, batch_size))
        for start in progress_bar(range(0, n, bs), desc="lowrank predictive"):
            yield (t.numpy() for t in proj(take(x, slice(start, start + bs)), u, scale))

    # -- A = D + U (βΛ) Uᵀ with D = D_α (+ β diag(r)): Woodbury ----------------------------------
    def _woodbury(self, alpha, beta):
        """(D (P,), D⁻¹U (P, k), S (k, k), ln|A|) with A⁻¹ = D⁻¹ − D⁻¹U S UᵀD⁻¹,
        S = βΛ (I + UᵀD⁻¹U βΛ)⁻¹ (singular Λ allowed)."""
        key = (np.asarray(alpha, np.float64).tobytes(), float(beta))
        return self.memo("woodbury", key, lambda: self._woodbury_of(alpha, beta))

    def _woodbury_of(self, alpha, beta):
        d = np.broadcast_to(np.asarray(alpha, np.float64), (self.n_params,)).copy()
        if self.residual_diagonal is not None:
            d += beta * self.residual_diagonal
        du = self._vecs / d[:, None]
        lam = beta * self._eig
        inner = np.eye(lam.size) + (self._vecs.T @ du) * lam[None, :]  # I + UᵀD⁻¹U βΛ
        sign, logdet_inner = np.linalg.slogdet(inner)
        s = lam[:, None] * np.linalg.inv(inner)  # βΛ (I + UᵀD⁻¹U βΛ)⁻¹
        return d, du, 0.5 * (s + s.T), float(np.sum(np.log(d)) + logdet_inner)

    def _uses_eigenbasis(self, alpha) -> bool:
        return self.residual_diagonal is None and np.ndim(alpha) == 0

    def logdet(self, alpha, beta) -> float:
        if self._uses_eigenbasis(alpha):
            return super().logdet(alpha, beta)
        return self._woodbury(alpha, beta)[3]

    def inverse_diagonal(self, alpha, beta) -> np.ndarray:
        """diag(A⁻¹), (P,)."""
        if self._uses_eigenbasis(alpha):
            inv = 1.0 / (alpha + beta * self._eig) - 1.0 / alpha
            return 1.0 / alpha + (self._vecs**2) @ inv
        d, du, s, _ = self._woodbury(alpha, beta)
        return 1.0 / d - np.einsum("pi,ij,pj->p", du, s, du)

    def inverse_quadratic(self, v, alpha, beta) -> float:
        """vᵀA⁻¹v = vᵀD⁻¹v − (UᵀD⁻¹v)ᵀ S (UᵀD⁻¹v) (Woodbury), or in C's eigenbasis."""
        v = np.asarray(v, np.float64)
        if self._uses_eigenbasis(alpha):
            z = self._vecs.T @ v
            inv = 1.0 / (alpha + beta * self._eig) - 1.0 / alpha
            return float(v @ v / alpha + np.sum(z**2 * inv))
        d, du, s, _ = self._woodbury(alpha, beta)
        z = du.T @ v
        return float(v @ (v / d) - z @ s @ z)

    def _woodbury_covariance(self, model, x, alpha, beta, batch_size):
        d, du, s, _ = self._woodbury(alpha, beta)
        out = []
        for gram, pu in self._parts(model, x, alpha, batch_size, u=du, scale=1.0 / d):
            out.append(gram - np.einsum("bki,ij,blj->bkl", pu, s, pu))
        return np.concatenate(out)

    def _residual(self, gram, ju):
        """(J Jᵀ − J U Uᵀ Jᵀ): the part of J Jᵀ outside span(U) (exactly 0 when k = P).

        It is a difference of two nearly equal terms when g lies almost in span(U); their
        round-off divided by a small α would swamp σ, so outputs whose residual is below the
        rounding of g itself (``_resid_floor``·‖g‖²) get exactly zero (their rows and columns),
        rather than amplified noise.
        """
        if self._vecs.shape[1] == self.n_params:
            return np.zeros_like(gram)
        resid = gram - np.einsum("bkr,blr->bkl", ju, ju)
        norms = np.einsum("bkk->bk", gram)
        lost = np.einsum("bkk->bk", resid) <= self._resid_floor * norms
        keep = ~lost
        return resid * keep[:, :, None] * keep[:, None, :]

    def predictive_variance(self, model, x, alpha, beta, *, batch_size=None):
        if not self._uses_eigenbasis(alpha):
            cov = self._woodbury_covariance(model, x, alpha, beta, batch_size)
            return np.maximum(np.einsum("nkk->nk", cov), 0.0)
        inv = 1.0 / (alpha + beta * self._eig)
        out = []
        for gram, ju in self._parts(model, x, alpha, batch_size):
            resid = np.maximum(np.einsum("bkk->bk", self._residual(gram, ju)), 0.0)
            out.append(np.einsum("bkr,r->bk", ju**2, inv) + (resid / alpha if resid.any() else 0))
        return np.concatenate(out)

    def predictive_covariance(self, model, x, alpha, beta, *, batch_size=None):
        if not self._uses_eigenbasis(alpha):
            return self._woodbury_covariance(model, x, alpha, beta, batch_size)
        inv = 1.0 / (alpha + beta * self._eig)
        out = []
        for gram, ju in self._parts(model, x, alpha, batch_size):
            resid = self._residual(gram, ju)
            cov = np.einsum("bkr,r,blr->bkl", ju, inv, ju)
            out.append(cov + (resid / alpha if resid.any() else 0))
        return np.concatenate(out)
