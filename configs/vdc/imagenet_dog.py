"""VDC on ImageNet-Dog (10 dog breeds x 800 train images), one all-to-one backdoor attack.

    python -m vdc_jax.main --config configs/vdc/imagenet_dog.py:badnets --workdir runs/dog_badnets \
        --config.data.manual_dir /data/ILSVRC2012

Arg: `<attack>[,llava|,ours][,small]` or `<attack>,qwen2_5_vl|,qwen2_5_vl_3b`, attack in
badnets / blended / sig / wanet / trojannn / ssba. Default: the paper's pipeline
(InstructBLIP-Vicuna-7B, official protocol); `llava` = LLaVA-1.5-7B in the official protocol;
`ours` = our rules and decoding (llava-1.5-7b); `small` = llava-interleave-qwen-0.5b (with
`ours`, or with `llava` in the official protocol); `qwen2_5_vl` / `qwen2_5_vl_3b` =
Qwen2.5-VL-7B / 3B-Instruct as VDC 2.0 runs it (our rules, chat template, yes/no first, the
same model writing questions and judging; 448^2-pixel budget per image). As in the paper (§4.1): target class 0,
80 poisoned per non-target class -> 720 poisoned, 7,280 clean; 2 + 6 questions per sample.
The 10 breeds are our stand-in (VDC did not publish its list): see docs/data.md, imagenet_dog10.
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
    c = tfds_config("imagenet_dog")  # imagenet_dog10 train_800, 6 questions per class
    c.corrupt.attack = a.attack
    c.corrupt.poison_per_class = POISON_PER_CLASS["imagenet_dog"]  # 80
    return paper_setting(c, a)
