"""The benchmark harness (benchmarks/): registry, figure records, runner CLI, and one run of
`clip_encode` on a tiny config. No timing assertions; runs on conftest's 8 fake CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import clip_encode, common, run

REPO = Path(__file__).resolve().parents[1]

TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    patch_size=8,
    image_size=32,
    projection_dim=32,
)


def test_registry_holds_clip_encode_and_rejects_duplicates(monkeypatch):
    assert run.load()["clip_encode"] is clip_encode.clip_encode
    monkeypatch.setattr(common, "REGISTRY", {})

    @common.register("x")
    def bench(quick):
        return []

    assert common.REGISTRY == {"x": bench}
    common.register("x")(bench)  # re-registering the same function is harmless
    with pytest.raises(ValueError, match="already registered"):
        common.register("x")(lambda quick: [])


@pytest.mark.parametrize(
    "ours, baseline, higher, want",
    [(2.0, 1.0, True, 2.0), (1.0, 2.0, True, 0.5), (1.0, 2.0, False, 2.0), (2.0, 1.0, False, 0.5)],
)
def test_figure_fields_and_ratio_direction(ours, baseline, higher, want):
    f = common.figure("b", "m", ours, baseline, "ref", higher_is_better=higher, params={"k": 1})
    assert tuple(f) == common.FIELDS
    assert f["ratio"] == pytest.approx(want)  # > 1 always means we are better
    assert f["higher_is_better"] is higher and f["params"] == {"k": 1}
    assert f["ours"] == ours and f["baseline"] == baseline and f["baseline_name"] == "ref"
    assert isinstance(f["device"], str) and f["device"].startswith("cpu")
    json.dumps(f)


def test_figure_degenerate_values_stay_json():
    f = common.figure("b", "m", 0.0, 1.0, "ref", higher_is_better=False)
    assert f["ratio"] is None
    assert common.figure("b", "m", float("nan"), 1.0, "ref", higher_is_better=True)["ours"] is None
    json.dumps(f, allow_nan=False)


def test_timeit_and_interleaving_call_counts():
    import jax.numpy as jnp

    calls = []
    t = common.timeit(lambda: calls.append(1) or jnp.ones(3) * 2, warmup=2, iters=3)
    assert len(calls) == 5 and t >= 0
    order = []
    res = common.time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, iters=3
    )
    assert set(res) == {"a", "b"}
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    with pytest.raises(ValueError):
        common.timeit(lambda: None, iters=0)
    with common.ForeignLoad() as load:
        pass
    assert load.cores is None or load.cores >= 0


def test_matmul_peak_reports_both_frameworks():
    peak = common.matmul_peak_gflops(64, iters=1)
    assert peak["n"] == 64 and peak["jax"] > 0 and peak["torch"] > 0
    assert peak["peak"] == max(peak["jax"], peak["torch"])


def test_vit_b32_flop_count():
    # 4.41 GMACs/image: the usually quoted "4.4 GFLOPs" of ViT-B/32 counts multiply-adds.
    got = clip_encode.forward_flops_per_image(clip_encode.VIT_B32)
    macs = (
        49 * 3072 * 768
        + 12 * (50 * 768 * 2304 + 2 * 50 * 50 * 768 + 50 * 768 * 768 + 2 * 50 * 768 * 3072)
        + 768 * 512
    )
    assert got == 2 * macs
    assert got == pytest.approx(8.82e9, rel=1e-3)


def test_run_rejects_unknown_name_in_process(capsys):
    assert run.main(["--only", "no_such_benchmark"]) != 0
    captured = capsys.readouterr()
    assert "no_such_benchmark" in captured.err and captured.out == ""


@pytest.mark.slow
def test_run_cli_exits_nonzero_on_unknown_name():
    p = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--only", "no_such_benchmark"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert p.returncode != 0 and p.stdout == ""
    assert "clip_encode" in p.stderr  # lists the known names


def test_run_prints_one_json_line_per_figure(monkeypatch, capsys):
    fake = [common.figure("fake", "m", 1.0, 2.0, "ref", higher_is_better=True)] * 2
    run.load()
    monkeypatch.setitem(common.REGISTRY, "fake", lambda quick: fake if quick else [])
    assert run.main(["--quick", "--only", "fake"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == fake


@pytest.mark.slow
def test_clip_encode_tiny_end_to_end():
    figs = clip_encode.clip_encode(
        True, config=TINY, batch=5, warmup=0, iters=1, peak_n=64, max_attempts=1
    )
    assert [f["metric"] for f in figs] == ["images_per_second", "fraction_of_fp32_matmul_peak"]
    for f in figs:
        assert tuple(f) == common.FIELDS and f["benchmark"] == "clip_encode"
        assert f["higher_is_better"] is True and f["ours"] > 0 and f["baseline"] > 0
        json.dumps(f, allow_nan=False)
    p = figs[1]["params"]
    assert p["max_abs_diff"] < 1e-3
    assert p["batch"] == 8 and p["mesh"]["data"] == 8  # rounded up to the 8 fake devices
    assert p["torch_attn_implementation"] and p["dtype"] == "float32" and p["image_size"] == 32
    assert p["gflops_per_image"] == pytest.approx(
        clip_encode.forward_flops_per_image({**clip_encode.VIT_B32, **TINY}) / 1e9
    )
    assert figs[0]["ratio"] == pytest.approx(figs[1]["ratio"])


@pytest.mark.slow
def test_scale_stages_in_process_and_one_child():
    from benchmarks import scale

    assert run.load()["scale"] is scale.scale_bench
    res = scale.child(list(scale.STAGES), 1000, 8)  # here: conftest's 8 fake devices
    assert [r["stage"] for r in res] == list(scale.STAGES)
    for r in res:
        assert r["status"] == "ok" and r["seconds"] > 0 and r["n"] == 1000
        assert r["peak_gb"] is None or 0 < r["peak_gb"] < 16
    (r,) = scale._run_child(["knn"], 5000, 8, partial=1, cap_gb=8, timeout=120)
    assert r["status"] == "ok" and r["devices"] == 1 and r["extrapolated"]  # 1 of 3 blocks
    assert r["seconds"] == pytest.approx(r["measured_seconds"] * r["query_blocks"])
    assert 0 < r["peak_gb"] <= r["watchdog_peak_gb"] + 0.05


def test_scale_figures_exponents_and_watchdog(monkeypatch):
    from benchmarks import scale

    def fake(stages, n, k, **kw):  # time ~ N^2, memory above the runtime ~ N
        return [dict(stage=s, n=n, k=k, status="ok", seconds=(n / 1000) ** 2, rss_start_gb=0.1,
                     peak_gb=0.1 + n / 1000) for s in stages]  # fmt: skip

    monkeypatch.setattr(scale, "_run_child", fake)
    by = {f["metric"]: f for f in scale.scale_bench(False, sizes=(1000, 4000), stages=("knn",))}
    assert by["knn_n4000_seconds"]["ours"] == 16.0 and by["knn_n4000_peak_gb"]["ours"] == 4.1
    assert by["knn_time_exponent"]["ours"] == pytest.approx(2.0)
    assert by["knn_memory_exponent"]["ours"] == pytest.approx(1.0)
    for f in by.values():
        assert tuple(f) == common.FIELDS and f["baseline"] is None
        json.dumps(f, allow_nan=False)
    monkeypatch.undo()
    assert scale.exponent([10], [1.0]) is None
    (res,) = scale._run_child(["knn"], 1000, 8, partial=None, cap_gb=0.02, timeout=60)
    assert res["status"].startswith("killed: RSS") and res["seconds"] is None


# ---- vqa_generate ------------------------------------------------------------------------------
TINY_BLIP = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
    qformer=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 cross_attention_frequency=2),
    text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2),
    image_size=32, patch_size=16, num_query_tokens=8, vocab_size=32000, images=1,
)  # fmt: skip


@pytest.mark.slow
def test_vqa_generate_instructblip_tiny_end_to_end():
    """The InstructBLIP part on a tiny model: outputs equal transformers' (5 beams) per pair and
    per image before timing, two figures against the two call patterns."""
    from benchmarks import vqa_generate

    figs = vqa_generate.vqa_generate(True, blip_spec=TINY_BLIP, iters=1,
                                     families=("instructblip",))  # fmt: skip
    assert len(figs) == 2 and {f["benchmark"] for f in figs} == {"vqa_generate"}
    for f in figs:
        assert f["metric"] == "answers_per_second_instructblip_beam5" and f["ratio"] > 0
        assert f["params"]["rows_equal_to_hf_per_pair"] == 1.0
        assert f["params"]["rows_equal_to_hf_per_image"] == 1.0
        assert f["params"]["query_tokens"] == 8 and f["params"]["num_beams"] == 5


@pytest.mark.slow
def test_vqa_generate_qwen_tiny_end_to_end():
    """The Qwen2.5-VL part on a tiny model, two image sizes in one batch: every row equals
    transformers' greedy output per pair and per image before timing; two figures."""
    from benchmarks import vqa_generate
    from benchmarks.vqa_generate_qwen import _spec

    figs = vqa_generate.vqa_generate(True, qwen_spec=_spec(64, 1, ((56, 84), (84, 112))), iters=1,
                                     families=("qwen2_5_vl",))  # fmt: skip
    assert len(figs) == 2 and {f["benchmark"] for f in figs} == {"vqa_generate"}
    for f in figs:
        assert f["metric"] == "answers_per_second_qwen2_5_vl_greedy" and f["ratio"] > 0
        assert f["params"]["rows_equal_to_hf_per_pair"] == 1.0
        assert f["params"]["rows_equal_to_hf_per_image"] == 1.0
        assert len(set(f["params"]["image_tokens"])) == 2  # two sizes, one batch
        assert {"seconds_ours", "seconds_hf_each", "jax_version"} <= set(f["params"])


