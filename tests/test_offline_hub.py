"""With HF_HUB_OFFLINE=1 (set by conftest) a hub id that is not cached fails fast and clearly,
and nothing touches the network: every socket connect / DNS lookup is recorded and refused."""

import socket
import time

import pytest

from vl_jax.checkpoints import resolve


@pytest.fixture
def network_attempts(monkeypatch):
    seen = []

    def refuse(what):
        def f(*args, **kwargs):
            seen.append((what, args[1:2] if what == "connect" else args[:1]))
            raise OSError(f"test: network access ({what}) is not allowed")

        return f

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    return seen


def test_uncached_hub_id_offline_fails_fast_without_network(tmp_path, network_attempts):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        resolve("openai/clip-vit-base-patch32", cache_dir=str(tmp_path))
    elapsed = time.perf_counter() - t0
    msg = str(err.value)
    assert "HF_HUB_OFFLINE is set and it is not in the local cache" in msg
    assert "openai/clip-vit-base-patch32" in msg and "hf download" in msg
    assert network_attempts == []
    assert elapsed < 5.0, f"offline resolution took {elapsed:.1f} s (retries?)"
