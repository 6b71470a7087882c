"""vl_jax.metrics against scikit-learn (NMI, ARI) and scipy (Hungarian assignment)."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa
from sklearn import metrics as skm

from vl_jax.metrics import (
    clustering_metrics,
    confusion_matrix,
    hungarian_match,
    linear_sum_assignment,
)


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (30, 30), (3, 8), (9, 2), (1, 6), (12, 40)])
@pytest.mark.parametrize("kind", ["normal", "small_ints", "ints_maximize"])
def test_hungarian_cost_equals_scipy(shape, kind):
    rng = np.random.default_rng(hash((shape, kind)) % 2**32)
    for _ in range(5):
        if kind == "normal":
            cost, maximize = rng.standard_normal(shape), False
        else:  # many ties: only the optimal cost is unique, not the assignment
            cost, maximize = rng.integers(0, 4, shape).astype(float), kind == "ints_maximize"
        rows, cols = linear_sum_assignment(cost, maximize=maximize)
        r2, c2 = scipy_lsa(cost, maximize=maximize)
        assert len(rows) == len(r2) == min(shape)
        assert np.all(np.diff(rows) > 0) and len(set(cols)) == len(cols)
        assert cost[rows, cols].sum() == pytest.approx(cost[r2, c2].sum(), abs=1e-9)
        if kind == "normal":  # continuous costs: the optimum is unique
            np.testing.assert_array_equal(cols, c2)


def test_hungarian_rejects_bad_input():
    assert [a.size for a in linear_sum_assignment(np.zeros((0, 3)))] == [0, 0]
    with pytest.raises(ValueError, match="2-D"):
        linear_sum_assignment(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        linear_sum_assignment(np.array([[1.0, np.inf]]))


def _sk_acc(y_true, y_pred):
    c = skm.cluster.contingency_matrix(y_true, y_pred)
    r, k = scipy_lsa(c, maximize=True)
    return c[r, k].sum() / len(y_true)


def _check(y_true, y_pred):
    got = clustering_metrics(y_true, y_pred, ignore_label=None)
    assert set(got) == {"acc", "nmi", "ari"}
    assert got["acc"] == pytest.approx(_sk_acc(y_true, y_pred), abs=1e-12)
    assert got["nmi"] == pytest.approx(skm.normalized_mutual_info_score(y_true, y_pred), abs=1e-12)
    assert got["ari"] == pytest.approx(skm.adjusted_rand_score(y_true, y_pred), abs=1e-12)


def test_metrics_equal_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 300))
        classes, clusters = int(rng.integers(1, 12)), int(rng.integers(1, 15))
        y_true = rng.choice(rng.permutation(100)[:classes] - 7, n)  # not 0..C-1, negatives too
        y_pred = rng.integers(0, clusters, n) * 5 + 3
        if rng.random() < 0.3:  # partly agreeing labelings, not only independent noise
            y_pred = np.where(rng.random(n) < 0.7, y_true, y_pred)
        _check(y_true, y_pred)


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([0, 0, 0, 0], [1, 1, 1, 1]),  # one class, one cluster: NMI = ARI = 1
        ([0, 0, 1, 1], [5, 5, 5, 5]),  # one cluster: NMI = 0, ARI = 0
        ([3, 3, 3, 3], [0, 1, 2, 3]),  # one class, singletons
        ([0, 1, 2, 3], [0, 1, 2, 3]),  # singletons both
        ([7], [2]),  # one sample
        ([0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2]),  # permuted perfect
        ([0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 1]),  # fewer clusters than classes
        ([0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 4, 5]),  # more clusters than classes
        ([10, 20, 10, 20], [-1, -1, 4, 4]),  # independent
    ],
)
def test_metrics_edge_cases_equal_sklearn(y_true, y_pred):
    _check(np.array(y_true), np.array(y_pred))


def test_perfect_and_permuted_clusterings_score_one():
    y = np.repeat(np.arange(5), 20)
    perm = np.array([3, 0, 4, 1, 2])
    got = clustering_metrics(y, perm[y] + 100)
    assert got == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})


def test_unlabelled_samples_are_dropped():
    y_true = np.array([0, 0, 1, 1, -1, -1])
    y_pred = np.array([1, 1, 0, 0, 1, 0])
    assert clustering_metrics(y_true, y_pred)["acc"] == 1.0  # the -1 rows are ignored
    kept = clustering_metrics(y_true, y_pred, ignore_label=None)
    assert kept["acc"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="no samples"):
        clustering_metrics([-1, -1], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        clustering_metrics([0, 1], [0])


def test_confusion_matrix_and_matching():
    y_true = np.array([5, 5, 5, 9, 9, 2])
    y_pred = np.array([1, 1, 0, 0, 0, 7])
    counts, classes, clusters = confusion_matrix(y_true, y_pred)
    np.testing.assert_array_equal(classes, [2, 5, 9])
    np.testing.assert_array_equal(clusters, [0, 1, 7])
    np.testing.assert_array_equal(counts, skm.cluster.contingency_matrix(y_true, y_pred))
    assert hungarian_match(y_true, y_pred) == {1: 5, 0: 9, 7: 2}
    # more clusters than classes: a surplus cluster stays unmatched
    assert hungarian_match([0, 0, 0, 1], [0, 0, 1, 2]) in ({0: 0, 1: 1}, {0: 0, 2: 1})
