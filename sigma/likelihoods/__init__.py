"""Likelihoods: the data term of the loss, the square root of its Hessian with respect to the
outputs, the targets it accepts and its precision groups (:mod:`sigma.likelihoods.base`).

* ``"regression"`` (:class:`Regression`): E_D = ½ Σ (f − t)², Λ = I, a noise precision β.
* ``"classification"`` (:class:`Classification`): softmax cross-entropy on logits, one head per
  output and per position (a one-logit head is binary); Λ = diag(p) − p pᵀ per head; no β.
* ``"heteroscedastic"`` (:class:`Heteroscedastic`): a Gaussian NLL with the model's own noise
  variance, 2K outputs [mean part | variance part]; no β.
* a dict {output name: likelihood} or a list in output order (:class:`PerHead`): one
  likelihood per output head, each regression head with its own β.

Targets may be given per output (a list, or a dict by name, for a model with several outputs),
in each output's own shape ((N, T, C) for an output per position), or as one (N, K) array.
"""

from __future__ import annotations

from sigma.likelihoods.base import HALF_LOG_2PI, Groups, Likelihood
from sigma.likelihoods.classification import Classification
from sigma.likelihoods.heads import PerHead
from sigma.likelihoods.heteroscedastic import PARAMETERISATIONS, Heteroscedastic
from sigma.likelihoods.montecarlo import MonteCarlo
from sigma.likelihoods.regression import Regression

__all__ = [
    "HALF_LOG_2PI",
    "LIKELIHOODS",
    "PARAMETERISATIONS",
    "Classification",
    "Groups",
    "Heteroscedastic",
    "Likelihood",
    "MonteCarlo",
    "PerHead",
    "Regression",
    "from_description",
    "get",
]

LIKELIHOODS = {
    "regression": Regression,
    "classification": Classification,
    "heteroscedastic": Heteroscedastic,
}


def get(likelihood, layout=None) -> Likelihood:
    """A likelihood object from its name, an object, or a dict/list of them (one per output
    head); with a model's :class:`~sigma.outputs.OutputLayout`, bound to its outputs
    (classification: one softmax head per output and position)."""
    if isinstance(likelihood, Likelihood):
        lik = likelihood
    elif isinstance(likelihood, dict | list | tuple):
        lik = PerHead(likelihood)
    elif isinstance(likelihood, str) and likelihood in LIKELIHOODS:
        lik = LIKELIHOODS[likelihood]()
    else:
        raise ValueError(
            f"likelihood must be one of {tuple(LIKELIHOODS)}, a likelihood object, or a dict "
            f"{{output name: likelihood}} (a list in output order) for one per output head, "
            f"got {likelihood!r}"
        )
    return lik.bind(layout) if layout is not None else lik


def from_description(d: dict, layout=None) -> Likelihood:
    """The likelihood a :meth:`Likelihood.describe` dict describes (also the form of files
    written before likelihood objects: name, heads, parameterisation), bound to ``layout``."""
    name = d["name"]
    if name == "per_head":
        lik = PerHead({k: from_description(v) for k, v in d["heads"].items()})
    elif d.get("parameterisation"):
        lik = Heteroscedastic(d["parameterisation"])
    elif name == "classification":
        lik = Classification(d.get("heads"))
    elif name == "regression":
        lik = Regression(per_output=bool(d.get("per_output", False)))
    else:
        lik = get(name)
    return lik.bind(layout) if layout is not None else lik
