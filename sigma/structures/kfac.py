"""The Kronecker-factored structure (KFAC; Ritter, Botev & Barber 2018; Martens & Grosse 2015).

For a Dense or convolutional layer with bias-augmented inputs ã (D) and output sensitivities s
(C), the exact GGN block is Σ_n Σ_k (Σ_t ã_nt ⊗ s_nkt)(Σ_t ã_nt ⊗ s_nkt)ᵀ. KFAC replaces it by

    C_layer ≈ Q ⊗ H,   Q = (1 / (N T)) Σ_n Σ_t ã_nt ã_ntᵀ   (D × D, inputs)
                       H = Σ_n Σ_t Σ_k s_nkt s_nktᵀ          (C × C, sensitivities)

with T positions per sample (T = 1 for a Dense layer on vectors; the spatial positions of a
convolution, i.e. KFC of Grosse & Martens 2016 in its "expand" form). The 1/N sits on Q so that
Q ⊗ H is the exact block for one sample (and for one sample, any K, on a Dense layer). The
Kronecker order Q ⊗ H matches the package's weight order: the (D, C) augmented kernel
[W; b] is flattened row-major, index i·C + j (:mod:`sigma.params`).

The factors are eigen-decomposed once, Q = U_q diag(q) U_qᵀ, H = U_h diag(h) U_hᵀ, so the
prior and β enter exactly (no per-factor damping):

    A_layer⁻¹ = (U_q ⊗ U_h) diag(1 / (α + β q_i h_j)) (U_q ⊗ U_h)ᵀ,

the eigenvalues of C are the products q_i h_j, and the predictive rotates the test inputs ã into
U_q and the sensitivities s into U_h and contracts with 1/(α + β q_i h_j) — never forming J.
Layers without a fast path (:mod:`sigma.layers`) keep their exact GGN block, eigen-decomposed,
when it has at most ``max_block`` weights, and its exact diagonal otherwise.
GGN only: ``curvature="hessian"`` is refused. Memory Σ (D² + C²) plus the generic blocks.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from sigma._checks import check_positive_int, model_dtype
from sigma._linalg import eigh
from sigma.curvature.capture import Captured
from sigma.memory import activation_elements, kernel_blocks
from sigma.structures.layerwise import Layerwise, fit_elements, layerwise_batch_size


class KFAC(Layerwise):
    """C ≈ block-diag(Q_l ⊗ H_l) over Dense/Conv layers, exact blocks for the others.

    Parameters
    ----------
    max_block : generic-path layers with more weights than this get their exact GGN diagonal
        instead of their exact GGN block (P_l² memory).
    fast : see :class:`sigma.structures.layerwise.Layerwise`.
    """

    name = "kfac"
    memory_summary = "two Kronecker factors per layer"

    def __init__(self, *, max_block: int = 2048, fast: bool = True):
        super().__init__(fast=fast)
        self.max_block = check_positive_int(max_block, "max_block")

    statistics_options = ("max_block",)

    def _fit_elements(self, plan, k) -> int:
        # sums of ã ãᵀ and s sᵀ: no per-sample gradients, whatever a block's positions
        return fit_elements(plan, k, per_sample_gradients=False)

    @staticmethod
    def _batch_stats(plan, cap: Captured, *, max_block: int) -> list:
        stats = []
        for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
            if a is None:
                dt = cap.outputs.dtype
                stats += [tf.zeros((blk.d_in,) * 2, dt), tf.zeros((blk.d_out,) * 2, dt)]
                continue
            a2 = tf.reshape(a, (-1, blk.d_in))
            s2 = tf.reshape(s, (-1, blk.d_out))
            stats += [_gram(a2, blk.d_in), tf.matmul(s2, s2, transpose_a=True)]
        for g, j in zip(plan.generic, cap.jacs, strict=True):
            if g.size <= max_block:
                j2 = tf.reshape(j, (-1, g.size))
                stats.append(tf.matmul(j2, j2, transpose_a=True))
            else:
                stats.append(tf.reduce_sum(tf.square(j), axis=(0, 1)))
        return stats

    def _finish(self, stats):
        n, nf = self.n_data, len(self.plan.fast)
        factors = []
        for i, blk in enumerate(self.plan.fast):  # Q = Σ ã ãᵀ / (N T), in place (D² each)
            q, stats[2 * i] = stats[2 * i], None  # the blocks are released once assembled
            q = _assemble(q, blk.d_in) if isinstance(q, list | tuple) else q
            q /= n * max(blk.positions, 1)
            factors.append((q, stats[2 * i + 1]))
        self._set_factors(factors, stats[2 * nf :])

    def _state(self):
        arrays = {}
        for i, (q, h) in enumerate(self.factors):
            arrays[f"q{i}"], arrays[f"h{i}"] = q, h
        for i, (_, _, acc) in enumerate(self.generic_eigen):
            arrays[f"generic{i}"] = acc
        return arrays, {"n_fast": len(self.factors), "n_generic": len(self.generic_eigen)}

    def _restore(self, arrays):
        n_fast, n_generic = len(self.plan.fast), len(self.plan.generic)
        self._set_factors(
            [(arrays[f"q{i}"], arrays[f"h{i}"]) for i in range(n_fast)],
            [arrays[f"generic{i}"] for i in range(n_generic)],
        )

    def _set_factors(self, factors, generic):
        """The Kronecker factors (Q, H) per fast block and the generic blocks' statistics
        (a matrix, or its diagonal), eigen-decomposed."""
        self.factors, self.factor_eigen, eig = [], [], []
        model = self._model()
        precision = np.float32 if model_dtype(model) == "float32" else np.float64
        for q, h in factors:
            self.factors.append((q, h))
            (qe, qv), (he, hv) = _eigh(q, precision), _eigh(h, precision)
            self.factor_eigen.append((qe, qv, he, hv))
            eig.append(np.outer(qe, he).ravel())
        self.generic_eigen = []
        for acc in generic:
            e, v = _eigh(acc) if acc.ndim == 2 else (acc, None)
            self.generic_eigen.append((e, v, acc))
            eig.append(e)
        self._eig = np.concatenate(eig) if eig else np.zeros(0)

    @property
    def eigenvalues(self) -> np.ndarray:
        """Products q_i h_j of the factor eigenvalues per Kronecker block, then the generic
        blocks' eigenvalues: (P,) in total."""
        return self._eig

    def check_prior(self, prior) -> None:
        """Each Dense/Conv layer's weights must share α along its output units (a group
        constant on every row of the (D, C) kernel-and-bias matrix)."""
        for blk in self.plan.fast:
            g = prior.groups[blk.index].reshape(blk.d_in, blk.d_out)
            if not np.all(g == g[:, :1]):
                raise ValueError(
                    f"structure {self.name!r} needs one prior precision per input row of layer "
                    f"{blk.layer.name!r} (its Kronecker factor Q ⊗ H has no form for a prior "
                    "that varies over output units): use prior='scalar', 'layer' or 'variable', "
                    "or structure='diag' or 'full' for this grouping"
                )

    def _block_inverses(self, alpha, beta):
        """α constant on a block: its Kronecker eigenbasis, 1/(α + β q_i h_j). α varying over a
        layer's input rows (prior="variable": kernel and bias apart): with S = diag(α_row)^-½,
        A_block = (S⁻¹ ⊗ I)(I + β S Q S ⊗ H)(S⁻¹ ⊗ I), exact through the eigenpairs of S Q S.
        α varying over a layer's output columns has no Kronecker form and is refused."""
        fast_alpha, generic_alpha = self._alpha_blocks(alpha)
        out = [
            self._fast_spectrum(i, blk, a, beta)
            for i, (blk, a) in enumerate(zip(self.plan.fast, fast_alpha, strict=True))
        ]
        for a, (e, v, acc) in zip(generic_alpha, self.generic_eigen, strict=True):
            if v is None:  # the block's diagonal only
                a0 = a + beta * acc
                out.append([None, 1.0 / a0, np.log(a0).sum()])
            elif np.all(a == a[0]):
                a0 = a[0] + beta * e
                out.append([v, 1.0 / a0, np.log(a0).sum()])
            else:
                scale = a**-0.5
                e1, u = _eigh(scale[:, None] * acc * scale[None, :])
                a1 = 1.0 + beta * e1
                out.append([scale[:, None] * u, 1.0 / a1, np.log(a).sum() + np.log(a1).sum()])
        return out

    def _fast_spectrum(self, i, blk, a, beta) -> list:
        """[R_in, R_out, W (D, C), ln|A_block|] of fast block i with α of its weights ``a``
        (D, C) (see :meth:`_block_inverses`)."""
        (q, _), (qe, qv, he, hv) = self.factors[i], self.factor_eigen[i]
        rows = self._row_alpha(blk, a)
        if np.all(rows == rows[0]):
            a0 = rows[0] + beta * np.outer(qe, he)
            return [qv, hv, 1.0 / a0, np.log(a0).sum()]
        scale = rows**-0.5
        e, u = _eigh(scale[:, None] * q * scale[None, :])
        a1 = 1.0 + beta * np.outer(e, he)
        logdet = blk.d_out * np.log(rows).sum() + np.log(a1).sum()
        return [scale[:, None] * u, hv, 1.0 / a1, logdet]

    def _row_alpha(self, blk, a) -> np.ndarray:
        """α of each input row of a fast block (D,); ValueError when it varies along a row."""
        rows = a[:, 0]
        if not np.all(a == rows[:, None]):
            raise ValueError(
                f"structure {self.name!r} needs one prior precision per input row of layer "
                f"{blk.layer.name!r} (its Kronecker factor Q ⊗ H has no form for a prior "
                "that varies over output units): use prior='scalar', 'layer' or 'variable', "
                "or structure='diag' or 'full' for this grouping"
            )
        return rows

    def memory_bytes(self, model, *, n_data, n_outputs, batch_size, curvature):
        blocks, other = kernel_blocks(model)
        factors = sum(3 * (d * d + c * c) for d, c in blocks) * 8
        generic = (other * other if other <= self.max_block else 4 * other) * 8
        per = 2 * (n_outputs + 1) * activation_elements(model)
        return factors + generic + layerwise_batch_size(n_data, per, batch_size) * per * 8

    def matrix(self) -> np.ndarray:
        c = np.zeros((self.n_params, self.n_params))
        for blk, (q, h) in zip(self.plan.fast, self.factors, strict=True):
            c[np.ix_(blk.index, blk.index)] = np.kron(q, h)
        for g, (_, _, acc) in zip(self.plan.generic, self.generic_eigen, strict=True):
            c[np.ix_(g.index, g.index)] = acc if acc.ndim == 2 else np.diag(acc)
        return c


