"""The zoo: networks nobody here wrote — keras.applications and KerasHub — through sigma end to
end. Run by tests/test_zoo.py, one process per family (a segmentation fault is then a failed
test, not a dead suite); by hand, to reproduce one case:

    python tests/zoo_models.py hub --only gpt2/kfac [--size small]

Each model is built from its library's own constructor with random weights (``weights=None``;
KerasHub backbones from small constructor arguments, never a preset: nothing is downloaded),
on random inputs / token ids made here, untrained. For each case (a structure over a choice of
weights) the process fits ``sigma.Laplace(..., likelihood="classification")``, optimises the
evidence, predicts probabilities and logit covariances, saves and loads the fit (same
predictions), serves it through ``to_keras()`` (same probabilities), and prints one JSON line:
``{"zoo": "case", "model", "case", "status": "pass"|"fail", "step", "error", "fit_s",
"peak_mb", "estimate_mb", ...}``. Before each case it prints ``{"zoo": "start", ...}``, so a
process that dies names the case it died in. A failing case does not stop the others.

Memory: the peak resident memory of the process during fit + evidence + predict, above its
level when the case starts (Linux: /proc/self/clear_refs resets the high-water mark VmHWM),
against ``la.memory_estimate``; the process's own peak (ru_maxrss) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import sigma  # noqa: E402

K = 3  # classes
# The memory a fit may plan to use, fixed so that a structure's refusal does not depend on what
# else the machine is doing (sigma's default: 80% of the memory available at the time).
MAX_MEMORY = "8GB"
# The sizes: "n" training samples and "n_test" test samples; token ids in [1, "vocab"),
# sequences of "seq" tokens (a padded tail); the KerasHub backbones' "layers", "hidden" size and
# "intermediate" (feed-forward) size. SIGMA_ZOO=all runs "full"; `make test` runs "small" (--size
# small): one transformer block instead of two, narrower, on fewer samples. Tracing dominates
# (a graph per fit, evidence check, covariance and served model) and grows with the number of
# blocks; sizes barely count: GPT-2 kfac + lora-full, one process with one TensorFlow thread
# (as under xdist), took 57 s of CPU in "full" and 31 s in "small", TensorFlow's import included.
# "small" still runs every kind of layer the backbone has (token and position embeddings,
# masked self-attention with its EinsumDense projections and their LoRA adapters, layer norms,
# the feed-forward block) with two attention heads.
SIZES = {
    "full": {"n": 24, "n_test": 6, "vocab": 64, "seq": 8, "layers": 2, "hidden": 16,
             "intermediate": 32},
    "small": {"n": 16, "n_test": 4, "vocab": 32, "seq": 8, "layers": 1, "hidden": 8,
              "intermediate": 16},
}  # fmt: skip
SIZE = SIZES["full"]  # main() sets it from --size


# -- the models: each builder returns (model, x_train, y_train, x_test, extra) ------------------
def _images(size=32):
    N, n = SIZE["n"], SIZE["n"] + SIZE["n_test"]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, K, size=n)
    return x[:N], y[:N], x[N:]


def _classifier_on(base):
    return keras.Model(base.input, keras.layers.Dense(K, name="logits")(base.output))


def mobilenet_v3_small():
    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    return (_classifier_on(base), *_images(), {})


def resnet50():
    keras.utils.set_random_seed(0)
    base = keras.applications.ResNet50(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg"
    )
    return (_classifier_on(base), *_images(), {})


def _tokens(segments=False):
    """Random token ids with a padded tail of random length (padding_mask 0 there, id 0)."""
    N, n, VOCAB, SEQ = SIZE["n"], SIZE["n"] + SIZE["n_test"], SIZE["vocab"], SIZE["seq"]
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, size=(n, SEQ)).astype("int32")
    lengths = rng.integers(SEQ // 2, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype("int32")
    ids *= mask
    x = {"token_ids": ids, "padding_mask": mask}
    if segments:
        x["segment_ids"] = np.zeros_like(ids)
    y = rng.integers(0, K, size=n)
    return {k: v[:N] for k, v in x.items()}, y[:N], {k: v[N:] for k, v in x.items()}


def _hub_config():
    return {"vocabulary_size": SIZE["vocab"], "num_layers": SIZE["layers"], "num_heads": 2,
            "hidden_dim": SIZE["hidden"], "intermediate_dim": SIZE["intermediate"],
            "max_sequence_length": 2 * SIZE["seq"]}  # fmt: skip


def gpt2():
    """GPT2Backbone (SIZES: 2 layers, hidden 16 in "full"; 1 and 8 in "small") → masked mean
    over the sequence → Dense logits; the backbone is returned too, for its LoRA adapters."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(**_hub_config())
    inputs = {
        "token_ids": keras.Input((None,), dtype="int32", name="token_ids"),
        "padding_mask": keras.Input((None,), dtype="int32", name="padding_mask"),
    }
    sequence = backbone(inputs)
    pooled = keras.layers.GlobalAveragePooling1D()(sequence, mask=inputs["padding_mask"])
    model = keras.Model(inputs, keras.layers.Dense(K, name="logits")(pooled))
    return (model, *_tokens(), {"backbone": backbone})


