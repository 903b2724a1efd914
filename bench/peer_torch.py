"""The laplace-torch side of bench/peer.py: one task in this process, one JSON line out.

Runs in the benchmark's own environment (.venv-peer, built by ``make bench-peer`` from
bench/peer-requirements.txt), never in the project's: torch is no dependency of sigma. It is
started by bench/peer.py, which writes the data and the trained Keras weights to an npz file
and reads back the JSON line and the predictive σ:

    .venv-peer/bin/python bench/peer_torch.py --task iris|mlp-diag|mlp-kfac|cnn-...|tf-... --data D.npz
        --out S.npz --alpha A --beta B [--repeats R] [--pred-batch 50] [--backend backpack]

The Keras kernels (in, out) are loaded transposed into torch.nn.Linear weights (out, in), so
both libraries compute the curvature around identical weights. Steps and timings as described
in bench/peer.py; laplace-torch's regression likelihood is N(f, σ_noise²) with
σ_noise = 1/√β and its prior N(0, 1/prior_precision), so A = prior_precision·I + GGN/σ_noise²
is sigma's A = αI + βC (its MSELoss GGN carries the factor ½ that makes GGN = JᵀJ = C).
"""

from __future__ import annotations

import sys
import warnings
from importlib import metadata

import numpy as np
from memory_probe import resident_bytes

# bench/ is on sys.path as this script's folder: the helpers are shared with bench/peer.py
from peer import (
    ACTIVATION,
    IRIS,
    MLP,
    cnn_torch_weights,
    emit,
    failure,
    layer_weights,
    load_data,
    measure,
    transformer_torch_weights,
    worker_args,
)


