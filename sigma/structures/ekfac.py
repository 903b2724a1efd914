"""Eigenvalue-corrected KFAC (EK-FAC; George, Laurent, Bouthillier, Ballas & Vincent 2018).

KFAC's Kronecker eigenbasis with its eigenvalues replaced by the exact second moments of the
per-sample gradients in that basis. For a Dense or convolutional layer with KFAC's factors
Q = U_q diag(q) U_qᵀ and H = U_h diag(h) U_hᵀ (:mod:`.kfac`), and the per-sample gradients of
its (pseudo-)outputs G_nk = Σ_t ã_nt s_nktᵀ (D × C),

    C_layer ≈ (U_q ⊗ U_h) diag(c) (U_q ⊗ U_h)ᵀ,   c_ij = Σ_n Σ_k (u_qiᵀ G_nk u_hj)²

in place of q_i h_j: the diagonal of the exact GGN block in the KFAC eigenbasis,
c_ij = (u_qi ⊗ u_hj)ᵀ G_layer (u_qi ⊗ u_hj) — the best diagonal in that basis (George et al.,
§3). It costs KFAC's pass over the data plus one more, which rotates each batch's layer inputs
into U_q and sensitivities into U_h and sums the squares (a matrix product per Dense layer,
no per-sample gradient). α and β enter exactly as in KFAC:
A_layer⁻¹ = (U_q ⊗ U_h) diag(1/(α + β c)) (U_q ⊗ U_h)ᵀ; the predictive is KFAC's with these
eigenvalues. Layers without a fast path keep KFAC's exact blocks. GGN only; one prior
precision per layer block (the corrected eigenbasis has no form for α varying within a layer).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma import likelihoods
from sigma._checks import check_inputs, n_samples
from sigma.curvature.accumulate import as_batches, is_dataset
from sigma.curvature.capture import LayerPlan, capture
from sigma.memory import activation_elements
from sigma.structures.kfac import KFAC
from sigma.structures.layerwise import fit_elements, layerwise_batch_size


class EKFAC(KFAC):
    """KFAC's eigenbasis per Dense/Conv layer with the exact second moments as eigenvalues.

    Parameters: see :class:`~sigma.structures.kfac.KFAC`. After ``fit``: ``corrected``, the
    eigenvalues c (D, C) of each fast block.
    """

    name = "ekfac"
    memory_summary = "two Kronecker eigenbases and D×C corrected eigenvalues per layer"

    def fit(self, model, x, y=None, *, likelihood="regression", curvature="ggn",
            batch_size=None, strategy=None, progress=False):  # fmt: skip
        super().fit(
            model, x, y, likelihood=likelihood, curvature=curvature, batch_size=batch_size,
            strategy=strategy, progress=progress,
        )  # fmt: skip
        eng, plan, lik = self.engine_for(model), self.plan, likelihoods.get(likelihood)
        if not is_dataset(x):
            x = check_inputs(model, x)
            per = fit_elements(plan, self.n_outputs) + 2 * activation_elements(model)
            x = as_batches(x, batch_size=layerwise_batch_size(n_samples(x), per, batch_size))
        dtype = eng.dtype
        # the fast blocks alone: the generic blocks keep KFAC's exact statistics
        fast_plan = eng.store.setdefault(
            ("ekfac-fast-plan", id(plan)),
            LayerPlan(fast=plan.fast, n_params=plan.n_params, selection=plan.selection),
        )
        root = lik.hessian_sqrt

        def body(batch, bases):
            cap = capture(model, fast_plan, batch[0], root=root)
            return _corrected_sums(fast_plan, cap, bases)

        specs = [
            [tf.TensorSpec((b.d_in,) * 2, dtype), tf.TensorSpec((b.d_out,) * 2, dtype)]
            for b in plan.fast
        ]
        bases = [
            [tf.constant(qv.astype(dtype)), tf.constant(hv.astype(dtype))]
            for _, qv, _, hv in self.factor_eigen
        ]
        if plan.fast:
            key = ("ekfac-corrected", lik.key, id(plan))
            sums = eng.accumulator(
                key, body, x, arg_specs=[specs], strategy=strategy, progress=progress,
                desc="ekfac eigenvalues",
            )(bases)  # fmt: skip
            sums = [sums] if isinstance(sums, np.ndarray) else list(sums)
        else:
            sums = []
        self._set_corrected([np.maximum(np.asarray(c, np.float64), 0.0) for c in sums])
        return self

    def _set_corrected(self, corrected) -> None:
        self.corrected = corrected
        generic = [e for e, _, _ in self.generic_eigen]
        self._eig = np.concatenate([c.ravel() for c in corrected] + generic or [np.zeros(0)])

    def check_prior(self, prior) -> None:
        for blk in self.plan.fast:
            if np.unique(prior.groups[blk.index]).size > 1:
                raise ValueError(
                    f"structure 'ekfac' needs one prior precision per layer (layer "
                    f"{blk.layer.name!r} has several): use prior='scalar' or 'layer', or "
                    "structure='kfac' for one α per variable"
                )

    def _fast_spectrum(self, i, blk, a, beta) -> list:
        _, qv, _, hv = self.factor_eigen[i]
        if not np.all(a == a.flat[0]):
            raise ValueError(
                f"structure 'ekfac' needs one prior precision per layer (layer "
                f"{blk.layer.name!r} has several): use prior='scalar' or 'layer', or "
                "structure='kfac'"
            )
        a0 = a.flat[0] + beta * self.corrected[i]
        return [qv, hv, 1.0 / a0, np.log(a0).sum()]

    def _state(self):
        arrays, info = super()._state()
        arrays.update({f"corrected{i}": c for i, c in enumerate(self.corrected)})
        return arrays, info

    def _restore(self, arrays):
        super()._restore(arrays)
        self._set_corrected([arrays[f"corrected{i}"] for i in range(len(self.plan.fast))])

    def matrix(self) -> np.ndarray:
        c = super().matrix()
        for blk, (_, qv, _, hv), corr in zip(
            self.plan.fast, self.factor_eigen, self.corrected, strict=True
        ):
            u = np.kron(qv, hv)
            c[np.ix_(blk.index, blk.index)] = (u * corr.ravel()) @ u.T
        return c

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        return 2 * super().memory_bytes(
            model, n_data=n_data, n_outputs=n_outputs, batch_size=batch_size, curvature=curvature
        )


def _corrected_sums(plan, cap, bases) -> list:
    """Traced: per fast block Σ_n Σ_k (U_qᵀ G_nk U_h)², (D, C), from the batch's capture."""
    out = []
    for blk, a, s, (uq, uh) in zip(plan.fast, cap.acts, cap.sens, bases, strict=True):
        if a is None:
            out.append(tf.zeros((blk.d_in, blk.d_out), cap.outputs.dtype))
            continue
        a = tf.einsum("btd,de->bte", a, uq)  # inputs in U_q
        s = tf.einsum("kbtc,ce->kbte", s, uh)  # sensitivities in U_h
        if blk.positions == 1:  # (ã_n ⊗ s_nk)² summed: (ã²)ᵀ Σ_k s²
            out.append(
                tf.matmul(tf.square(a[:, 0]), tf.reduce_sum(tf.square(s[:, :, 0]), 0),
                          transpose_a=True)
            )  # fmt: skip
        else:  # the rotated per-sample gradients, squared
            g = tf.einsum("btd,kbtc->kbdc", a, s)
            out.append(tf.reduce_sum(tf.square(g), axis=(0, 1)))
    return out
