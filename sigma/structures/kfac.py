"""The Kronecker-factored structure (KFAC; Ritter, Botev & Barber 2018; Martens & Grosse 2015).

For a layer on the fast path (:mod:`sigma.curvature.blocks`: Dense, Conv, EinsumDense,
Embedding, LoRA adapters) with bias-augmented inputs ã (D) and output sensitivities s (C) at
T positions per sample, the exact GGN block is Σ_n Σ_k (Σ_t ã_nt ⊗ s_nkt)(Σ_t ã_nt ⊗ s_nkt)ᵀ.
KFAC replaces it by Q ⊗ H, with the positions handled in one of two ways (Eschenhagen et al.
2023), ``positions=``:

* ``"expand"`` (default): positions count as extra samples,

      Q = (1 / (N T)) Σ_n Σ_t ã_nt ã_ntᵀ   (D × D)     H = Σ_n Σ_t Σ_k s_nkt s_nktᵀ   (C × C);

  exact for one sample when the positions' outputs are separate (one output per token or
  pixel); KFC of Grosse & Martens 2016 for convolutions.
* ``"reduce"``: positions are summed first, ā_n = (1/T) Σ_t ã_nt and s̄_nk = Σ_t s_nkt,

      Q = (1 / N) Σ_n ā_n ā_nᵀ                          H = Σ_n Σ_k s̄_nk s̄_nkᵀ;

  exact for one sample when the layer's outputs are pooled over the positions before anything
  else acts on them (s_nkt the same at every t); T times cheaper to accumulate. An embedding
  keeps "expand" (its Q stays the diagonal of token counts).

With T = 1 the two are the same. The 1/N sits on Q so that Q ⊗ H is the exact block for one
sample at one position (any K). The Kronecker order Q ⊗ H matches the package's weight order:
the (D, C) augmented matrix [W; b] is flattened row-major, index i·C + j (:mod:`sigma.params`).

The factors are eigen-decomposed once, Q = U_q diag(q) U_qᵀ, H = U_h diag(h) U_hᵀ, so the
prior and β enter exactly (no per-factor damping):

    A_layer⁻¹ = (U_q ⊗ U_h) diag(1 / (α + β q_i h_j)) (U_q ⊗ U_h)ᵀ,

the eigenvalues of C are the products q_i h_j, and the predictive rotates the test inputs ã into
U_q and the sensitivities s into U_h and contracts with 1/(α + β q_i h_j) — never forming J.
An embedding's Q is diagonal (the token counts): it is kept as a vector, its eigenbasis the
identity, so a V-token table costs V + d² memory, never V². Layers without a fast path keep
their exact GGN block, eigen-decomposed, when it has at most ``max_block`` weights, and its
exact diagonal otherwise. GGN only: ``curvature="hessian"`` is refused. Memory Σ (D² + C²)
plus the generic blocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from sigma import keras_compat
from sigma._checks import check_positive_int, model_dtype
from sigma._linalg import eigh
from sigma.curvature import blocks
from sigma.curvature.capture import Captured
from sigma.structures.layerwise import Layerwise, fit_elements

POSITIONS = ("expand", "reduce")


class KFAC(Layerwise):
    """C ≈ block-diag(Q_l ⊗ H_l) over Dense/Conv layers, exact blocks for the others.

    Parameters
    ----------
    max_block : generic-path layers with more weights than this get their exact GGN diagonal
        instead of their exact GGN block (P_l² memory).
    positions : "expand" or "reduce", how a layer applied at several positions (a sequence,
        an image, attention heads) enters its factors (see the module docstring).
    fast : see :class:`sigma.structures.layerwise.Layerwise`.
    """

    name = "kfac"
    memory_summary = "two Kronecker factors per layer"

    def __init__(self, *, max_block: int = 2048, positions: str = "expand", fast: bool = True):
        super().__init__(fast=fast)
        self.max_block = check_positive_int(max_block, "max_block")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.positions = positions

    statistics_options = ("max_block", "positions")

    def fit(self, *args, **kwargs):
        super().fit(*args, **kwargs)
        if self.positions == "reduce":
            self._warn_reduced_to_zero()
        return self

    def _warn_reduced_to_zero(self) -> None:
        """Summed over positions, a block's sensitivities can cancel: an attention key
        projection's do (its softmax over the keys ignores a shift common to all of them), so
        "reduce" gives it no curvature, and its weights the prior's variance whatever the data."""
        scale = max((float(np.abs(h).max(initial=0.0)) for _, h in self.factors), default=0.0)
        flat = [
            blk.label or blk.layer.name
            for blk, (_, h) in zip(self.plan.fast, self.factors, strict=True)
            if blk.positions > 1 and not blk.sparse and np.abs(h).max() <= 1e-10 * scale
        ]
        if flat and scale > 0:
            warnings.warn(
                f"structure_options={{'positions': 'reduce'}} gives {', '.join(map(repr, flat))} "
                "no curvature: its sensitivities sum to zero over the positions (an attention "
                "key projection's do, its softmax ignoring a shift common to all keys). Use "
                "positions='expand' (the default) for these layers",
                RuntimeWarning,
                stacklevel=keras_compat.user_stacklevel(),
            )

    def _fit_elements(self, plan, k) -> int:
        # sums of ã ãᵀ and s sᵀ: no per-sample gradients, whatever a block's positions
        return fit_elements(plan, k, per_sample_gradients=False)

    @staticmethod
    def _batch_stats(plan, cap: Captured, *, max_block: int, positions: str) -> list:
        stats = []
        for blk, a, s in zip(plan.fast, cap.acts, cap.sens, strict=True):
            if a is None:
                dt = cap.outputs.dtype
                q_shape = (blk.d_in,) if blk.sparse else (blk.d_in,) * 2
                stats += [tf.zeros(q_shape, dt), tf.zeros((blk.d_out,) * 2, dt)]
                continue
            if positions == "reduce" and not blk.sparse and blk.positions > 1:
                a = tf.reduce_mean(a, axis=1, keepdims=True)  # ā_n (B, 1, D)
                s = tf.reduce_sum(s, axis=2, keepdims=True)  # s̄_nk (K, B, 1, C)
            q = (
                _gram(tf.reshape(a, (-1, blk.d_in)), blk.d_in)
                if not blk.sparse
                else blocks.input_gram(blk, a)
            )
            stats += [q, blocks.sensitivity_gram(blk, s)]
        for g, j in zip(plan.generic, cap.jacs, strict=True):
            if g.size <= max_block:
                j2 = tf.reshape(j, (-1, g.size))
                stats.append(tf.matmul(j2, j2, transpose_a=True))
            else:
                stats.append(tf.reduce_sum(tf.square(j), axis=(0, 1)))
        return stats

    def _finish(self, stats, *, owned: bool = True):
        """The factors from the accumulated statistics; ``owned``: they are this call's to
        overwrite (Q normalised in place), not a group's kept statistics (:meth:`_combine`)."""
        grouped = bool(stats) and isinstance(stats[0], list)
        for part in stats if grouped else [stats]:  # Q summed as lower-triangle blocks: assembled
            for i, blk in enumerate(self.plan.fast):
                if isinstance(part[2 * i], list | tuple):
                    part[2 * i] = _assemble(part[2 * i], blk.d_in)
        # several precision groups: Q is the same for all (the inputs), H and the generic
        # blocks are each group's; kept apart, combined as Σ_h β_h H_h (:meth:`combine`)
        self._group_stats = stats if grouped else None
        if grouped:
            stats = self._combined_stats(np.ones(len(stats)))
        n, nf = self.n_data, len(self.plan.fast)

        def per_sample(blk):  # positions counted as samples in Q, unless reduced
            reduced = self.positions == "reduce" and not blk.sparse
            return 1 if reduced else max(blk.positions, 1)

        factors = []
        for i, blk in enumerate(self.plan.fast):  # Q = Σ ã ãᵀ / (N T), in place (D² each)
            q = stats[2 * i]
            if grouped or not owned:  # the groups' statistics are kept (combine): Q is a copy
                q = np.array(q, dtype=np.float64)
            else:  # the accumulated blocks are released once assembled
                stats[2 * i] = None
            q /= n * per_sample(blk)
            factors.append((q, stats[2 * i + 1]))
        self._set_factors(factors, stats[2 * nf :])

    def _combined_stats(self, beta) -> list:
        """The statistics of Σ_h β_h C_h: Q of the first group, Σ_h β_h H_h, Σ_h β_h of the
        generic blocks'."""
        parts, nf = self._group_stats, len(self.plan.fast)
        out = []
        for i in range(nf):
            out.append(parts[0][2 * i])
            out.append(sum(b * part[2 * i + 1] for b, part in zip(beta, parts, strict=True)))
        n_generic = len(parts[0]) - 2 * nf
        for j in range(n_generic):
            out.append(sum(b * part[2 * nf + j] for b, part in zip(beta, parts, strict=True)))
        return out

    def _combine(self, beta):
        new = self._fitted_copy()
        new._finish(self._combined_stats(beta), owned=False)
        return new

    def _group_traces(self, combined, alpha):
        """Tr(A⁻¹ C_h) per group from A⁻¹ block by block, (R_in ⊗ R_out) diag(W) (·)ᵀ:
        Σ_ij W_ij (r_iᵀ Q r_i)(s_jᵀ H_h s_j) for a Kronecker block, Σ_i w_i r_iᵀ C_h r_i for a
        generic one."""
        spectra = combined.block_inverses(alpha, 1.0)
        nf = len(self.plan.fast)
        return self._fast_traces(combined, spectra[:nf]) + self._generic_traces(spectra[nf:])

    def _fast_traces(self, combined, spectra) -> np.ndarray:
        out = np.zeros(len(self._group_stats))
        for i, (r_in, r_out, w, _) in enumerate(spectra):
            q = combined.factors[i][0]
            qd = (q if q.ndim == 1 else np.diag(q)) if r_in is None else _quad(r_in, q)
            for g, part in enumerate(self._group_stats):
                h = part[2 * i + 1]
                hd = np.diag(h) if r_out is None else _quad(r_out, h)
                out[g] += float(np.sum(w * np.outer(qd, hd)))
        return out

    def _generic_traces(self, spectra) -> np.ndarray:
        nf = len(self.plan.fast)
        out = np.zeros(len(self._group_stats))
        for j, (r, w, _) in enumerate(spectra):
            for g, part in enumerate(self._group_stats):
                acc = part[2 * nf + j]
                d = acc if acc.ndim == 1 else (np.diag(acc) if r is None else _quad(r, acc))
                out[g] += float(w @ d)
        return out

    def _state(self):
        arrays = {}
        if self._group_stats is not None:  # several groups: their statistics as accumulated
            for g, part in enumerate(self._group_stats):
                for i, t in enumerate(part):
                    arrays[f"g{g}_{i}"] = t
            return arrays, {"n_fast": len(self.factors), "n_groups": len(self._group_stats)}
        for i, (q, h) in enumerate(self.factors):
            arrays[f"q{i}"], arrays[f"h{i}"] = q, h
        for i, (_, _, acc) in enumerate(self.generic_eigen):
            arrays[f"generic{i}"] = acc
        return arrays, {"n_fast": len(self.factors), "n_generic": len(self.generic_eigen)}

    def _restore(self, arrays):
        n_fast, n_generic = len(self.plan.fast), len(self.plan.generic)
        n_groups = self.n_groups if self.groups is not None else 1
        if n_groups > 1:
            n_stats = 2 * n_fast + n_generic
            self._finish([[arrays[f"g{g}_{i}"] for i in range(n_stats)] for g in range(n_groups)])
            return
        self._group_stats = None
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
            # a diagonal Q (an embedding's token counts) is its own eigen-decomposition
            (qe, qv) = (np.clip(q, 0.0, None), None) if q.ndim == 1 else _eigh(q, precision)
            (he, hv) = _eigh(h, precision)
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
        if qv is None:  # diagonal Q: eigenvectors e_v ⊗ u_j, eigenvalues α_v + β q_v h_j
            a1 = rows[:, None] + beta * np.outer(qe, he)
            return [None, hv, 1.0 / a1, np.log(a1).sum()]
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
        """The factors (Q, H, their eigenvectors: 3 (D² + C²) per fast block, D for an
        embedding's diagonal Q), the generic blocks and one batch of the fit."""
        plan = self.static_plan(model)
        factors = sum(3 * ((b.d_in if b.sparse else b.d_in**2) + b.d_out**2) for b in plan.fast)
        return (
            8 * factors
            + self._generic_bytes(plan, self.max_block)
            + self._batch_bytes(model, plan, n_data, n_outputs, batch_size)
        )

    def matrix(self) -> np.ndarray:
        c = np.zeros((self.n_params, self.n_params))
        for blk, (q, h) in zip(self.plan.fast, self.factors, strict=True):
            c[np.ix_(blk.index, blk.index)] = np.kron(np.diag(q) if q.ndim == 1 else q, h)
        for g, (_, _, acc) in zip(self.plan.generic, self.generic_eigen, strict=True):
            c[np.ix_(g.index, g.index)] = acc if acc.ndim == 2 else np.diag(acc)
        return c


def _quad(r, m) -> np.ndarray:
    """diag(Rᵀ M R) for a matrix M (D, D), or a diagonal M given as its vector (D,)."""
    if m.ndim == 1:
        return (r**2).T @ m
    return np.einsum("di,de,ei->i", r, m, r)


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
