"""The `vdc_stream` benchmark (benchmarks/vdc_stream.py) on a tiny stream: it is registered,
runs the cleanser's answering + scoring end to end, and returns well-formed figures. No timing
assertions; runs on conftest's 8 fake CPU devices."""

import json
import math

import numpy as np
import pytest

from benchmarks import common, run, vdc_stream


def test_pool_order_puts_every_class_in_every_batch():
    labels = [0] * 5 + [1] * 4 + [2] * 6
    order = vdc_stream.interleaved(labels, 3)
    assert [labels[i] for i in order] == [0, 1, 2] * 4  # the smallest class sets the length
    assert len(set(order)) == len(order)


@pytest.mark.slow
def test_vdc_stream_tiny_end_to_end():
    assert run.load()["vdc_stream"] is vdc_stream.vdc_stream
    n = 160  # 10 batches of 16: one per tenth of the run
    figs = vdc_stream.vdc_stream(True, n=n)
    by = {f["metric"]: f for f in figs}
    assert list(by) == ["samples_per_second", "throughput_last_over_first", "rss_growth_gb"]
    for f in figs:
        assert tuple(f) == common.FIELDS and f["benchmark"] == "vdc_stream"
        assert f["baseline"] is None and f["ratio"] is None  # no baseline: NaN -> null
        assert isinstance(f["ours"], float) and math.isfinite(f["ours"])
        json.dumps(f, allow_nan=False)
    assert by["samples_per_second"]["ours"] > 0 and by["throughput_last_over_first"]["ours"] > 0
    assert abs(by["rss_growth_gb"]["ours"]) < 1.0
    p = by["samples_per_second"]["params"]
    assert p["samples"] == n and p["questions_per_sample"] == 6 and p["mesh"]["data"] == 8
    windows = p["windows"]
    assert [w["samples"] for w in windows] == list(range(16, n + 1, 16))
    assert all(w["samples_per_second"] > 0 and w["rss_gb"] > 0 for w in windows)
    first, last = windows[0]["samples_per_second"], windows[-1]["samples_per_second"]
    assert by["throughput_last_over_first"]["ours"] == pytest.approx(last / first)
    assert by["rss_growth_gb"]["ours"] == pytest.approx(
        p["rss_gb_after_scoring"] - p["rss_gb_at_10pct"]
    )
    assert p["answers_jsonl_mb"] > 0 and 0 <= p["flagged"] <= n
    assert set(p["seconds"]) == {"setup", "compile", "answering", "scoring"}
    want = n / (p["seconds"]["answering"] + p["seconds"]["scoring"])
    assert np.isclose(by["samples_per_second"]["ours"], want)
