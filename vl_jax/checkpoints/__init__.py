"""Checkpoint I/O: safetensors reading/writing, hub resolution, verified weight mapping."""

from vl_jax.checkpoints.hub import resolve
from vl_jax.checkpoints.mapping import Rule, export_state, load_model, load_state
from vl_jax.checkpoints.safetensors_io import CheckpointError, SafetensorsReader, save_safetensors

__all__ = [
    "CheckpointError",
    "Rule",
    "SafetensorsReader",
    "export_state",
    "load_model",
    "load_state",
    "resolve",
    "save_safetensors",
]
