"""Side by side on the offline demo's corrupted easy-VQA test split: cleanlab (peer, when
installed), our confident learning, VDC, pre-screened VDC and the fused detector
(`vdc_jax.compare`; docs/vdc.md, "Pre-screen and confident learning").

    python main.py --config configs/vdc/compare.py:badnets --workdir runs/compare_badnets
    python main.py --config configs/vdc/compare.py:blended --workdir runs/compare_blended
    python main.py --config configs/vdc/compare.py:badnets,checkerboard --workdir runs/cmp_cb

The data, dirt (60 poisons relabelled to circle + 20 % symmetric noise), VLM and questions are
the offline demo's VDC parts (configs/offline_demo.py); the pre-screen uses the demo CLIP.
Every threshold here is fixed in advance (docs/vdc.md): none was chosen on these labels.
"""

import os

from configs.common import parse_arg
from configs.offline_demo import DEMO
from configs.offline_demo import _vdc as demo_vdc
from vl_jax.errors import ConfigError


def get_config(arg: str = "badnets"):
    a = parse_arg(arg, attack=("badnets", "blended"), checkerboard=False)
    c = demo_vdc(a.attack)
    if a.checkerboard and a.attack != "badnets":
        raise ConfigError("compare.py: 'checkerboard' is a BadNets trigger (badnets,checkerboard)")
    if a.checkerboard:  # BadNets with this package's earlier trigger: a crisp checkerboard patch
        c.corrupt.attack_kwargs = {"pattern": "checkerboard", "trigger_size": None}
    c.job = "vdc_compare"
    c.prescreen.clip = os.path.join(DEMO, "clip")
    c.prescreen.batch_size = 64
    # The linear probe of the confident-learning signal (vdc_jax.confident): scikit-learn's
    # LogisticRegression objective (C = l2_c), L-BFGS steps, stratified folds.
    c.confident = dict(folds=5, seed=0, l2_c=1.0, steps=100)
    # vdc_jax.fusion: "mean" = (VDC score + probe self-confidence) / 2 < threshold; "union".
    c.fusion = dict(mode="mean")
    return c