def test_machine_record_names_cpu_isa_versions_and_blas():
    from benchmarks import machine

    rec = machine.static_record()
    assert rec["cores"] >= 1 and rec["cpu_model"]
    assert set(rec["isa"]) <= set(machine.ISA_FLAGS)
    assert rec["versions"]["jax"] and rec["versions"]["numpy"]
    assert rec["numpy_blas"] is None or rec["numpy_blas"]["package"] == "numpy.libs"
    line = common.device_string()
    assert line.startswith("cpu") and f"{rec['cores']} cores" in line and "jax " in line
    json.dumps(rec)


def test_gemm_probe_reports_each_library_and_the_best():
    from benchmarks import machine

    g = machine.gemm_probe(True, shapes=((64, 32, 48), (32, 16, 8)))
    assert set(g["64x32x48"]) >= {"jax", "numpy"} and g["32x16x8"]["jax"] > 0
    assert g["best"] == max(g["best_gflops"].values()) == g["best_gflops"][g["best_by"]]
    assert g["best_gflops"]["jax"] == max(g["64x32x48"]["jax"], g["32x16x8"]["jax"])


def test_knn_faiss_peer_agrees_and_tie_check_fails_on_real_differences():
    from benchmarks import knn as kb
    from vl_jax.cluster import knn

    x, _ = kb.clip_like_features(300, dim=32)
    for metric in ("cosine", "l2"):
        ours, dist = knn(x, 5, metric)
        ref, ref_dist = kb.faiss_fn(x, metric, 5)()
        check = kb.same_neighbours(x, metric, ours, ref)
        assert check["rows"] == 300 and check["max_tie_gap"] <= kb.TIE_TOL
        np.testing.assert_allclose(dist, ref_dist, atol=1e-4)
    wrong = ours.copy()
    wrong[0, 0] = ours[0, -1] + 1 if ours[0, -1] + 1 not in ours[0] else 299
    with pytest.raises(AssertionError, match="beyond float32 ties"):
        kb.same_neighbours(x, "l2", wrong, ours)


