"""The layer-wise structures on a 1.2M-weight CNN (issue 26): fit and predictive cost, in units of
one gradient pass, with the sigma of another git ref side by side.

    .venv/bin/python bench/cnn.py [--n 10000] [--test 1000] [--repeats 3] [--epochs 1]
        [--steps kfac,ekfac,diag,last,mc,mcdiag] [--baseline REF] [--json FILE] [--model transformer]

The network: 28×28×1 → Conv2D 32 (3×3) → Conv2D 64 (3×3) → MaxPool 2 → Flatten → Dense 128 →
Dense 10 logits, ReLU, seeded (1,199,882 weights); classification, all weights. The data are made
here, nothing is downloaded: scikit-learn's 8×8 digits (1,797 images shipped with it) upsampled 3×
to 24×24 and padded to 28×28, each training/test image a random digit shifted by up to ±2 pixels
with N(0, 0.1²) pixel noise (--seed). The model is trained for --epochs (default 1; Adam 1e-3,
batch 128) in the parent process; --epochs 0 keeps the seeded initial weights.

``--model transformer`` runs the same steps on issue 26's small transformer classifier instead:
token ids (32 per sequence, a vocabulary of 2,000) → Embedding 64 → MultiHeadAttention (4 heads
of 16) with a residual → LayerNormalization → mean over positions → Dense 10 logits; the data
are generated here (each class has 20 marker tokens; a sequence of class c carries 4 of them
among uniform random tokens).

The unit is one gradient pass: the gradient of the summed cross-entropy over the N training
images (traced once, warm, batches of --grad-batch), measured in the same process as the step
(the median of 3 passes before the step and 3 after it);
the predictive is in units of the same pass over the test points. Each step runs in a subprocess
of its own (sigma's memory is that process's alone):

* ``kfac``  – ``Laplace(structure="kfac")`` fit (one run: tracing included), then
  ``predict_proba`` for --test points (the first call traces; the median of --repeats after it);
* ``ekfac`` – the ekfac fit (one run);
* ``diag``  – as kfac with structure="diag";
* ``last``  – kfac on the last layer's weights (weights="last_layer"): median of --repeats fits
  after a first (tracing) one;
* ``mc``    – kfac with ``curvature="ggn_mc"`` (one sampled label per input), one run;
* ``mcdiag`` – diag with ``curvature="ggn_mc"``, one run (no eigendecomposition: the MC GGN's
  cost alone).

Memory: "peak" is the step process's high-water mark (VmHWM) at the end of the step, TensorFlow,
the data and the model included; "Δ" the largest resident size above the level before the step,
sampled every 5 ms by a thread.

--baseline REF runs every step a second time with the sigma of git ref REF (extracted by
``git archive`` into a temporary folder and put first on the subprocess' PYTHONPATH), on the same
data and weights; the table then has a column per sigma: "REF at <sha>" and "this checkout".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_probe import PeakRSS, peak_bytes, resident_bytes  # noqa: E402  (shared with bench/peer.py)

STEPS = ("kfac", "ekfac", "diag", "last", "mc", "mcdiag")
SHAPE = (28, 28, 1)
CLASSES = 10
VOCAB, LENGTH = 2_000, 32


# -- data and model (also used by bench/peer.py) ---------------------------------------------------
def digits_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 28, 28, 1) float32 in [0, 1] (plus noise) and their labels (n,) int:
    scikit-learn's 8×8 digits upsampled 3× (24×24), padded to 28×28, shifted by up to ±2 pixels
    and with N(0, 0.1²) noise per pixel."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = np.kron(digits.images / 16.0, np.ones((3, 3)))  # (1797, 24, 24)
    base = np.pad(base, ((0, 0), (2, 2), (2, 2)))
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), n)
    shifts = rng.integers(-2, 3, size=(n, 2))
    x = np.empty((n, *SHAPE[:2]), np.float32)
    for i, (j, (dy, dx)) in enumerate(zip(pick, shifts, strict=True)):
        x[i] = np.roll(base[j], (dy, dx), axis=(0, 1))
    x += 0.1 * rng.standard_normal(x.shape).astype(np.float32)
    return x[..., None], digits.target[pick].astype(np.int64)


def token_sequences(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n sequences (n, LENGTH) int32 of uniform tokens, 4 of them replaced by marker tokens of
    the sequence's class (20 markers per class, ids below 200), and the labels (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.integers(200, VOCAB, size=(n, LENGTH)).astype(np.int32)
    for i in range(n):
        where = rng.choice(LENGTH, 4, replace=False)
        x[i, where] = y[i] * 20 + rng.integers(0, 20, 4)
    return x, y.astype(np.int64)


def data(n: int, n_test: int, seed: int, model: str = "cnn"):
    make = token_sequences if model == "transformer" else digits_images
    x, y = make(n + n_test, seed)
    return x[:n], y[:n], x[n:], y[n:]


def transformer(seed: int):
    """Issue 26's small transformer classifier, seeded (see the module docstring)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, 64)(inp)
    a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=16)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inp, keras.layers.Dense(CLASSES)(h))


