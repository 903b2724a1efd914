"""Saving a fitted Laplace and loading it onto its model again (``Laplace.save`` /
``Laplace.load``), in a versioned, documented format (docs/saving.md).

The file is a NumPy ``.npz`` archive (no pickles): an entry ``header`` holding a JSON document,
and float arrays. The header records

* ``format`` ("sigma.laplace") and ``version`` (an integer, :data:`VERSION`; a file written by a
  newer format is refused, never misread) and the sigma version that wrote it;
* the weights the posterior covers (how they were selected; their positions in the array
  ``weights_index``), the structure (its name, constructor options and JSON facts), the likelihood (and its
  softmax heads), the curvature, the prior groups' names and kind, α, β, ``negative``;
* the data summary the evidence needs — N, K, E_D (and per output), the outputs' scale — and
  the weight errors E_Wg: the training data themselves are not saved;
* the model's fingerprint: its class, the path, shape and dtype of every variable, and
  SHA-256 digests of its trainable weights and of its non-trainable state. Loading onto a
  model whose architecture (the variables' shapes and dtypes, in order) or weights differ is
  refused, naming the difference.

The arrays are the weights the posterior was fitted at (``w_map``), the prior's group of every
weight, and the structure's own state under ``structure/<name>`` (e.g. the P×P curvature of
``full``, the Kronecker factors of ``kfac``). Files are written atomically (a temporary file
in the same folder, then renamed).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from sigma import likelihoods, structures
from sigma.jsonable import to_jsonable
from sigma.outputs import OutputLayout
from sigma.priors import Prior
from sigma.summary import DataSummary, frozen_state
from sigma.weights import from_index, select

FORMAT = "sigma.laplace"
VERSION = 2  # 2: the selection of weights (``weights``; version 1 covered every weight)
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # how a .npz (zip) archive starts, as np.load tests


def fingerprint(model) -> dict:
    """The model's architecture (class; variables' paths, shapes, dtypes) and SHA-256 digests
    of its trainable weights and its non-trainable state."""

    def describe(v):
        return [str(getattr(v, "path", v.name)), list(map(int, v.shape)), str(v.dtype)]

    weights = hashlib.sha256()
    for v in model.trainable_variables:
        weights.update(np.ascontiguousarray(v.numpy()).tobytes())
    state = hashlib.sha256()
    for v in model.non_trainable_variables:
        if "seed_generator" not in str(getattr(v, "path", v.name)):
            state.update(np.ascontiguousarray(v.numpy()).tobytes())
    return {
        "class": type(model).__name__,
        "trainable": [describe(v) for v in model.trainable_variables],
        "non_trainable": [
            describe(v)
            for v in model.non_trainable_variables
            if "seed_generator" not in str(getattr(v, "path", v.name))
        ],
        "weights_sha256": weights.hexdigest(),
        "state_sha256": state.hexdigest(),
    }


def save(post, path) -> Path:
    """Write the :class:`~sigma.posterior.Posterior` ``post`` (of its model, fitted at its
    weights ``w_map``) to ``path`` (any name; conventionally ``.npz``) atomically."""
    model, w_map = post.model, post.w_map
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"path {str(path)!r} is a directory: give the name of the file to write, e.g. "
            f"{str(path / 'laplace.npz')!r}"
        )
    s = post.structure
    arrays, info = s.state()
    layout, summary = post.output_layout, post.summary
    header = {
        "format": FORMAT,
        "version": VERSION,
        "sigma": _sigma_version(),
        "structure": {"name": s.name, "options": s.options(), "info": info},
        "weights": {"kind": post.selection.kind, "n_params": post.selection.n_params},
        "likelihood": post.likelihood.describe(),
        "curvature": post.curvature,
        "negative": post.negative,
        "prior": {"kind": post.prior.kind, "names": list(post.prior.names)},
        "alpha": post.alpha,
        "beta": float(post.beta[0]) if post.n_groups == 1 else post.beta,
        "link": post.link,
        "output_layout": layout.describe(),
        "data": {
            "n_data": summary.n_data,
            "n_outputs": summary.n_outputs,
            "data_error": summary.data_error,
            "data_errors": summary.data_errors,
            "output_scale": summary.output_scale,
            "batch_size": summary.batch_size,
            "group_errors": summary.group_errors,
            "target_moments": summary.target_moments,
        },
        "weight_errors": post.weight_errors,
        "fingerprint": fingerprint(model),
    }
    entries = {
        "w_map": w_map,
        "prior_groups": post.prior.groups,
        "weights_index": post.selection.index,
    }
    entries.update({f"structure/{k}": np.asarray(v, np.float64) for k, v in arrays.items()})
    buffer = io.BytesIO()
    np.savez(
        buffer,
        header=np.array(json.dumps(to_jsonable(header, "header", what="a sigma file"))),
        **entries,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sigma_version() -> str:
    import sigma

    return sigma.__version__


def read_posterior(path, model) -> tuple[dict, np.ndarray, object]:
    """The fields, α and β of the :class:`~sigma.posterior.Posterior` saved in ``path``, for
    ``model`` — refused (ValueError naming the difference) unless it is the model it was
    fitted on; :func:`sigma.load` (:func:`sigma.posterior.load`) makes the posterior of them."""
    header, arrays = read(path)
    check_fingerprint(header["fingerprint"], model, path)
    spec = header["structure"]
    if "weights_index" in arrays:
        selection = from_index(model, arrays["weights_index"], header["weights"]["kind"])
    else:  # format 1: every weight, or the last layer for structure "last_layer"
        selection = select(model, structures.resolve(spec["name"], "all")[1])
    structure = structures.get(spec["name"]).from_options(spec["options"]).on(selection)
    state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("structure/")}
    structure.restore(model, state, spec["info"])
    data, layout, lik = header["data"], header["output_layout"], header["likelihood"]
    output_layout = OutputLayout.from_description(layout)
    likelihood = likelihoods.from_description(lik, output_layout)
    prior = header["prior"]
    fields = dict(
        structure=structure,
        prior=Prior(arrays["prior_groups"].astype(np.int64), tuple(prior["names"]), prior["kind"]),
        selection=selection,
        likelihood=likelihood,
        curvature=header["curvature"],
        negative=header["negative"],
        output_layout=output_layout,
        summary=DataSummary(
            n_data=int(data["n_data"]),
            n_outputs=int(data["n_outputs"]),
            data_error=float(data["data_error"]),
            data_errors=None if data["data_errors"] is None else np.asarray(data["data_errors"]),
            output_scale=float(data["output_scale"]),
            batch_size=data["batch_size"],
            group_errors=None
            if data.get("group_errors") is None
            else np.asarray(data["group_errors"], np.float64),
            target_moments=None  # files from before it was kept: None
            if data.get("target_moments") is None
            else tuple(float(v) for v in data["target_moments"]),
        ),
        weight_errors=np.asarray(header["weight_errors"], np.float64),
        alpha=np.zeros(len(prior["names"])),
        model=model,
        w_map=np.asarray(arrays["w_map"], np.float64),
        state=frozen_state(model),
        link=header.get("link", "probit"),  # files before the tuned link: probit
    )
    beta = header["beta"]
    beta = np.asarray(beta, np.float64) if isinstance(beta, list) else beta
    return fields, np.asarray(header["alpha"], np.float64), beta


def read(path) -> tuple[dict, dict]:
    """(header, arrays) of a saved file; ValueError naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a file"
        raise ValueError(f"path {str(path)!r} is {what}: give a file written by Laplace.save")
    with open(path, "rb") as fh:
        start = fh.read(4)
    if start not in _ZIP:
        raise ValueError(
            f"path {str(path)!r} is not a readable sigma Laplace file: a sigma file is a .npz (zip) "
            f"archive written by Laplace.save, and this file does not start like one "
            f"(first bytes {start!r})"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as exc:
        if "pickle" in str(exc) or "Object arrays" in str(exc):
            raise ValueError(  # np.load's advice (allow_pickle) does not apply to sigma files
                f"path {str(path)!r} is not a sigma Laplace file: it holds Python objects, and a "
                "sigma file holds only numbers and a JSON header"
            ) from None
        raise ValueError(
            f"path {str(path)!r} is not a readable sigma Laplace file (a truncated or corrupted "
            f"archive?): {exc}"
        ) from None
    try:
        header = json.loads(str(arrays.pop("header")))
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"path {str(path)!r} has no readable sigma header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"path {str(path)!r} is not a sigma Laplace file (format {FORMAT!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ValueError(
            f"path {str(path)!r} was written in format version {version} by sigma "
            f"{header.get('sigma')}, newer than this sigma reads ({VERSION}): upgrade sigma"
        )
    return header, arrays


def check_fingerprint(saved: dict, model, path) -> None:
    """Refuse a model whose architecture (the shapes and dtypes of its variables, in order) or
    weights differ from the saved fingerprint. Variable names are not compared: Keras numbers
    the layers of every model it builds, so the same architecture built again is named anew."""
    now = fingerprint(model)
    for key, what in (("trainable", "trainable variables"), ("non_trainable", "other variables")):
        old = [v[1:] for v in saved[key]]
        new = [v[1:] for v in now[key]]
        if old != new:
            first = next(
                (
                    f"{a[0]} {a[1:]} vs {b[0]} {b[1:]}"
                    for a, b in zip(saved[key], now[key], strict=False)
                    if a[1:] != b[1:]
                ),
                f"{len(old)} vs {len(new)} variables",
            )
            raise ValueError(
                f"model does not match the Laplace saved in {str(path)!r}: its {what} differ "
                f"(saved vs this model: {first}); load it onto the model it was fitted on"
            )
    if saved["weights_sha256"] != now["weights_sha256"]:
        raise ValueError(
            f"model's weights differ from those the Laplace saved in {str(path)!r} was fitted "
            "at (SHA-256 of the weights): load the weights it was saved with, e.g. "
            "model.load_weights(...), or fit a new Laplace"
        )
    if saved["state_sha256"] != now["state_sha256"]:
        raise ValueError(
            f"model's non-trainable state (e.g. BatchNorm statistics) differs from the one the "
            f"Laplace saved in {str(path)!r} was fitted with"
        )