@pytest.mark.slow
def test_kmeans_faiss_peer_inertia_rule():
    from benchmarks import kmeans as kmb
    from benchmarks.knn import clip_like_features
    from vl_jax.cluster import kmeans

    x, _ = clip_like_features(600, dim=16)
    c, _, ours = kmeans(x, kmb.CLUSTERS, n_init=2, seed=0)
    assert kmb.inertia(x, c) == pytest.approx(ours, rel=1e-4)
    niter, got = kmb.faiss_at_same_inertia(x, ours)
    assert niter in kmb.FAISS_NITER
    ladder = {it: kmb.inertia(x, kmb.faiss_fn(x, it)()) for it in kmb.FAISS_NITER}
    assert got == ladder[niter] and got <= kmb.SAME_INERTIA * max(ours, min(ladder.values()))
    assert all(
        ladder[it] > kmb.SAME_INERTIA * max(ours, min(ladder.values()))
        for it in ladder
        if it < niter
    )
    assert kmb.faiss_fn(x, 5)().shape == (kmb.CLUSTERS, 16)
    # Ours under the same rule: the first rung within 0.1 % of its converged inertia.
    c, _, _ = kmeans(x, kmb.CLUSTERS, n_init=kmb.N_INIT, seed=0)
    converged = kmb.inertia(x, c)
    it, at = kmb.ours_at_same_inertia(x, converged)
    assert it in kmb.FAISS_NITER and at <= kmb.SAME_INERTIA * converged
    for lower in [r for r in kmb.FAISS_NITER if r < it]:
        c, _, _ = kmeans(x, kmb.CLUSTERS, n_init=kmb.N_INIT, seed=0, max_iter=lower)
        assert kmb.inertia(x, c) > kmb.SAME_INERTIA * converged


@pytest.mark.slow
def test_knn_and_kmeans_benchmarks_tiny_end_to_end(monkeypatch):
    from benchmarks import kmeans as kmb
    from benchmarks import knn as kb
    from benchmarks import machine

    fake = {**machine.static_record(), "gemm": {"best": 100.0}}
    monkeypatch.setattr(kb, "device_record", lambda: fake)
    monkeypatch.setattr(kmb, "device_record", lambda: fake)
    figs = kb.knn_bench(True, n=400, growth=False)
    assert [f["metric"] for f in figs] == [
        "seconds_cosine",
        "seconds_cosine_vs_sklearn",
        "fraction_of_best_gemm",
    ]
    assert figs[0]["baseline_name"].startswith("faiss IndexFlatIP")
    assert figs[0]["params"]["rows_vs_faiss"] == 400
    assert figs[2]["params"]["best_gemm_seconds"] == pytest.approx(2 * 400**2 * 512 / 1e11)
    figs = kmb.kmeans_bench(True, n=600, growth=False)
    assert [f["metric"] for f in figs] == [
        "seconds_to_same_inertia",
        "seconds_same_ladder",
        "seconds_to_sklearn_inertia",
    ]
    assert figs[1]["params"]["ours_max_iter_same_ladder"] in (*kmb.FAISS_NITER, 300)
    p = figs[0]["params"]
    assert p["faiss_niter"] in kmb.FAISS_NITER and p["inertia_faiss"] > 0
    for f in figs:
        json.dumps(f, allow_nan=False)
