"""The diagonal structure: C ≈ diag(G), the exact diagonal of the (generalised) Gauss–Newton matrix.

    d_p = Σ_n Σ_k g_nkp²,   g_nk = L_nᵀ J_n (K pseudo-outputs per sample; L = I for regression)

computed exactly, not by Monte-Carlo sampling. The posterior precision is A = α I + β diag(d),
so its eigenvalues are α + β d_p and

    σ_k²(x) − 1/β = Σ_p g_kp(x)² / (α + β d_p).

Fast path (Dense, Conv1D, Conv2D; :mod:`sigma.curvature.capture`): with layer inputs ã (bias-augmented)
and output sensitivities s, a Dense layer gives d = (ã²)ᵀ (Σ_k s²) summed over samples — one
matrix product per batch, no per-sample gradient. A layer whose weights act at T > 1 positions
(a convolution, a Dense on sequences, a shared layer) needs the per-sample gradients
G_nk = Σ_t ã_nt s_nktᵀ, formed one batch at a time (B·K·D·C memory, no approximation).
The predictive contracts ã² and s² with 1/(α + β d) the same way. Every other layer takes
the generic autodiff path (exact too, slower). GGN only: ``curvature="hessian"`` is refused.

Memory P for C; no (N, K, P) Jacobian and no P×P matrix is ever formed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma.curvature import blocks
from sigma.curvature.capture import Captured
from sigma.structures.layerwise import Layerwise


class Diag(Layerwise):
    """C = diag(G), the exact diagonal of the GGN, in the package's weight order."""

    name = "diag"
    memory_summary = "P diagonal entries and per-layer batch statistics"

    @staticmethod
    def _batch_stats(plan, cap: Captured) -> list:
        stats = []
        for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
            if a is None:
                stats.append(tf.zeros((blk.d_in, blk.d_out), cap.outputs.dtype))
            else:  # Σ_n Σ_k G_nk², G_nk = Σ_t ã_nt s_nktᵀ (no G formed for one position)
                stats.append(blocks.gradient_squares(blk, a, s))
        stats += [tf.reduce_sum(tf.square(j), axis=(0, 1)) for j in cap.jacs]
        return stats

    def _finish(self, stats):
        if stats and isinstance(stats[0], list):  # several precision groups: d_h each
            self.diagonals = np.stack([self._diagonal(part) for part in stats])
            self.diagonal = self.diagonals.sum(axis=0)
        else:
            self.diagonals = None
            self.diagonal = self._diagonal(stats)

    def _diagonal(self, stats) -> np.ndarray:
        d = np.zeros(self.n_params)
        for blk, acc in zip(self.plan.fast + self.plan.generic, stats, strict=True):
            d[blk.index] = np.ravel(acc)
        return d

    def _combine(self, beta):
        new = self._fitted_copy()
        new.diagonals, new.diagonal = None, beta @ self.diagonals
        return new

    def _group_traces(self, combined, alpha):
        """Tr(A⁻¹ diag(d_h)) = Σ_p d_hp / (α_p + Σ_g β_g d_gp)."""
        return self.diagonals @ combined.inverse_diagonal(alpha, 1.0)

    @property
    def eigenvalues(self) -> np.ndarray:
        """The diagonal entries d_p, (P,)."""
        return self.diagonal

    def _state(self):
        if self.diagonals is not None:
            return {"diagonals": self.diagonals}, {}
        return {"diagonal": self.diagonal}, {}

    def _restore(self, arrays):
        self.diagonals = arrays.get("diagonals")
        self.diagonal = arrays["diagonal"] if self.diagonals is None else self.diagonals.sum(0)

    def _block_inverses(self, alpha, beta):
        a = alpha + beta * self.diagonal  # the eigenvalues of A, per weight
        inv, logs = 1.0 / a, np.log(a)
        out = [
            [None, None, inv[b.index].reshape(b.d_in, b.d_out), logs[b.index].sum()]
            for b in self.plan.fast
        ]
        out += [[None, inv[g.index], logs[g.index].sum()] for g in self.plan.generic]
        return out

    def matrix(self) -> np.ndarray:
        return np.diag(self.diagonal)

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        """Four vectors of P (the curvature, its sums, the precision, the variance) and one
        batch of the fit (its per-sample squared gradients where a layer has positions)."""
        plan = self.static_plan(model)
        return 4 * plan.n_params * 8 + self._batch_bytes(model, plan, n_data, n_outputs, batch_size)
