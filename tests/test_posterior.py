"""The posterior as a value: replace(alpha=, beta=) returns another, checked, sharing the
fitted structure; the original never changes, and the Laplace's setters are replace."""

import dataclasses

import numpy as np
import pytest
from conftest import make_mlp

import sigma
from sigma.evidence import posterior as posterior_evidence

RNG = np.random.default_rng(4)
X, Y = RNG.normal(size=(20, 3)), RNG.normal(size=(20, 2))


def test_replace_returns_a_new_checked_posterior_and_leaves_the_old_one():
    la = sigma.Laplace(make_mlp(), X, Y, prior="layer", alpha=1.0, beta=2.0)
    old = la.posterior
    new = old.replace(alpha=[0.5, 1.5, 2.5], beta=4.0)
    assert new is not old and new.structure is old.structure  # nothing refitted
    np.testing.assert_array_equal(old.alpha, [1.0, 1.0, 1.0])
    assert old.beta == 2.0 and new.beta == 4.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        old.beta = 3.0
    la.alpha, la.beta = [0.5, 1.5, 2.5], 4.0  # the setters replace the value
    assert la.posterior is not old
    assert posterior_evidence.log_evidence(new) == pytest.approx(la.log_evidence(), rel=1e-14)
    assert posterior_evidence.gamma(new) == pytest.approx(la.gamma, rel=1e-14)
    with pytest.raises(ValueError, match=r"alpha must be a number or an array with one prior"):
        old.replace(alpha=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"beta must be"):
        old.replace(beta=-1.0)


def test_optimize_evidence_and_optimize_prior_replace_the_posterior():
    la = sigma.Laplace(make_mlp(), X, Y, alpha=1.0, beta=1.0)
    before = la.posterior
    la.optimize_evidence()
    assert la.posterior is not before and before.alpha[0] == 1.0 and before.beta == 1.0
    best, result = posterior_evidence.optimize(
        before, fix_alpha=False, fix_beta=False, tol=1e-8, max_iter=1000,
        eps=float(np.finfo(np.float64).eps),
    )  # fmt: skip
    assert best.alpha[0] == pytest.approx(la.alpha, rel=1e-12) and result.alpha == la.alpha
    evidence_post = la.posterior
    la.optimize_prior(X[:10], Y[:10])
    assert evidence_post.alpha[0] == evidence_post.evidence_result.alpha  # the old value kept
    # its α and its record; the new one's α is not the evidence's, so it has no evidence record
    assert la.alpha != evidence_post.alpha[0] and la.evidence_result is None
    assert la.prior_result["alpha"] == la.alpha


def test_the_evidence_record_goes_with_the_precisions_it_describes():
    la = sigma.Laplace(make_mlp(), X, Y, alpha=1.0, beta=1.0)
    la.optimize_evidence()
    result = la.evidence_result
    la.alpha = la.alpha  # the same precisions: the record still describes them
    assert la.evidence_result is result
    assert la.posterior.replace().evidence_result is result
    la.beta = 2.0 * la.beta
    assert la.evidence_result is None
    la.optimize_evidence()
    la.beta = np.full(2, la.beta)  # one β per output: other precision groups, the same values
    assert la.evidence_result is None


def test_the_prior_search_record_goes_with_the_precisions_it_describes():
    la = sigma.Laplace(make_mlp(), X, Y, alpha=1.0, beta=1.0)
    la.optimize_prior(X[:10], Y[:10])
    assert la.prior_result["alpha"] == la.alpha
    la.alpha = la.alpha
    assert la.prior_result is not None
    la.alpha = 2.0 * la.alpha
    assert la.prior_result is None
    la.optimize_prior(X[:10], Y[:10])
    la.optimize_evidence()  # α, β from the evidence now: no longer the search's
    assert la.prior_result is None and la.evidence_result is not None
