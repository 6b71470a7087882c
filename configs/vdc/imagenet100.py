"""VDC on ImageNet-100 (CMC's classes), one all-to-one backdoor attack, 50 poisoned per class.

    python -m vdc_jax.main --config configs/vdc/imagenet100.py:sig --workdir runs/in100_sig \
        --config.data.manual_dir /data/ILSVRC2012

Arg: `<attack>[,llava|,ours][,small]`; default InstructBLIP-Vicuna-7B in the official protocol
(see configs/vdc/imagenet_dog.py). The paper's 50 per class is eta = 0.099 of a 500-per-class subset;
our `train` split has all ~1,300 images per class (126k), so the ratio here is ~0.039 — pass
`--config.data.split 'train[:40%]'` for about the paper's size (not stratified).
"""

from configs.common import parse_arg
from configs.vdc.common import (
    ATTACK_NAMES,
    PAPER_FLAGS,
    POISON_PER_CLASS,
    paper_setting,
    tfds_config,
)


def get_config(arg: str = "badnets"):
    a = parse_arg(arg, attack=ATTACK_NAMES, **PAPER_FLAGS)
    c = tfds_config("imagenet100")  # imagenet100 train, 6 label-specific questions per class
    c.corrupt.attack = a.attack
    c.corrupt.poison_per_class = POISON_PER_CLASS["imagenet100"]  # 50
    return paper_setting(c, a)
