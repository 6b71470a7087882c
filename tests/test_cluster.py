"""vl_jax.cluster against scikit-learn, on 1 and 8 fake CPU devices (conftest's meshes)."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.neighbors import NearestNeighbors

from vl_jax.cluster import kmeans, knn
from vl_jax.metrics import clustering_metrics

N, D, K_NN = 517, 24, 7  # N divisible neither by the block (64) nor by 8 devices


@pytest.fixture(scope="module")
def features():
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("mesh_name", ["mesh1", "mesh8"])
def test_knn_equals_sklearn_brute_force(features, metric, mesh_name, request):
    mesh = request.getfixturevalue(mesh_name)
    idx, dist = knn(features, K_NN, metric, mesh=mesh, block=64)
    assert idx.shape == dist.shape == (N, K_NN)
    assert idx.dtype == np.int32 and dist.dtype == np.float32
    nn = NearestNeighbors(
        n_neighbors=K_NN + 1, algorithm="brute", metric="euclidean" if metric == "l2" else metric
    ).fit(features)
    ref_dist, ref_idx = nn.kneighbors(features)  # continuous data: column 0 is the row itself
    assert (ref_idx[:, 0] == np.arange(N)).all()
    assert not (idx == np.arange(N)[:, None]).any()  # never itself
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref_idx[:, 1:], 1))
    np.testing.assert_allclose(dist, ref_dist[:, 1:], rtol=1e-5, atol=2e-6)
    assert (np.diff(dist, axis=1) >= 0).all()  # nearest first


def test_knn_same_on_1_and_8_devices_and_handles_duplicates(features, mesh1, mesh8):
    x = features.copy()
    x[100] = x[5]
    x[200] = x[5]  # three identical rows: each lists the other two first, lower index first
    out1 = knn(x, K_NN, "l2", mesh=mesh1, block=64)
    out8 = knn(x, K_NN, "l2", mesh=mesh8, block=64)
    np.testing.assert_array_equal(out1[0], out8[0])
    np.testing.assert_allclose(out1[1], out8[1], atol=1e-6)
    idx, dist = out8
    assert list(idx[5, :2]) == [100, 200] and list(idx[100, :2]) == [5, 200]
    assert list(idx[200, :2]) == [5, 100]
    np.testing.assert_allclose(dist[[5, 100, 200], :2], 0.0, atol=1e-3)
    again = knn(x, K_NN, "l2", mesh=mesh8, block=64)
    np.testing.assert_array_equal(again[0], idx)  # deterministic


def test_knn_rejects_bad_arguments(features):
    with pytest.raises(ValueError, match="k < N"):
        knn(features[:5], 5)
    with pytest.raises(ValueError, match="metric"):
        knn(features, 3, "manhattan")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        knn(features[0], 3)


@pytest.fixture(scope="module")
def blobs():
    # Overlapping blobs: k-means has real local optima here, so n_init matters.
    x, y = make_blobs(n_samples=1001, centers=6, n_features=16, cluster_std=4.0, random_state=1)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def kmeans8(blobs, mesh8):
    return kmeans(blobs[0], 6, n_init=10, seed=3, mesh=mesh8)


@pytest.mark.slow
def test_kmeans_inertia_matches_sklearn(blobs, kmeans8):
    centres, labels, inertia = kmeans8
    assert centres.shape == (6, 16) and labels.shape == (1001,) and labels.dtype == np.int32
    ref = KMeans(6, n_init=10, random_state=0).fit(blobs[0])
    assert inertia == pytest.approx(ref.inertia_, rel=0.01)
    # the returned inertia is that of the returned centroids and assignments
    x = blobs[0].astype(np.float64)
    assert inertia == pytest.approx(((x - centres[labels]) ** 2).sum(), rel=1e-5)
    # a fixed point: every row is assigned to its nearest centroid
    d2 = ((x[:, None] - centres[None].astype(np.float64)) ** 2).sum(-1)
    assert (d2[np.arange(len(x)), labels] <= d2.min(1) + 1e-3).all()


@pytest.mark.slow
def test_kmeans_identical_on_1_and_8_devices(blobs, kmeans8, mesh1):
    centres, labels, inertia = kmeans(blobs[0], 6, n_init=10, seed=3, mesh=mesh1)
    np.testing.assert_array_equal(labels, kmeans8[1])
    np.testing.assert_array_equal(centres, kmeans8[0])
    assert inertia == kmeans8[2]


@pytest.mark.slow
def test_kmeans_recovers_separated_blobs_and_is_deterministic(mesh8):
    x, y = make_blobs(n_samples=1001, centers=6, n_features=16, cluster_std=0.5, random_state=2)
    out = kmeans(x, 6, n_init=10, seed=0, mesh=mesh8)
    assert clustering_metrics(y, out[1]) == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}
    again = kmeans(x, 6, n_init=10, seed=0, mesh=mesh8)
    np.testing.assert_array_equal(again[1], out[1])
    np.testing.assert_array_equal(again[0], out[0])


@pytest.mark.slow
def test_spherical_kmeans_clusters_directions(mesh8):
    # 6 random directions in 16-d; rows = direction * random positive scale + small noise,
    # so the classes differ in direction only (Euclidean k-means would split by scale).
    rng = np.random.default_rng(4)
    dirs = rng.standard_normal((6, 16))
    y = rng.integers(0, 6, 1001)
    x = dirs[y] * rng.uniform(0.1, 10.0, (1001, 1)) + 0.02 * rng.standard_normal((1001, 16))
    centres, labels, inertia = kmeans(x.astype(np.float32), 6, spherical=True, mesh=mesh8)
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)
    assert clustering_metrics(y, labels)["acc"] == 1.0
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ centres.T.astype(np.float64)
    assert (labels == cos.argmax(1)).all()
    assert inertia == pytest.approx(2 * (1 - cos[np.arange(len(x)), labels]).sum(), rel=1e-4)


@pytest.mark.slow
def test_kmeans_more_clusters_than_distinct_points(mesh8):
    # 4 distinct points, k = 12 (more than the 8 rows per device): seeding repeats points and
    # Lloyd steps meet empty clusters, which are re-seeded; all stays finite, inertia 0.
    x = np.repeat(np.eye(4, 5, dtype=np.float32) * 3.0, 10, axis=0)
    centres, labels, inertia = kmeans(x, 12, n_init=3, mesh=mesh8)
    assert np.isfinite(centres).all() and inertia == pytest.approx(0.0, abs=1e-6)
    assert set(labels) <= set(range(12)) and len(set(labels)) >= 4


def test_kmeans_rejects_bad_arguments():
    x = np.zeros((5, 2), np.float32)
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(x, 6)
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 2, n_init=0)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((5, 2), np.nan), 2)


@pytest.mark.parametrize("g", [1, 2, 4, 8])
def test_block_candidates_hold_the_exact_top_k_with_ties(g):
    import jax

    from vl_jax.cluster.knn import _block_candidates

    # Integer scores in a narrow range: many ties, so the lower-column rule is exercised.
    rng = np.random.default_rng(g)
    s = rng.integers(0, 12, (40, 64)).astype(np.float32)
    s[3] = -np.inf  # a row of padding scores
    s[4, :40] = -np.inf
    k = 6
    want_v, want_i = jax.lax.top_k(s, k)
    vals, cols = _block_candidates(s, k, g)
    assert vals.shape == cols.shape == (40, k * g if g > 1 else 64)  # g = 1: the whole block
    assert (np.diff(np.asarray(cols), axis=1) > 0).all()  # ascending columns
    np.testing.assert_array_equal(np.take_along_axis(s, np.asarray(cols), 1), vals)
    got_v, j = jax.lax.top_k(vals, k)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(cols), np.asarray(j), 1), want_i)


@pytest.mark.parametrize("db_block", [64, 200])
def test_knn_small_database_blocks_equal_one_block(features, db_block, mesh8):
    x = features.copy()
    x[300] = x[7]
    x[400] = x[7]  # duplicates in different database blocks: ties across the running list
    ref = knn(x, K_NN, "l2", mesh=mesh8, block=64)  # one database block of 576 rows
    got = knn(x, K_NN, "l2", mesh=mesh8, block=64, db_block=db_block)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6)
    assert list(got[0][7, :2]) == [300, 400]
