"""Dirty-sample injection for evaluating the cleanser: backdoor triggers, label noise, hybrids.

See docs/vdc_corrupt.md. Pure numpy; nothing here imports jax.
"""

from vdc_jax.corrupt.dataset import (
    ATTACKS,
    KINDS,
    CorruptedSource,
    CorruptionSpec,
    make_attack,
    read_manifest,
)
from vdc_jax.corrupt.triggers import (
    Attack,
    BadNets,
    Blended,
    Sig,
    WaNet,
    badnets,
    badnets_patch_side,
    blended,
    noise_pattern,
    sig,
    sig_signal,
    wanet,
    wanet_displacement,
    wanet_noise_grid,
)

__all__ = [
    "ATTACKS",
    "KINDS",
    "Attack",
    "BadNets",
    "Blended",
    "CorruptedSource",
    "CorruptionSpec",
    "Sig",
    "WaNet",
    "badnets",
    "badnets_patch_side",
    "blended",
    "make_attack",
    "noise_pattern",
    "read_manifest",
    "sig",
    "sig_signal",
    "wanet",
    "wanet_displacement",
    "wanet_noise_grid",
]
