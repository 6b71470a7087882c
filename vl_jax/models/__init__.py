"""Model families of the shared core. Each module exposes its NNX module classes, a config, and
`from_pretrained(path_or_hub_id, dtype=...)`."""

import importlib

_MODELS = {
    "clip": "vl_jax.models.clip",
    "instructblip": "vl_jax.models.instructblip",
    "llava": "vl_jax.models.llava",
    "llm": "vl_jax.models.llm",
    "qwen2_vl": "vl_jax.models.qwen2_vl",  # Qwen2-VL and Qwen2.5-VL
}


def list_models() -> list[str]:
    """Names of the model families that `get_model_module` knows."""
    return sorted(_MODELS)


def get_model_module(name: str):
    """The module of a model family, e.g. `get_model_module("clip").from_pretrained(...)`."""
    if name not in _MODELS:
        raise KeyError(f"unknown model family '{name}'; known: {list_models()}")
    return importlib.import_module(_MODELS[name])
