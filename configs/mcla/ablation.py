"""MCLA's ablation on one dataset: heads only, + adapter, + prompts, full MCLA, SIC, TAC.

    python -m mcla_jax.main --config configs/mcla/ablation.py:demo_shapes --workdir runs/abl_shapes
    python -m mcla_jax.main --config configs/mcla/ablation.py:runlocal --workdir runs/abl_local
    python -m mcla_jax.main --config configs/mcla/ablation.py:imagenet_dogs --workdir runs/abl_dogs

The argument is a clustering dataset argument (``configs/mcla/common.py``: DATASET[,b16|l14]
[,train_eq_eval] or ``runlocal``), or ``demo_shapes`` / ``demo_colors``: the offline demo's
easy-VQA datasets with the shipped demo CLIP and the demo's settings (configs/offline_demo.py).
Every arm runs ``seeds`` (default 0,1,2) and reads one shared features folder; the table goes
to ``WORKDIR/ablation.md`` and ``ablation.json`` (``mcla_jax.ablation``). Override an arm's
setting with ``--config.arms.<arm>.train.epochs=...``.
"""

import os

import ml_collections

import configs.mcla
from vl_jax.errors import ConfigError

DEMO = {"demo_shapes": "easy_vqa_shapes", "demo_colors": "easy_vqa_colors"}
# arm -> (method, MCLA's adapter, MCLA's prompt context)
ARMS = {
    "heads": ("mcla", False, False),
    "adapter": ("mcla", True, False),
    "prompts": ("mcla", False, True),
    "mcla": ("mcla", True, True),
    "sic": ("sic", None, None),
    "tac": ("tac", None, None),
}


def get_config(arg: str = "runlocal"):
    features = os.path.join("{workdir}", "..", "features")  # one folder beside the arms
    arms = {}
    for name, (method, adapter, prompt) in ARMS.items():
        if arg in DEMO:
            from configs.offline_demo import mcla_part

            c = mcla_part(method, DEMO[arg], features)
        else:
            try:
                c = configs.mcla.get(method, arg)
            except ConfigError as e:
                raise ConfigError(f"ablation: {e} (or one of {sorted(DEMO)})") from None
        c.data.features_dir = features
        if adapter is not None:
            c.train.model.adapter = adapter
            c.train.prompt.enabled = prompt
        arms[name] = c
    c = ml_collections.ConfigDict()
    c.job = "mcla"
    c.method = "ablation"
    c.dataset = arg
    c.seeds = "0,1,2"
    c.order = ",".join(ARMS)  # the table's row order (a ConfigDict sorts its keys)
    c.arms = ml_collections.ConfigDict(arms)
    return c
