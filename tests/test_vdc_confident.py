"""Confident learning on the mesh (vdc_jax.confident): cleanlab's find_label_issues on the same
probabilities (equal masks), the probe against scikit-learn's LogisticRegression, and the probe
on 1 vs 8 devices."""

import numpy as np
import pytest

from vdc_jax import confident

N, K = 240, 4  # one compiled shape for the rule tests


def _probs(seed: int, n: int = N, k: int = K, *, missing: int | None = None):
    """Noisy softmax outputs [n, k] float32 and labels [n] that mostly agree with them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    if missing is not None:
        labels[labels == missing] = (missing + 1) % k
    logits = rng.normal(size=(n, k)) * 2.0
    logits[np.arange(n), labels] += rng.uniform(0.0, 3.0, n)
    p = np.exp(logits)
    return labels, (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.slow  # the first call compiles the rule on 8 devices (~10 s on 2 busy cores)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_issues_equal_cleanlab(seed, mesh8):
    from cleanlab import count
    from cleanlab import filter as filt

    labels, p = _probs(seed)
    ours = confident.find_label_issues(labels, p, mesh=mesh8)
    np.testing.assert_array_equal(ours.issues, filt.find_label_issues(labels, p, n_jobs=1))
    np.testing.assert_array_equal(ours.confident_joint,
                                  count.compute_confident_joint(labels, p))  # fmt: skip
    np.testing.assert_allclose(ours.thresholds, count.get_confident_thresholds(labels, p),
                               rtol=1e-6)  # fmt: skip
    assert 0 < ours.issues.sum() < N  # the case is not trivial


@pytest.mark.slow
def test_issues_equal_cleanlab_missing_and_single_class(mesh8):
    """A class nobody carries (threshold 2, never confident) and a class of one sample (never
    pruned: min_examples_per_class=1)."""
    from cleanlab import filter as filt

    labels, p = _probs(3, missing=2)
    labels[0] = 2  # exactly one sample of class 2
    ours = confident.find_label_issues(labels, p, mesh=mesh8)
    with pytest.warns(UserWarning):  # cleanlab warns about the one-sample class
        ref = filt.find_label_issues(labels, p, n_jobs=1)
    np.testing.assert_array_equal(ours.issues, ref)


@pytest.mark.slow
def test_issues_same_on_one_and_eight_devices(mesh1, mesh8):
    labels, p = _probs(4)
    a = confident.find_label_issues(labels, p, mesh=mesh1)
    b = confident.find_label_issues(labels, p, mesh=mesh8)
    np.testing.assert_array_equal(a.issues, b.issues)
    np.testing.assert_array_equal(a.confident_joint, b.confident_joint)


def test_stratified_folds_balanced_and_seeded():
    labels = np.repeat(np.arange(3), [50, 31, 7])
    f = confident.stratified_folds(labels, 5, seed=0)
    for k in range(3):
        sizes = np.bincount(f[labels == k], minlength=5)
        assert sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(f, confident.stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(f, confident.stratified_folds(labels, 5, seed=1))


def test_calibration_keeps_label_counts_and_rounds_by_rows():
    """Invariants of the K x K steps, without cleanlab: the calibrated joint sums per row to
    the label counts; rounding preserves each row's (rounded) total."""
    rng = np.random.default_rng(1)
    joint = rng.integers(1, 30, (5, 5))
    counts = rng.integers(10, 100, 5)
    np.testing.assert_array_equal(confident._calibrate(joint, counts).sum(axis=1), counts)
    row = np.array([0.4, 0.4, 0.4, 1.8])  # sums to 3.0; plain rounding gives 2
    assert confident._round_preserving_sum(row).sum() == 3


@pytest.mark.slow  # importing cleanlab (and scikit-learn) alone takes seconds
def test_calibration_and_rounding_equal_cleanlab():
    """The K x K steps (calibration, row-preserving rounding, keep-one-per-class) are
    cleanlab's float64 arithmetic: equal on random confident joints."""
    from cleanlab import count
    from cleanlab import filter as filt

    rng = np.random.default_rng(0)
    for _ in range(20):
        k = int(rng.integers(2, 9))
        joint = rng.integers(0, 40, (k, k))
        np.fill_diagonal(joint, joint.diagonal().clip(min=1))
        labels = rng.integers(0, k, int(joint.sum()))
        counts = np.bincount(labels, minlength=k)
        ours = confident._calibrate(joint, counts)
        np.testing.assert_array_equal(ours, count.calibrate_confident_joint(joint, labels))
        np.testing.assert_array_equal(confident._keep_at_least(ours.T, 1),
                                      filt._keep_at_least_n_per_class(ours.T, 1))  # fmt: skip


def _blobs(n=200, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d))
    x = (centres[y] + rng.normal(size=(n, d)) * 1.5).astype(np.float32)
    return x, y


@pytest.mark.slow  # a few L-BFGS compiles
def test_probe_matches_sklearn_and_meshes(mesh1, mesh8):
    """Out-of-fold probabilities: scikit-learn's LogisticRegression(C=1) fitted on the same
    folds to tolerance 1e-3 (both at their optimum of the same objective), and 1 vs 8 devices
    within 1e-5 with equal issue masks."""
    from sklearn import linear_model as lm

    x, y = _blobs()
    p8 = confident.oof_probabilities(x, y, 3, mesh=mesh8)
    p1 = confident.oof_probabilities(x, y, 3, mesh=mesh1)
    np.testing.assert_allclose(p8, p1, atol=1e-5)
    np.testing.assert_array_equal(confident.find_label_issues(y, p1, mesh=mesh1).issues,
                                  confident.find_label_issues(y, p8, mesh=mesh8).issues)  # fmt: skip
    fold = confident.stratified_folds(y, 5, seed=0)
    ref = np.zeros_like(p8)
    for f in range(5):
        clf = lm.LogisticRegression(C=1.0, max_iter=2000, tol=1e-10).fit(x[fold != f], y[fold != f])
        ref[fold == f] = clf.predict_proba(x[fold == f])
    np.testing.assert_allclose(p8, ref, atol=1e-3)
    np.testing.assert_allclose(p8.sum(axis=1), 1.0, atol=1e-5)