def main():
    args = worker_args()
    warnings.filterwarnings("ignore")
    import torch
    from laplace import Laplace
    from laplace.curvature import BackPackGGN, CurvlinopsGGN
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = load_data(args.data)
    if args.task.startswith("cnn"):
        return cnn_task(args, data)
    if args.task.startswith("tf"):
        return tf_task(args, data)
    name = "iris" if args.task == "iris" else "mlp"
    widths = IRIS if name == "iris" else MLP
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[ACTIVATION[name]]

    def build(dtype):
        layers = []
        for i, (kernel, bias) in enumerate(layer_weights(data)):
            linear = torch.nn.Linear(*kernel.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
                linear.bias.copy_(torch.from_numpy(bias))
            layers += [linear] if i == len(widths) - 2 else [linear, act()]
        return torch.nn.Sequential(*layers).to(dtype).eval()

    def tensors(dtype):
        return [torch.as_tensor(data[k], dtype=dtype) for k in ("x_train", "y_train", "x_test")]

    alpha, sigma_noise = args.alpha, 1.0 / np.sqrt(args.beta)
    backends = {"backpack": BackPackGGN, "curvlinops": CurvlinopsGGN}
    backend = CurvlinopsGGN if name == "iris" else backends[args.backend]
    structure = {"iris": "full", "mlp-diag": "diag", "mlp-kfac": "kron"}[args.task]
    batch = 100 if name == "iris" else 128

    def fit(net, x, y):
        la = Laplace(
            net,
            "regression",
            subset_of_weights="all",
            hessian_structure=structure,
            sigma_noise=sigma_noise,
            prior_precision=alpha,
            backend=backend,
        )
        la.fit(DataLoader(TensorDataset(x, y), batch_size=batch))
        return la

    def predict(la, x):
        """σ² without and with the noise σ_noise², (N, K) each, GLM predictive in batches."""
        var = torch.cat(
            [
                torch.diagonal(la(x[s : s + args.pred_batch], pred_type="glm")[1], dim1=-2, dim2=-1)
                for s in range(0, len(x), args.pred_batch)
            ]
        )
        return var.numpy().astype(np.float64), (var + la.sigma_noise**2).sqrt().numpy()

    net = build(torch.float32)
    x, y, xt = tensors(torch.float32)
    row = {
        "library": "laplace-torch",
        "version": f"laplace-torch {metadata.version('laplace-torch')}, torch {torch.__version__}"
        f", curvlinops {metadata.version('curvlinops-for-pytorch')}, backpack "
        f"{metadata.version('backpack-for-pytorch')}",
        "threads": torch.get_num_threads(),
        "backend": f"{backend.__name__}, hessian_structure={structure!r}, DataLoader batch "
        f"{batch}, predictive batch {args.pred_batch}",
        "rss_setup": resident_bytes(),
    }
    out = {}
    row["fit"], la = measure(lambda: fit(net, x, y), args.repeats)
    row["pred"], (var, std) = measure(lambda: predict(la, xt), args.repeats)
    out["var32"], out["std32"] = var, std
    if name == "iris":

        def alpha_only():
            la.optimize_prior_precision(
                pred_type="glm", method="marglik", prior_structure="scalar", init_prior_prec=1.0
            )
            return float(la.prior_precision)

        def alpha_beta():  # laplace-torch's README: marglik of prior precision and sigma_noise
            log_prior = torch.zeros(1, requires_grad=True)
            log_sigma = torch.zeros(1, requires_grad=True)
            opt = torch.optim.Adam([log_prior, log_sigma], lr=1e-1)
            for _ in range(100):
                opt.zero_grad()
                neg = -la.log_marginal_likelihood(log_prior.exp(), log_sigma.exp())
                neg.backward()
                opt.step()
            return float(log_prior.exp()), float(log_sigma.exp() ** -2)

        row["ev_alpha"], row["alpha_found"] = measure(alpha_only, args.repeats)
        row["ev_both"], ab = measure(alpha_beta, args.repeats)
        row["alpha_beta_found"] = list(ab)
        row["log_evidence"] = float(
            la.log_marginal_likelihood(torch.tensor(alpha), torch.tensor(sigma_noise))
        )  # at the check's α, β
        x64, y64, xt64 = tensors(torch.float64)
        # Its full GGN is `linop @ torch.eye(P)` with the eye in torch's default dtype: float32
        # unless changed, so a float64 model gets a GGN rounded to float32. Both are recorded.
        la64 = fit(build(torch.float64), x64, y64)
        out["var64_f32eye"], out["std64_f32eye"] = predict(la64, xt64)
        torch.set_default_dtype(torch.float64)
        la64 = fit(build(torch.float64), x64, y64)
        out["var64"], out["std64"] = predict(la64, xt64)
        torch.set_default_dtype(torch.float32)
    np.savez(args.out, **out)
    emit(row)


def classifier_steps(net, x, y, xt, args, subset, structure, backend, batch):
    """(fit, predict) of laplace-torch on a classifier: ``fit()`` a Laplace of ``structure``
    over ``subset`` with ``backend`` on (x, y) in batches of ``batch``; ``predict(la)`` its
    probit GLM predictive of xt in batches of --pred-batch, as a NumPy array."""
    import torch
    from laplace import Laplace
    from torch.utils.data import DataLoader, TensorDataset

    def fit():
        la = Laplace(
            net, "classification", subset_of_weights=subset, hessian_structure=structure,
            prior_precision=args.alpha, backend=backend,
        )  # fmt: skip
        la.fit(DataLoader(TensorDataset(x, y), batch_size=batch))
        return la

    def predict(la):
        return torch.cat(
            [
                la(xt[s : s + args.pred_batch], pred_type="glm", link_approx="probit")
                for s in range(0, len(xt), args.pred_batch)
            ]
        ).numpy()

    return fit, predict


def cnn_task(args, data):
    """The CNN of bench/cnn.py with the same weights (torch layout, NCHW inputs),
    classification: the fit (kron / diag on all weights, or kron on the last layer) and the
    probit predictive probabilities (sigma's predict_proba default)."""
    import torch
    from laplace.curvature import BackPackGGN, CurvlinopsGGN

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(9216, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10),
    )  # fmt: skip
    params = [q for m in net if list(m.parameters()) for q in (m.weight, m.bias)]
    with torch.no_grad():
        for q, w in zip(params, cnn_torch_weights(data), strict=True):
            q.copy_(torch.from_numpy(np.ascontiguousarray(w)))
    net = net.eval()
    x = torch.from_numpy(data["x_train"].transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(data["y_train"]).long()
    xt = torch.from_numpy(data["x_test"].transpose(0, 3, 1, 2).copy())
    backend = {"backpack": BackPackGGN, "curvlinops": CurvlinopsGGN}[args.backend]
    subset, structure = {
        "cnn-diag": ("all", "diag"), "cnn-kfac": ("all", "kron"), "cnn-last": ("last_layer", "kron")
    }[args.task]  # fmt: skip
    batch = 128
    row = {
        "library": "laplace-torch",
        "version": f"laplace-torch {metadata.version('laplace-torch')}, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "backend": f"{backend.__name__}, subset_of_weights={subset!r}, hessian_structure="
        f"{structure!r}, DataLoader batch {batch}, predictive batch {args.pred_batch}",
        "rss_setup": resident_bytes(),
    }

    fit, predict = classifier_steps(net, x, y, xt, args, subset, structure, backend, batch)

    row["fit"], la = measure(fit, args.repeats)
    row["pred"], proba = measure(lambda: predict(la), args.repeats)
    np.savez(args.out, proba=proba)
    emit(row)


def transformer_module():
    """bench/cnn.py's transformer as a torch module whose weights laplace-torch's backends can
    see: nn.Embedding, the attention's query, key, value and output projections as nn.Linear
    (Keras' EinsumDense kernels flattened head-major), nn.LayerNorm with Keras' ε = 1e-3, the
    mean over positions and nn.Linear logits. The attention itself (scores, softmax, weighted
    sum) is tensor operations between the modules, as in torch's own attention layers."""
    import torch
    from torch import nn

    class Transformer(nn.Module):
        def __init__(self, vocab=2_000, dim=64, heads=4, key_dim=16, classes=10):
            super().__init__()
            self.heads, self.key_dim = heads, key_dim
            self.embedding = nn.Embedding(vocab, dim)
            self.query = nn.Linear(dim, heads * key_dim)
            self.key = nn.Linear(dim, heads * key_dim)
            self.value = nn.Linear(dim, heads * key_dim)
            self.out_proj = nn.Linear(heads * key_dim, dim)
            self.norm = nn.LayerNorm(dim, eps=1e-3)
            self.head = nn.Linear(dim, classes)

        def forward(self, ids):
            h = self.embedding(ids)  # (B, T, D)
            b, t, _ = h.shape

            def split(z):  # (B, T, H·Dh) → (B, H, T, Dh)
                return z.view(b, t, self.heads, self.key_dim).transpose(1, 2)

            q = split(self.query(h)) * self.key_dim**-0.5  # Keras scales the query
            k, v = split(self.key(h)), split(self.value(h))
            a = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # (B, H, T, Dh)
            a = self.out_proj(a.transpose(1, 2).reshape(b, t, -1))
            return self.head(self.norm(h + a).mean(dim=1))

    return Transformer()


def tf_task(args, data):
    """The transformer of bench/cnn.py with the same weights, classification: the fit (diag or
    kron on all weights, kron on the last layer) and the probit predictive probabilities, plus
    the GLM logit variances (untimed) for the check against sigma. A failure of laplace-torch
    (a module its backend does not support) is recorded as the user meets it, not raised."""
    import torch
    from laplace.curvature import BackPackGGN, CurvlinopsGGN

    net = transformer_module()
    net.load_state_dict(
        {k: torch.from_numpy(v) for k, v in transformer_torch_weights(data).items()}
    )
    net = net.eval()
    x = torch.from_numpy(data["x_train"]).long()
    y = torch.from_numpy(data["y_train"]).long()
    xt = torch.from_numpy(data["x_test"]).long()
    backend = {"backpack": BackPackGGN, "curvlinops": CurvlinopsGGN}[args.backend]
    subset, structure = {
        "tf-diag": ("all", "diag"), "tf-kfac": ("all", "kron"), "tf-last": ("last_layer", "kron")
    }[args.task]  # fmt: skip
    batch = 128
    row = {
        "library": "laplace-torch",
        "version": f"laplace-torch {metadata.version('laplace-torch')}, torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "backend": f"{backend.__name__}, subset_of_weights={subset!r}, hessian_structure="
        f"{structure!r}, DataLoader batch {batch}, predictive batch {args.pred_batch}",
        "rss_setup": resident_bytes(),
    }
    with torch.no_grad():
        logits = net(xt).numpy()
    diff = float(np.abs(logits - data["logits_test"]).max())
    row["logit_diff"] = diff
    row["logit_check"] = (
        f"torch logits vs Keras logits, {len(xt):,} test sequences: max |Δ| {diff:.1e} "
        f"(largest |logit| {np.abs(data['logits_test']).max():.1f})"
    )
    print(row["logit_check"], file=sys.stderr)

    fit, predict = classifier_steps(net, x, y, xt, args, subset, structure, backend, batch)

    def logit_variances(la):
        return torch.cat(
            [
                torch.diagonal(
                    la._glm_predictive_distribution(xt[s : s + args.pred_batch])[1], 0, -2, -1
                )
                for s in range(0, len(xt), args.pred_batch)
            ]
        ).numpy()

    out = {}
    try:
        row["fit"], la = measure(fit, args.repeats)
    except Exception as exc:  # what a user meets: recorded, the run goes on
        row["failed"] = f"fit: {failure(exc)}"
    else:
        try:
            row["pred"], out["proba"] = measure(lambda: predict(la), args.repeats)
        except Exception as exc:
            row["failed"] = f"predict: {failure(exc)}"
        else:
            out["fvar"] = logit_variances(la)
    np.savez(args.out, **out)
    emit(row)


if __name__ == "__main__":
    main()