# Gram matrices ã ãᵀ of more than 2 such blocks of inputs are summed block by block, the
# lower triangle only: a Dense layer on 9,217 inputs (issue 26's CNN) takes 28 of the 49 block
# products (58% of the multiply-adds, and of the sums fetched per batch).
GRAM_BLOCK = 1536


def _gram_blocks(d: int) -> list[tuple[int, int, int, int]]:
    """(row start, row stop, column start, column stop) of the lower-triangle blocks."""
    edges = list(range(0, d, GRAM_BLOCK)) + [d]
    spans = list(zip(edges[:-1], edges[1:], strict=True))
    return [(*r, *c) for i, r in enumerate(spans) for c in spans[: i + 1]]


def _gram(a2, d: int):
    """Σ_rows ã ãᵀ of a (rows, D) tensor (traced): the (D, D) matrix, or for D above two
    :data:`GRAM_BLOCK` its lower-triangle blocks as a list (:func:`_assemble` makes Q)."""
    if d <= 2 * GRAM_BLOCK:
        return tf.matmul(a2, a2, transpose_a=True)
    return [
        tf.matmul(a2[:, r0:r1], a2[:, c0:c1], transpose_a=True)
        for r0, r1, c0, c1 in _gram_blocks(d)
    ]


def _assemble(blocks, d: int) -> np.ndarray:
    """The symmetric (D, D) float64 matrix from the summed lower-triangle blocks of _gram."""
    q = np.empty((d, d))
    for (r0, r1, c0, c1), b in zip(_gram_blocks(d), blocks, strict=True):
        q[r0:r1, c0:c1] = b
        if r0 != c0:
            q[c0:c1, r0:r1] = b.T
    return q


def _eigh(m, precision=np.float64):
    """Eigen-decomposition of a PSD factor, float64 (a large one of a float32 model decomposed
    in float32: :func:`sigma._linalg.eigh`); round-off negatives clipped to 0."""
    e, v = eigh(m, precision)
    return np.clip(e, 0.0, None), v
