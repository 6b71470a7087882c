"""vl_jax.cluster.knn_ivf (approximate kNN, inverted file) against the exact vl_jax.cluster.knn."""

import numpy as np
import pytest

from vl_jax.cluster import knn, knn_ivf
from vl_jax.cluster.ann import default_nlist, default_nprobe

N, D, K = 3000, 32, 10
RECALL_BOUND = 0.9  # measured 0.93-0.95 on this data with the default rules (nlist 219, nprobe 8)


@pytest.fixture(scope="module")
def clustered():
    """30 Gaussian blobs in 32-d (within-blob noise as large as the blob spread)."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, D))
    x = centres[rng.integers(0, 30, N)] + rng.standard_normal((N, D))
    return x.astype(np.float32)


def _recall(got: np.ndarray, ref: np.ndarray) -> float:
    return sum(len(np.intersect1d(a, b)) for a, b in zip(got, ref)) / ref.size


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_recall_against_exact_knn(clustered, metric, mesh1):
    ref_idx, ref_dist = knn(clustered, K, metric, mesh=mesh1)
    got = knn_ivf(clustered, K, metric, mesh=mesh1)
    assert (got.nlist, got.nprobe) == (default_nlist(N), default_nprobe(default_nlist(N)))
    assert got.indices.shape == got.distances.shape == (N, K)
    assert got.indices.dtype == np.int32 and got.distances.dtype == np.float32
    assert (got.indices >= 0).all() and not (got.indices == np.arange(N)[:, None]).any()
    assert (np.diff(got.distances, axis=1) >= 0).all()  # nearest first
    assert _recall(got.indices, ref_idx) >= RECALL_BOUND
    # every reported distance is the true distance to that row, and never below the exact k-th
    xs = clustered / np.linalg.norm(clustered, axis=1, keepdims=True)
    if metric == "cosine":
        true = 1.0 - np.einsum("nd,nkd->nk", xs, xs[got.indices])
    else:
        true = np.linalg.norm(clustered[:, None] - clustered[got.indices], axis=-1)
    np.testing.assert_allclose(got.distances, true, atol=2e-5, rtol=1e-5)
    assert (got.distances >= ref_dist - 1e-5).all()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_probing_every_cell_is_the_exact_knn(clustered, metric, mesh1):
    ref_idx, ref_dist = knn(clustered, K, metric, mesh=mesh1)
    got = knn_ivf(clustered, K, metric, nlist=50, nprobe=50, mesh=mesh1)
    assert got.exhaustive_rows == 0
    np.testing.assert_allclose(got.distances, ref_dist, atol=2e-6, rtol=1e-5)
    # the same neighbours, except where float32 rounding reorders near-equal distances
    differ = got.indices != ref_idx
    gap = np.abs(np.diff(ref_dist, axis=1))
    near_tie = np.zeros_like(differ)
    near_tie[:, 1:] |= gap < 1e-5
    near_tie[:, :-1] |= gap < 1e-5
    assert (~differ | near_tie).all()
    assert differ.mean() < 1e-3


def test_same_on_1_and_8_devices(clustered, mesh1, mesh8):
    a = knn_ivf(clustered, K, "l2", mesh=mesh1, seed=3)
    b = knn_ivf(clustered, K, "l2", mesh=mesh8, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.distances, b.distances)


def test_rows_with_too_few_candidates_are_searched_exhaustively(clustered, mesh1):
    # 300 cells of ~10 rows, each query probing only its own: many cells hold < 25 other rows
    x = clustered[:600]
    got = knn_ivf(x, 25, "cosine", nlist=300, nprobe=1, mesh=mesh1)
    assert got.exhaustive_rows > 0
    assert (got.indices >= 0).all() and np.isfinite(got.distances).all()
    ref_idx, _ = knn(x, 25, "cosine", mesh=mesh1)
    short = np.array([_recall(got.indices[i : i + 1], ref_idx[i : i + 1]) for i in range(600)])
    assert (short == 1.0).sum() >= got.exhaustive_rows  # those rows are exact


def test_default_rules():
    assert default_nlist(160_000) == 1600 and default_nlist(1_280_000) == 4525
    assert default_nprobe(1600) == 20 and default_nprobe(4525) == 34
    assert default_nlist(10) == 10 and default_nprobe(4) == 4  # never more cells than rows


def test_rejects_bad_arguments(clustered):
    x = clustered[:100]
    with pytest.raises(ValueError, match="k < N"):
        knn_ivf(x, 100)
    with pytest.raises(ValueError, match="metric"):
        knn_ivf(x, 3, "manhattan")
    with pytest.raises(ValueError, match="nlist"):
        knn_ivf(x, 3, nlist=101)
    with pytest.raises(ValueError, match="nprobe"):
        knn_ivf(x, 3, nlist=10, nprobe=11)


def test_mcla_driver_takes_ivf_by_config(clustered, mesh1):
    from configs.mcla import get as get_mcla
    from mcla_jax import experiment
    from vl_jax.errors import ConfigError

    u = clustered[:400]
    nouns = np.random.default_rng(2).standard_normal((12, D)).astype(np.float32)
    config = get_mcla("mcla", "runlocal")
    config.knn = 5
    assert config.knn_search.kind == "exact"
    exact = experiment.prepare_inputs(config, u, u[:10], nouns, mesh1)
    config.knn_search.kind = "ivf"
    config.knn_search.nlist, config.knn_search.nprobe = 20, 4
    got = experiment.prepare_inputs(config, u, u[:10], nouns, mesh1)
    assert got.knn_img.shape == (400, 5)
    want = knn_ivf(exact.u, 5, "cosine", nlist=20, nprobe=4, mesh=mesh1).indices
    np.testing.assert_array_equal(got.knn_img, want)
    assert _recall(got.knn_img, exact.knn_img) > 0.8
    config.knn_search.kind = "hnsw"
    with pytest.raises(ConfigError, match="exact or ivf"):
        experiment.prepare_inputs(config, u, u[:10], nouns, mesh1)


@pytest.mark.slow
def test_benchmark_quick_tier():
    # benchmarks.ann --quick end to end (its figures, not its timings): 8k x 64 in 100 blobs
    from benchmarks.ann import ann_bench

    figs = {f["metric"]: f for f in ann_bench(True)}
    assert {"seconds_n8000", "recall20_n8000"} <= set(figs)
    sec = figs["seconds_n8000"]
    assert sec["ours"] > 0 and sec["baseline"] > 0 and sec["params"]["exact_extrapolated"] is False
    assert "foreign_cpu_cores" in sec["params"] and sec["params"]["nlist"] == default_nlist(8000)
    assert figs["recall20_n8000"]["ours"] >= 0.95
    if "seconds_vs_faiss_n8000" in figs:  # faiss-cpu installed
        assert figs["recall20_n8000"]["baseline"] > 0.5