def bert():
    """KerasHub's own BertTextClassifier task on a small BertBackbone, no preprocessor: the
    pooled [CLS] output → dropout → Dense logits."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(**_hub_config(), num_segments=2)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=K, preprocessor=None)
    return (model, *_tokens(segments=True), {"backbone": backbone})


def _lora_adapters(model, extra, rank=2):
    """Keras' own LoRA on the backbone's attention (query/value EinsumDense layers): after
    ``enable_lora`` only the adapters (and the head outside the backbone) are trainable. The
    B factors start at zero (then the A factors have no gradient); set them to small random
    values as a few steps of fine-tuning would."""
    extra["backbone"].enable_lora(rank)
    rng = np.random.default_rng(2)
    adapters = [v for v in model.trainable_variables if "lora" in v.path]
    for v in adapters:
        if "lora_kernel_b" in v.path:
            v.assign(0.1 * rng.normal(size=tuple(v.shape)).astype(v.dtype))
    return adapters


def _last_block(model, extra):
    """ResNet50's last residual block (conv5_block3: three convolutions, three batch norms)
    and the head."""
    return [v for v in model.trainable_variables if v.path.startswith(("conv5_block3", "logits"))]


# (case, structure, weights): weights "all", or a function (model, extra) -> the variables, run
# after the "all" cases (it may change what is trainable). The structure with the smaller
# estimate first: TensorFlow keeps the memory it freed, so a case after a larger one shows less. Not here: ResNet50 with kfac over all
# its 23.5M weights (estimate 3.8 GB): on 2 cores it was still fitting after 10 minutes, at 12 GB
# resident and growing, when stopped.
CASES = {
    "mobilenet_v3_small": [("diag", "diag", "all"), ("kfac", "kfac", "all")],
    "resnet50": [("diag", "diag", "all"), ("kfac-last-block", "kfac", _last_block)],
    "gpt2": [
        ("diag", "diag", "all"),
        ("kfac", "kfac", "all"),
        ("lora-full", "full", _lora_adapters),
    ],
    "bert": [("diag", "diag", "all"), ("kfac", "kfac", "all")],
}
BUILDERS = {
    "mobilenet_v3_small": mobilenet_v3_small,
    "resnet50": resnet50,
    "gpt2": gpt2,
    "bert": bert,
}
FAMILIES = {"applications": ["mobilenet_v3_small", "resnet50"], "hub": ["gpt2", "bert"]}


# -- measuring ----------------------------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset the high-water mark of resident memory; the resident memory now, bytes."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kb("VmRSS") * 1024


def _peak() -> int:
    return _status_kb("VmHWM") * 1024


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _one_line(text, limit=600):
    """An exception's message on one line, without Keras' terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _emit(record):
    print(json.dumps(record), flush=True)


