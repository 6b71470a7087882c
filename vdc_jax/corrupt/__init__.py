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
    badnets_patch,
    badnets_patch_side,
    badnets_trigger,
    blended,
    corner_box,
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
    apple_mask,
    generate_trigger,
    load_trigger,
    neuron_activations,
    select_neurons,
    trojan_mask,
    trojannn,
)

# Bumped whenever an attack's default output changes (2: BackdoorBench's BadNets trigger, SIG
# delta 40, truncation to uint8, TrojanNN's apple mask), so that answers computed on the old
# images are refused rather than silently reused (vdc_jax.cleanse.fingerprint).
TRANSFORMS_VERSION = 2

__all__ = [
    "ATTACKS",
    "KINDS",
    "SSBA",
    "TRANSFORMS_VERSION",
    "Attack",
    "BadNets",
    "Blended",
    "CorruptedSource",
    "CorruptionSpec",
    "Sig",
    "TrojanNN",
    "TrojanTrigger",
    "WaNet",
    "apple_mask",
    "badnets",
    "badnets_patch",
    "badnets_patch_side",
    "badnets_trigger",
    "blended",
    "corner_box",
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
    "trojan_mask",
    "trojannn",
    "wanet",
    "wanet_displacement",
    "wanet_noise_grid",
]
