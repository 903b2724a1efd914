"""sigma against laplace-torch on the same data, the same network and the same weights.

    make bench-peer                       # builds .venv-peer (torch CPU + laplace-torch), then runs
    .venv/bin/python bench/peer.py --peer-python .venv-peer/bin/python [--n 10000] [--test 1000]
        [--repeats 5] [--mlp-repeats 2] [--pred-batch 50] [--backend backpack|curvlinops]

What it measures, in one run, printed as one table:

* Iris (scikit-learn's copy, no download; 100 training points, 50 test points), a 4-16-16-3
  tanh MLP trained as a regression on one-hot targets: the full GGN fit (cold: the first in the
  process; warm: a further Laplace object on the same model), the GLM predictive σ for the 50
  test points (noise 1/β included), α by the evidence with β fixed (sigma: MacKay's fixed point,
  ``optimize_evidence(fix_beta=True)``; laplace-torch: ``optimize_prior_precision(method=
  "marglik", prior_structure="scalar")``, its default 100 Adam steps) and α, β together (sigma:
  ``optimize_evidence()``; laplace-torch: 100 Adam steps on ``log_marginal_likelihood(prior,
  sigma_noise)`` as in its README).
* A 784-256-256-10 ReLU MLP on N = 10,000 synthetic regression samples
  (``sigma.data.teacher_regression``) trained for two epochs: the diagonal and the Kronecker
  (sigma "kfac", laplace-torch "kron") fits, cold and warm, and the predictive σ for 1,000 test
  points with each (laplace-torch in batches of --pred-batch).

laplace-torch's backends: on Iris its default, CurvlinopsGGN (the full GGN from a curvlinops
linear operator); on the MLP BackPackGGN by default (--backend): the exact diagonal GGN
(DiagGGNExact) and the exact-GGN Kronecker factors (KFLR), where the default CurvlinopsGGN forms
the exact diagonal from every sample's full Jacobian and is far slower at this size
(--backend curvlinops runs it: the KFAC of curvlinops, type-2, and that diagonal).

The parent process (this script, in the project's environment) makes the data and trains each
Keras model once, then writes the data and the weights to an npz file; every measurement runs in
a subprocess of its own: sigma's with this interpreter (importing the sigma of this checkout),
laplace-torch's with --peer-python (``bench/peer_torch.py``), which loads the same weights into
an equivalent ``torch.nn.Sequential`` (kernels transposed). Times are wall-clock seconds, warm
figures the median of the warm runs; Δpeak is the largest resident memory above the level before
the step, sampled every 5 ms by a thread (both the cold and the warm runs of the step); the
process peak is its high-water mark (VmHWM).

Correctness, in the same run: with the same α (prior_precision) and β (sigma_noise = 1/√β) the
two predictive variances gᵀA⁻¹g (noise excluded: the stringent comparison) and σ (noise included)
must agree: the largest relative difference is printed for the full GGN on Iris in float32 (as
timed) and again in float64, for the diagonal GGN on the MLP, and, for information only, for the
Kronecker factorisations, whose definitions differ between the libraries. Also printed: the log
evidence of each at the same α, β on Iris, and the α (and β) at which each library puts the
evidence optimum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IRIS = (4, 16, 16, 3)  # tanh hidden layers
MLP = (784, 256, 256, 10)  # relu hidden layers
ACTIVATION = {"iris": "tanh", "mlp": "relu"}
TASKS = ("iris", "mlp-diag", "mlp-kfac")


# -- helpers shared with bench/peer_torch.py (standard library and numpy only) ---------------------
def resident_bytes() -> int:
    """The current resident set size of this process (Linux /proc; else the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_bytes() -> int:
    """The peak resident set size of this process so far: VmHWM (Linux /proc), else ru_maxrss
    (which on Linux also counts the parent's size at the fork that started this process)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.bytes``: the peak resident memory above the level
    at entry, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.bytes = interval, 0

    def _watch(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, resident_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self._base = self._peak = resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(0, max(self._peak, resident_bytes()) - self._base)
        return False


def measure(fn, repeats: int, cold: bool = True) -> tuple[dict, object]:
    """Run ``fn`` once cold (if ``cold``) then ``repeats`` times warm; returns ({cold, warm
    (median), warm_all, mem}, the last result). mem: Δpeak over all the runs."""
    row, out, mem = {}, None, 0
    if cold:
        with PeakRSS() as m:
            t0 = time.perf_counter()
            out = fn()
            row["cold"] = time.perf_counter() - t0
        mem = m.bytes
    times = []
    with PeakRSS() as m:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    row.update(warm=statistics.median(times), warm_all=times, mem=max(mem, m.bytes))
    return row, out


def load_data(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def layer_weights(data: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(kernel (in, out), bias (out,)), ...] in Keras layout."""
    n = sum(1 for k in data if k.startswith("kernel"))
    return [(data[f"kernel{i}"], data[f"bias{i}"]) for i in range(n)]


def worker_args(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--data", required=True, help="npz written by the parent")
    p.add_argument("--out", required=True, help="npz to write the predictive σ to")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pred-batch", type=int, default=50)
    p.add_argument("--backend", default="backpack")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def emit(row: dict):
    """The worker's result: one JSON line, last on stdout."""
    row["peak"] = peak_bytes()
    print(json.dumps(row), flush=True)


# -- the sigma worker ---------------------------------------------------------------------------
def sigma_worker(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import sigma

    data = load_data(args.data)
    name = "iris" if args.task == "iris" else "mlp"

    def build(dtype):
        widths = IRIS if name == "iris" else MLP
        net = sigma.lab.mlp(
            widths[0], widths[1:-1], widths[-1], activation=ACTIVATION[name], dtype=dtype
        )
        net.set_weights([a.astype(dtype) for pair in layer_weights(data) for a in pair])
        return net

    net = build("float32")
    x, y, xt = (data[k].astype("float32") for k in ("x_train", "y_train", "x_test"))
    a, b = args.alpha, args.beta
    row = {
        "library": "sigma",
        "version": f"sigma {sigma.__version__}, TensorFlow {tf.__version__}",
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
        "rss_setup": resident_bytes(),
    }
    out = {}
    if name == "iris":
        row["fit"], la = measure(
            lambda: sigma.Laplace(net, x, y, structure="full", alpha=a, beta=b), args.repeats
        )
        row["pred"], (_, std) = measure(lambda: la.predict(xt), args.repeats)
        out["std32"], out["var32"] = std, la.predict(xt, noise=False)[1] ** 2

        def alpha_only():
            la.alpha, la.beta = 1.0, b
            return la.optimize_evidence(fix_beta=True).alpha

        def alpha_beta():
            la.alpha, la.beta = 1.0, 1.0
            la.optimize_evidence()
            return la.alpha, la.beta

        row["ev_alpha"], row["alpha_found"] = measure(alpha_only, args.repeats)
        row["ev_both"], ab = measure(alpha_beta, args.repeats)
        row["alpha_beta_found"] = [float(v) for v in ab]
        row["log_evidence"] = float(la.log_evidence(alpha=a, beta=b))  # at the check's α, β
        # float64 from the stored float64 data (not from the float32 copies above)
        x64, y64, xt64 = (data[k].astype("float64") for k in ("x_train", "y_train", "x_test"))
        la64 = sigma.Laplace(build("float64"), x64, y64, structure="full", alpha=a, beta=b)
        out["std64"] = la64.predict(xt64)[1]
        out["var64"] = la64.predict(xt64, noise=False)[1] ** 2
    else:
        structure = args.task.split("-")[1]
        row["fit"], la = measure(
            lambda: sigma.Laplace(net, x, y, structure=structure, alpha=a, beta=b), args.repeats
        )
        row["pred"], (_, std) = measure(lambda: la.predict(xt), args.repeats)
        out["std32"], out["var32"] = std, la.predict(xt, noise=False)[1] ** 2
    np.savez(args.out, **out)
    emit(row)


# -- the parent: data, training, workers, table -------------------------------------------------
def prepare(args, tmp: Path) -> dict[str, Path]:
    """Data and trained Keras weights for both networks, written once to npz files."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sigma

    try:
        from sigma.data import teacher_regression
    except ImportError:  # the notebook helpers live in sigma.lab after the core's redesign
        from sigma.lab.data import teacher_regression

    paths = {}
    x, xt, y, _ = sigma.lab.iris_split(test_size=0.33, seed=0)
    net = sigma.lab.mlp(*IRIS[:1], IRIS[1:-1], IRIS[-1], activation="tanh", seed=args.seed)
    sigma.lab.train(net, x, y, epochs=150, batch_size=10, learning_rate=3e-3, seed=args.seed)
    paths["iris"] = tmp / "iris.npz"
    np.savez(paths["iris"], x_train=x, y_train=y, x_test=xt, **kernels(net))

    x, xt, y, _ = teacher_regression(args.n, args.test, seed=args.seed)
    x, xt, y = x.astype("float32"), xt.astype("float32"), y.astype("float32")
    net = sigma.lab.mlp(MLP[0], MLP[1:-1], MLP[-1], activation="relu", seed=args.seed)
    sigma.lab.train(
        net, x, y, epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=args.seed
    )
    paths["mlp"] = tmp / "mlp.npz"
    np.savez(paths["mlp"], x_train=x, y_train=y, x_test=xt, **kernels(net))
    return paths


def kernels(net) -> dict[str, np.ndarray]:
    """Keras weights as kernel0, bias0, kernel1, ... (kernels (in, out), as Keras stores them)."""
    w = net.get_weights()
    return {
        **{f"kernel{i}": k for i, k in enumerate(w[0::2])},
        **{f"bias{i}": b for i, b in enumerate(w[1::2])},
    }


def run_worker(cmd, env=None) -> dict | None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        print(f"worker failed: {' '.join(cmd[:4])} ...\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_rel(a, b) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-python", default=str(ROOT / ".venv-peer" / "bin" / "python"))
    p.add_argument("--n", type=int, default=10_000, help="MLP training samples")
    p.add_argument("--test", type=int, default=1_000, help="MLP test points for the predictive")
    p.add_argument("--epochs", type=int, default=2, help="MLP training epochs")
    p.add_argument("--repeats", type=int, default=5, help="warm runs per Iris step (median)")
    p.add_argument("--mlp-repeats", type=int, default=2, help="warm runs per MLP step (median)")
    p.add_argument("--pred-batch", type=int, default=50, help="laplace-torch predictive batch")
    p.add_argument(
        "--backend",
        choices=("backpack", "curvlinops"),
        default="backpack",
        help="laplace-torch curvature backend for the MLP rows (Iris: its default, curvlinops)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="α for the fits and the σ check")
    p.add_argument("--iris-beta", type=float, default=25.0, help="β on Iris")
    p.add_argument("--mlp-beta", type=float, default=100.0, help="β on the MLP")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args, _ = p.parse_known_args()
    sys.path.insert(0, str(ROOT))  # this checkout's sigma, whatever is installed
    if args.worker:
        sigma_worker(worker_args())
        return
    if not Path(args.peer_python).exists():
        sys.exit(f"no peer interpreter at {args.peer_python}: build it with `make bench-peer`")

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = prepare(args, tmp)
        print(f"data and training: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for task in [t for t in args.tasks.split(",") if t]:
            name = "iris" if task == "iris" else "mlp"
            beta = args.iris_beta if name == "iris" else args.mlp_beta
            common = ["--task", task, "--data", str(paths[name]), "--alpha", str(args.alpha)]
            common += ["--beta", str(beta), "--pred-batch", str(args.pred_batch)]
            common += ["--backend", args.backend]
            common += ["--repeats", str(args.repeats if name == "iris" else args.mlp_repeats)]
            for lib, cmd in (
                ("sigma", [sys.executable, __file__, "--worker", "sigma"]),
                ("torch", [args.peer_python, str(ROOT / "bench" / "peer_torch.py")]),
            ):
                outfile = tmp / f"{lib}-{task}.npz"
                t1 = time.perf_counter()
                row = run_worker([*cmd, *common, "--out", str(outfile)], env=env)
                print(f"{task} {lib}: {time.perf_counter() - t1:.0f} s", file=sys.stderr)
                if row is not None:
                    row["sigma_out"] = load_data(outfile)
                results[(task, lib)] = row
    print_table(results, args)


def fmt(v, digits=3):
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if v < 100 else f"{v:.0f}"


def print_table(results, args):
    mb = 2.0**20
    any_row = next((r for r in results.values() if r), None)
    if any_row is None:
        print("no results")
        return
    versions = {lib: r["version"] for (_, lib), r in results.items() if r}
    threads = {lib: r["threads"] for (_, lib), r in results.items() if r}
    print(
        f"sigma vs laplace-torch, CPU ({os.cpu_count()} cores; threads: sigma "
        f"{threads.get('sigma')}, torch {threads.get('torch')}), float32 unless stated; "
        f"warm = median of {args.repeats} runs (Iris) / {args.mlp_repeats} runs (MLP)"
    )
    for lib in ("sigma", "torch"):
        if lib in versions:
            print(f"  {lib}: {versions[lib]}")
    steps = [
        ("iris", "fit", "Iris 4-16-16-3 full GGN fit"),
        ("iris", "pred", "Iris predictive σ, 50 points"),
        ("iris", "ev_alpha", "Iris α by evidence (β fixed)"),
        ("iris", "ev_both", "Iris α, β by evidence"),
        ("mlp-diag", "fit", f"MLP diag fit, N={args.n:,}"),
        ("mlp-diag", "pred", f"MLP diag predictive, {args.test:,} pts"),
        ("mlp-kfac", "fit", f"MLP kfac/kron fit, N={args.n:,}"),
        ("mlp-kfac", "pred", f"MLP kfac/kron predictive, {args.test:,}"),
    ]
    head = (
        f"{'step':<38} {'sigma cold':>10} {'sigma warm':>10} {'torch cold':>10} "
        f"{'torch warm':>10} {'warm t/s':>8} {'sigma ΔMB':>9} {'torch ΔMB':>9}"
    )
    print(head)
    print("-" * len(head))
    for task, step, label in steps:
        s, t = results.get((task, "sigma")), results.get((task, "torch"))
        if s is None and t is None:
            continue
        s, t = (s or {}).get(step, {}), (t or {}).get(step, {})
        ratio = t["warm"] / s["warm"] if s.get("warm") and t.get("warm") else None
        print(
            f"{label:<38} {fmt(s.get('cold')):>10} {fmt(s.get('warm')):>10} "
            f"{fmt(t.get('cold')):>10} {fmt(t.get('warm')):>10} "
            f"{fmt(ratio, 1) + '×' if ratio else '—':>8} "
            f"{fmt(s['mem'] / mb, 0) if 'mem' in s else '—':>9} "
            f"{fmt(t['mem'] / mb, 0) if 'mem' in t else '—':>9}"
        )
    print("seconds; warm t/s = laplace-torch warm / sigma warm; ΔMB = peak resident memory above")
    print("the level before the step (cold and warm runs), sampled every 5 ms.")
    print()
    print(f"{'process':<12} {'library':<8} {'setup MB':>9} {'peak MB':>8}  backend / notes")
    for (task, lib), r in results.items():
        if r is None:
            print(f"{task:<12} {lib:<8} failed (see stderr)")
            continue
        note = r.get("backend", "")
        print(f"{task:<12} {lib:<8} {r['rss_setup'] / mb:9.0f} {r['peak'] / mb:8.0f}  {note}")
    print()
    print("σ agreement (same weights, same α and β): max over points and outputs of |s − t| / |t|")
    checks = [
        ("iris", "32", f"Iris full GGN, float32 (α={args.alpha:g}, β={args.iris_beta:g})"),
        ("iris", "64", f"Iris full GGN, float64 (α={args.alpha:g}, β={args.iris_beta:g})"),
        ("iris", "64_f32eye", "  same, laplace-torch with torch's default dtype left float32"),
        ("mlp-diag", "32", f"MLP diag GGN, float32 (α={args.alpha:g}, β={args.mlp_beta:g})"),
        ("mlp-kfac", "32", "MLP kfac vs kron, float32 (definitions differ; for information)"),
    ]
    for task, prec, label in checks:
        s, t = results.get((task, "sigma")), results.get((task, "torch"))
        if not s or not t or f"var{prec[:2]}" not in s["sigma_out"]:
            continue
        so, to = s["sigma_out"], t["sigma_out"]
        if f"var{prec}" not in to:
            continue
        dv = max_rel(so[f"var{prec[:2]}"], to[f"var{prec}"])
        ds = max_rel(so[f"std{prec[:2]}"], to[f"std{prec}"])
        print(f"  {label:<66} gᵀA⁻¹g {dv:8.1e}   σ (with 1/β) {ds:8.1e}")
    s, t = results.get(("iris", "sigma")), results.get(("iris", "torch"))
    if s and t and "var64" in t["sigma_out"]:
        ref = s["sigma_out"]["var64"]
        print(
            "  Iris float32 against the float64 gᵀA⁻¹g (where the float32 difference comes from): "
            f"sigma {max_rel(s['sigma_out']['var32'], ref):.1e}, laplace-torch "
            f"{max_rel(t['sigma_out']['var32'], ref):.1e}"
        )
    if s and t:
        print()
        print(
            f"log evidence on Iris at α={args.alpha:g}, β={args.iris_beta:g}: sigma "
            f"{s['log_evidence']:.6f}, laplace-torch {t['log_evidence']:.6f} "
            "(log_marginal_likelihood, float32)"
        )
        print("evidence optimum on Iris (same curvature):")
        print(
            f"  α with β={args.iris_beta:g} fixed: sigma {s['alpha_found']:.6g} (MacKay fixed point), "
            f"laplace-torch {t['alpha_found']:.6g} (100 Adam steps, lr 0.1)"
        )
        sa, sb = s["alpha_beta_found"]
        ta, tb = t["alpha_beta_found"]
        print(
            f"  α, β together:   sigma α={sa:.6g} β={sb:.6g}; laplace-torch α={ta:.6g} "
            f"β={tb:.6g} (100 Adam steps on log α, log σ_noise)"
        )


if __name__ == "__main__":
    main()
