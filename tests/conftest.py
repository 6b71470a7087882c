"""Test setup: 8 fake CPU devices, offline HF. Env vars must be set before jax is imported."""

import os
import re

_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import jax  # noqa: E402
import pytest  # noqa: E402

try:  # newer jax: the config option supersedes XLA_FLAGS; fails once the backend exists
    jax.config.update("jax_num_cpu_devices", 8)
except (AttributeError, RuntimeError, ValueError):
    pass


def _mesh(data, model, devices=None):
    from vl_jax.parallel import create_mesh  # lazy: a broken package must not break collection

    return create_mesh(data=data, model=model, devices=devices)


@pytest.fixture(scope="session")
def mesh8():
    return _mesh(8, 1)


@pytest.fixture(scope="session")
def mesh_4x2():
    return _mesh(4, 2)


@pytest.fixture(scope="session")
def mesh1():
    return _mesh(1, 1, jax.devices()[:1])