# -- one case -----------------------------------------------------------------------------------
def run_case(model, x, y, x_test, *, structure, weights, record, workdir):
    """Every step of the API on one fit; fills ``record`` as it goes (``step`` names the step
    under way, so a failure says where)."""
    mb = 1e6
    record["step"] = "fit"
    base = _reset_peak()
    t0 = time.perf_counter()
    la = sigma.Laplace(model, x, y, likelihood="classification", structure=structure,
                       weights=weights, max_memory=MAX_MEMORY)  # fmt: skip
    record["fit_s"] = round(time.perf_counter() - t0, 3)
    record["P"] = int(la.n_params)
    est = la.memory_estimate
    record["estimate_mb"] = None if est is None else round(est / mb, 1)

    record["step"] = "optimize_evidence"
    t1 = time.perf_counter()
    la.optimize_evidence()
    record["evidence_s"] = round(time.perf_counter() - t1, 3)
    record["alpha"] = float(np.ravel(la.alpha)[0])
    record["gamma"] = float(la.gamma)
    assert np.isfinite(la.alpha).all() and np.isfinite(la.gamma), (la.alpha, la.gamma)

    record["step"] = "predict_proba"
    t2 = time.perf_counter()
    probs = np.asarray(la.predict_proba(x_test))
    record["predict_s"] = round(time.perf_counter() - t2, 3)
    record["step"] = "predictive_covariance"
    t2 = time.perf_counter()
    cov = np.asarray(la.predictive_covariance(x_test))
    record["covariance_s"] = round(time.perf_counter() - t2, 3)
    peak = max(_peak() - base, 0)  # 0: TensorFlow reused memory an earlier case freed
    record["peak_mb"] = round(peak / mb, 1)
    record["ratio"] = None if not est else round(peak / est, 2)
    n_test = len(next(iter(x_test.values()))) if isinstance(x_test, dict) else len(x_test)
    assert probs.shape == (n_test, K), probs.shape
    assert np.isfinite(probs).all() and np.allclose(probs.sum(-1), 1.0), probs
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    assert np.isfinite(cov).all() and (var >= 0).all() and (var > 0).any(), var
    record["sigma_logit_mean"] = float(np.sqrt(var).mean())

    record["step"] = "save/load"
    t3 = time.perf_counter()
    path = os.path.join(workdir, f"{record['model']}-{record['case']}.npz")
    la.save(path)
    again = sigma.Laplace.load(path, model)
    np.testing.assert_allclose(np.asarray(again.predict_proba(x_test)), probs, rtol=1e-10)
    record["load_s"] = round(time.perf_counter() - t3, 3)

    record["step"] = "to_keras"
    t4 = time.perf_counter()
    served = la.to_keras()
    out = np.asarray(served.predict(x_test, verbose=0))
    np.testing.assert_allclose(out, probs, rtol=1e-4, atol=1e-6)
    record["to_keras_s"] = round(time.perf_counter() - t4, 3)
    record["step"] = None


def run_model(name, only, workdir):
    t0 = time.perf_counter()
    model, x, y, x_test, extra = BUILDERS[name]()
    build = {"zoo": "model", "model": name, "params": int(model.count_params()),
             "build_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
    _emit(build)
    for case, structure, weights in CASES[name]:
        if only and f"{name}/{case}" not in only and name not in only:
            continue
        record = {"zoo": "case", "model": name, "case": case, "structure": structure,
                  "weights": weights if isinstance(weights, str) else weights.__name__.strip("_")}  # fmt: skip
        _emit({"zoo": "start", "model": name, "case": case})
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            if callable(weights):
                record["step"] = "select weights"
                weights = weights(model, extra)
            run_case(model, x, y, x_test, structure=structure, weights=weights, record=record,
                     workdir=workdir)  # fmt: skip
            record["status"] = "pass"
        except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the next case
            record["status"] = "fail"
            record["error"] = _one_line(f"{type(exc).__name__}: {exc}")
            frames = traceback.extract_tb(exc.__traceback__)[-4:]
            record["traceback"] = "".join(traceback.format_list(frames))
        record["total_s"] = round(time.perf_counter() - t1, 3)
        record["cpu_s"] = round(time.process_time() - c1, 3)
        record["maxrss_mb"] = round(_maxrss() / 1e6, 1)
        _emit(record)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--only", nargs="*", default=[], help="model or model/case, e.g. gpt2/kfac")
    parser.add_argument("--size", choices=sorted(SIZES), default="full", help="see SIZES")
    args = parser.parse_args(argv)
    global SIZE
    SIZE = SIZES[args.size]
    with tempfile.TemporaryDirectory() as workdir:
        for name in FAMILIES[args.family]:
            if args.only and not any(o.split("/")[0] == name for o in args.only):
                continue
            try:
                run_model(name, args.only, workdir)
            except Exception as exc:  # noqa: BLE001 - a model that does not build is reported
                _emit({"zoo": "model", "model": name, "status": "fail", "step": "build",
                       "error": _one_line(f"{type(exc).__name__}: {exc}"),
                       "traceback": traceback.format_exc()[-3000:]})  # fmt: skip
    _emit({"zoo": "done", "cpu_s": round(time.process_time(), 2),
           "maxrss_mb": round(_maxrss() / 1e6, 1)})  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