def network(model: str, seed: int):
    return transformer(seed) if model == "transformer" else cnn(seed)


def cnn(seed: int):
    """The issue's CNN, seeded: 28×28×1 → Conv 32 → Conv 64 → MaxPool 2 → Dense 128 → 10."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(CLASSES),
        ]
    )


def train(net, x, y, epochs: int, seed: int):
    import keras

    if epochs <= 0:
        return net
    keras.utils.set_random_seed(seed)
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    net.fit(x, y, epochs=epochs, batch_size=128, verbose=0, shuffle=True)
    return net


def prepare(n: int, n_test: int, epochs: int, seed: int, path: Path, model: str = "cnn") -> dict:
    """Data and trained weights in an npz file (the workers' common input); returns info."""
    x, y, xt, yt = data(n, n_test, seed, model)
    net = train(network(model, seed), x, y, epochs, seed)
    logits = net.predict(xt, verbose=0, batch_size=500)
    weights = net.get_weights()
    np.savez(
        path,
        x_train=x,
        y_train=y,
        x_test=xt,
        y_test=yt,
        logits_test=logits,  # the Keras logits (bench/peer.py checks torch's against them)
        **{f"w{i}": w for i, w in enumerate(weights)},
    )
    return {
        "params": int(sum(w.size for w in weights)),
        "test_accuracy": float(np.mean(np.argmax(logits, 1) == yt)),
    }


def load(path):
    with np.load(path) as f:
        d = {k: f[k] for k in f.files}
    n_w = sum(1 for k in d if k.startswith("w"))
    return d, [d[f"w{i}"] for i in range(n_w)]


# -- the worker: one step in this process ---------------------------------------------------------
def gradient_pass(net, x, y, batch_size: int):
    """A function running one warm gradient pass of the summed cross-entropy; traced here."""
    import keras
    import tensorflow as tf

    spec = [tf.TensorSpec([None, *x.shape[1:]], x.dtype), tf.TensorSpec([None], tf.int64)]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")

    @tf.function(input_signature=spec)
    def grad(xb, yb):
        with tf.GradientTape() as tape:
            e = loss(yb, net(xb, training=False))
        return tape.gradient(e, net.trainable_variables)

    def run():
        for s in range(0, len(x), batch_size):
            out = grad(x[s : s + batch_size], y[s : s + batch_size])
        return [tf.convert_to_tensor(g).numpy() for g in out]

    run()
    return run


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def worker(args) -> dict:
    import tensorflow as tf

    import sigma

    d, weights = load(args.data)
    net = network(args.model, args.seed)
    net.set_weights(weights)
    x, y, xt = d["x_train"], d["y_train"], d["x_test"]
    # the unit passes are timed 3 times before the step and 3 times after it (median of the
    # 6): one pass of the small transformer varied 0.8–1.3 s between step processes timed
    # before the step alone, more than the steps' own differences
    unit_pass = gradient_pass(net, x, y, args.grad_batch)
    test_pass = gradient_pass(net, xt, d["y_test"], args.grad_batch)
    units, units_test = timed(unit_pass, 3)[0], timed(test_pass, 3)[0]
    row = {
        "step": args.worker,
        "sigma": str(Path(sigma.__file__).resolve().parent),
        "tf": tf.__version__,
    }
    row["rss_setup"] = resident_bytes()
    structure = {"last": "kfac", "mc": "kfac", "mcdiag": "diag"}.get(args.worker, args.worker)
    kwargs = {"weights": "last_layer"} if args.worker == "last" else {}
    if args.worker in ("mc", "mcdiag"):
        kwargs = {"curvature": "ggn_mc", "seed": args.seed}

    def fit():
        return sigma.Laplace(net, x, y, likelihood="classification", structure=structure, **kwargs)

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        la = fit()
        row["fit_first"] = time.perf_counter() - t0
    row["fit_mem"], row["fit_peak"] = mem.bytes, peak_bytes()
    row["fit"] = row["fit_first"]
    if args.worker == "last":
        times, la = timed(fit, args.repeats)
        row["fit"], row["fit_all"] = statistics.median(times), times
        row["fit_peak"] = peak_bytes()
    if args.worker in ("kfac", "diag"):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            p = la.predict_proba(xt)
            row["pred_first"] = time.perf_counter() - t0
            times, p2 = timed(lambda: la.predict_proba(xt), args.repeats)
        assert p.shape == (len(xt), CLASSES) and np.all(np.isfinite(p)), p
        row["pred"], row["pred_all"] = statistics.median(times), times
        row["pred_mem"], row["pred_peak"] = mem.bytes, peak_bytes()
        row["pred_check"] = float(np.abs(p - p2).max())
        np.save(args.out, p)
    units += timed(unit_pass, 3)[0]
    units_test += timed(test_pass, 3)[0]
    row["unit"], row["unit_test"] = statistics.median(units), statistics.median(units_test)
    return row


# -- the parent ----------------------------------------------------------------------------------
def git(*argv, cwd=ROOT) -> str:
    return subprocess.run(
        ["git", *argv], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def checkout_label() -> str:
    sha = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "sigma")
    return f"this checkout ({sha}{'+changes' if dirty else ''})"


def extract(ref: str, dest: Path) -> str:
    """The sigma package of git ref ``ref`` into dest/sigma; returns the short sha."""
    sha = git("rev-parse", "--short", f"{ref}^{{commit}}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", sha, "sigma"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return sha


def run_step(step: str, sigma_root: Path, common: list[str], out: Path) -> dict | None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sigma_root), str(ROOT / "bench")]))
    cmd = [sys.executable, __file__, "--worker", step, *common, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(f"{step} with {sigma_root}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall"] = wall
    print(f"  {step} ({sigma_root}): {wall:.0f} s", file=sys.stderr)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="training images")
    p.add_argument("--test", type=int, default=1_000, help="test points for the predictive")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (0: untrained)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the fast steps (median)")
    p.add_argument("--grad-batch", type=int, default=500, help="batch of the unit gradient pass")
    p.add_argument("--steps", default=",".join(STEPS), help=f"subset of {','.join(STEPS)}")
    p.add_argument("--baseline", help="git ref whose sigma runs side by side (e.g. main)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("cnn", "transformer"), default="cnn")
    p.add_argument("--json", help="also write the raw rows to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        p.error(f"unknown steps {sorted(unknown)}; choose from {STEPS}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        info = prepare(args.n, args.test, args.epochs, args.seed, tmp / "data.npz", args.model)
        print(
            f"data and training: {time.perf_counter() - t0:.0f} s, test accuracy "
            f"{info['test_accuracy']:.3f}",
            file=sys.stderr,
        )
        variants = []
        if args.baseline:
            (tmp / "base").mkdir()
            sha = extract(args.baseline, tmp / "base")
            variants.append((f"{args.baseline} at {sha}", tmp / "base"))
        variants.append((checkout_label(), ROOT))
        common = ["--data", str(tmp / "data.npz"), "--repeats", str(args.repeats)]
        common += ["--grad-batch", str(args.grad_batch), "--seed", str(args.seed)]
        common += ["--model", args.model]
        results = {}
        for step in steps:  # one heavy process at a time, the variants of a step back to back
            for v, (label, root) in enumerate(variants):
                results[(step, label)] = run_step(step, root, common, tmp / f"p{v}-{step}.npy")
            if len(variants) == 2 and step in ("kfac", "diag"):
                files = [tmp / f"p{v}-{step}.npy" for v in range(2)]
                if all(f.exists() for f in files):
                    a, b = (np.load(f) for f in files)
                    info[f"{step}_proba_diff"] = float(np.abs(a - b).max())
    if args.json:
        rows = [{"variant": lab, **(r or {})} for (_, lab), r in results.items()]
        Path(args.json).write_text(json.dumps({"args": vars(args), "info": info, "rows": rows}))
    print_table(results, [lab for lab, _ in variants], steps, args, info)


def print_table(results, labels, steps, args, info):
    gb = 1e9
    net = (
        "transformer: Embedding 2,000×64 → MHA 4×16 + residual → LayerNorm → mean → D10"
        if args.model == "transformer"
        else "CNN 28×28×1 → C32 → C64 → pool → D128 → D10"
    )
    print(
        f"{net} ({info['params']:,} weights), "
        f"classification, N = {args.n:,}, {args.test:,} test points, {args.epochs} epoch(s) of "
        f"training (test accuracy {info['test_accuracy']:.3f}); {os.cpu_count()} cores"
    )
    for lab in labels:
        units = [r["unit"] for (_, lb), r in results.items() if lb == lab and r]
        tests = [r["unit_test"] for (_, lb), r in results.items() if lb == lab and r]
        if units:
            print(
                f"  {lab}: one gradient pass over the N images {min(units):.2f}–{max(units):.2f} s, "
                f"over the test points {min(tests):.3f}–{max(tests):.3f} s (per step process)"
            )
    rows = []
    for step in steps:
        if step == "last":
            rows.append((step, "fit", f"last-layer kfac fit (median of {args.repeats})"))
            continue
        rows.append((step, "fit", f"{step} fit (one run, tracing included)"))
        if step in ("kfac", "diag"):
            rows.append((step, "pred", f"{step} predict_proba, {args.test:,} pts (median)"))
    width = 44
    head = f"{'step':<{width}}" + "".join(f" | {lab[:34]:^34}" for lab in labels)
    sub = f"{'':<{width}}" + "".join(
        f" | {'s':>8} {'× pass':>7} {'peak GB':>8} {'Δ GB':>6}" for _ in labels
    )
    print(head)
    print(sub)
    print("-" * len(sub))
    for step, what, text in rows:
        line = f"{text:<{width}}"
        for lab in labels:
            r = results.get((step, lab))
            if not r or what not in r:
                line += f" | {'failed':>34}"
                continue
            unit = r["unit"] if what == "fit" else r["unit_test"]
            line += (
                f" | {r[what]:8.2f} {r[what] / unit:7.1f} {r[what + '_peak'] / gb:8.2f} "
                f"{r[what + '_mem'] / gb:6.2f}"
            )
        rows_extra = ""
        if what == "pred":
            r = results.get((step, labels[-1]))
            if r:
                rows_extra = f"  (first call {r['pred_first']:.2f} s)"
        print(line + rows_extra)
    print(
        "× pass: seconds / one gradient pass (fits: over the N training images; predictive: over "
        "the test points), measured in the step's own process. peak: the process's high-water "
        "mark; Δ: above the resident size before the step."
    )
    for step in ("kfac", "diag"):
        if f"{step}_proba_diff" in info:
            print(
                f"{step}: largest difference of the two predict_proba results "
                f"{info[step + '_proba_diff']:.1e}"
            )


if __name__ == "__main__":
    main()
