"""Clustering configs: one file per method (``configs/mcla/<method>.py``)."""

import importlib

METHODS = ("mcla", "sic", "tac", "tac_notrain", "kmeans", "zeroshot")


def get(method: str, arg: str = "imagenet_dogs"):
    """``configs/mcla/<method>.py``'s ``get_config(arg)`` (for scripts and tests)."""
    from vl_jax.errors import ConfigError

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; known: {METHODS}")
    return importlib.import_module(f"configs.mcla.{method}").get_config(arg)
