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
from sigma.curvature import blocks
from sigma.curvature.accumulate import as_batches, is_dataset
from sigma.curvature.capture import LayerPlan, capture
from sigma.memory import activation_elements
from sigma.structures.kfac import KFAC
from sigma.structures.layerwise import fit_elements, layerwise_batch_size, restrict


class EKFAC(KFAC):
    """KFAC's eigenbasis per Dense/Conv layer with the exact second moments as eigenvalues.

    Parameters: see :class:`~sigma.structures.kfac.KFAC`. After ``fit``: ``corrected``, the
    eigenvalues c (D, C) of each fast block.
    """

    name = "ekfac"
    memory_summary = "two Kronecker eigenbases and D×C corrected eigenvalues per layer"

    def fit(self, model, x, y=None, *, likelihood="regression", curvature="ggn",
            batch_size=None, strategy=None, progress=None):  # fmt: skip
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

        pseudo = lik.pseudo_groups(self.n_outputs)
        columns = [np.flatnonzero(pseudo == g) for g in range(self.n_groups)]

        def body(batch, bases):
            cap = capture(model, fast_plan, batch[0], likelihood=lik)
            if len(columns) == 1:
                return _corrected_sums(fast_plan, cap, bases)
            return [t for c in columns for t in _corrected_sums(fast_plan, restrict(cap, c), bases)]

        # a sparse block's U_q is the identity: an empty stand-in, never used
        specs = [
            [tf.TensorSpec((0,) if b.sparse else (b.d_in,) * 2, dtype),
             tf.TensorSpec((b.d_out,) * 2, dtype)]
            for b in plan.fast
        ]  # fmt: skip
        bases = [
            [tf.zeros((0,), dtype) if qv is None else tf.constant(qv.astype(dtype)),
             tf.constant(hv.astype(dtype))]
            for _, qv, _, hv in self.factor_eigen
        ]  # fmt: skip
        if plan.fast:
            key = ("ekfac-corrected", lik.key, id(plan), tuple(map(tuple, columns)))
            sums = eng.accumulator(
                key, body, x, arg_specs=[specs], strategy=strategy, progress=progress,
                desc="ekfac eigenvalues",
            )(bases)  # fmt: skip
            sums = [sums] if isinstance(sums, np.ndarray) else list(sums)
        else:
            sums = []
        sums = [np.maximum(np.asarray(c, np.float64), 0.0) for c in sums]
        nf = len(plan.fast)
        # several precision groups: each group's eigenvalues in the one basis of Σ_h C_h
        self.group_corrected = (
            [sums[g * nf : (g + 1) * nf] for g in range(len(columns))] if len(columns) > 1 else None
        )
        self._set_corrected(
            sums if len(columns) == 1 else [sum(c) for c in zip(*self.group_corrected, strict=True)]
        )
        return self

    def _combine(self, beta):
        """Σ_h β_h C_h in the basis fitted at β = 1 for every group (EK-FAC's basis is an
        approximation: the eigenvalues in it are each group's exact second moments)."""
        new = super()._combine(beta)  # the generic blocks' Σ_h β_h, and KFAC's factors
        new.factors, new.factor_eigen = self.factors, self.factor_eigen
        new.group_corrected = None
        new._set_corrected(
            [
                sum(b * c for b, c in zip(beta, cs, strict=True))
                for cs in zip(*self.group_corrected, strict=True)
            ]
        )
        return new

    def _group_traces(self, combined, alpha):
        """Σ W ⊙ c_h per Kronecker block (C_h is diagonal in the basis), the generic blocks as
        KFAC's."""
        spectra = combined.block_inverses(alpha, 1.0)
        nf = len(self.plan.fast)
        out = self._generic_traces(spectra[nf:])
        for i, spec in enumerate(spectra[:nf]):
            for g, part in enumerate(self.group_corrected):
                out[g] += float(np.sum(spec[2] * part[i]))
        return out

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
        parts = self.group_corrected or [self.corrected]
        arrays.update(
            {f"corrected{g}_{i}": c for g, part in enumerate(parts) for i, c in enumerate(part)}
        )
        return arrays, info

    def _restore(self, arrays):
        super()._restore(arrays)
        nf, n_groups = len(self.plan.fast), self.n_groups
        if f"corrected{0}" in arrays:  # a file written before precision groups
            parts = [[arrays[f"corrected{i}"] for i in range(nf)]]
        else:
            parts = [[arrays[f"corrected{g}_{i}"] for i in range(nf)] for g in range(n_groups)]
        self.group_corrected = parts if len(parts) > 1 else None
        self._set_corrected(
            parts[0] if len(parts) == 1 else [sum(c) for c in zip(*parts, strict=True)]
        )

    def matrix(self) -> np.ndarray:
        c = super().matrix()
        for blk, (_, qv, _, hv), corr in zip(
            self.plan.fast, self.factor_eigen, self.corrected, strict=True
        ):
            u = np.kron(np.eye(blk.d_in) if qv is None else qv, hv)
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
        # inputs in U_q, sensitivities in U_h; then the rotated per-sample gradients, squared
        a, s = blocks.rotate(blk, a, s, None if blk.sparse else uq, uh)
        out.append(blocks.gradient_squares(blk, a, s))
    return out
