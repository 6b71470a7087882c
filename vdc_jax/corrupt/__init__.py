"""Dirty-sample injection for evaluating the cleanser: backdoor triggers, label noise, hybrids.

See docs/vdc_corrupt.md. Pure numpy, except TrojanNN's trigger optimisation (jax, against our
CLIP vision tower).
"""

from vdc_jax.corrupt.dataset import (
    ATTACKS,
    KINDS,
    CorruptedSource,
    CorruptionSpec,
    make_attack,
    read_manifest,
)
from vdc_jax.corrupt.stega import SSBA, psnr, ssba, ssba_bits, ssba_decode, ssba_residual
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
from vdc_jax.corrupt.trojan import (
    TrojanNN,
    TrojanTrigger,
    generate_trigger,
    load_trigger,
    neuron_activations,
    select_neurons,
    trojannn,
)

__all__ = [
    "ATTACKS",
    "KINDS",
    "SSBA",
    "Attack",
    "BadNets",
    "Blended",
    "CorruptedSource",
    "CorruptionSpec",
    "Sig",
    "TrojanNN",
    "TrojanTrigger",
    "WaNet",
    "badnets",
    "badnets_patch_side",
    "blended",
    "generate_trigger",
    "load_trigger",
    "make_attack",
    "neuron_activations",
    "noise_pattern",
    "psnr",
    "read_manifest",
    "select_neurons",
    "sig",
    "sig_signal",
    "ssba",
    "ssba_bits",
    "ssba_decode",
    "ssba_residual",
    "trojannn",
    "wanet",
    "wanet_displacement",
    "wanet_noise_grid",
]
