"""What every VDC config shares: the full default config, the MLLMs, datasets and attacks.

    c = vdc_config()                                   # every field the driver reads
    a = parse_arg(arg, attack=ATTACK_NAMES, small=False)
    c.corrupt.attack = a.attack
    if a.small:
        c.model.name = MLLMS["small"]

The driver (``vdc_jax.cleanse``) only reads a config; this module is the one place one is
built. The schema is documented field by field below and in docs/vdc.md.
"""

from __future__ import annotations

import ml_collections

from configs.common import mesh

# The MLLMs of the configs' `small` flag (7b is the default): LLaVA-1.5 and a 0.5B LLaVA.
MLLMS = {"7b": "llava-hf/llava-1.5-7b-hf", "small": "llava-hf/llava-interleave-qwen-0.5b-hf"}
# The paper's six attacks (vdc_jax.corrupt.ATTACKS).
ATTACK_NAMES = ("badnets", "blended", "sig", "wanet", "trojannn", "ssba")
# config arg name -> (get_source name, split, label-specific questions per class)
DATASETS = {
    "cifar10": ("cifar10", "train", 4),
    "imagenet100": ("imagenet100", "train", 6),
    "imagenet_dog": ("imagenet_dog10", "train_800", 6),
}
# The paper's poisoned samples per non-target class (§4.1).
POISON_PER_CLASS = {"cifar10": 500, "imagenet100": 50, "imagenet_dog": 80}
# VQG / judge "llm" value that means the MLLM's own language model.
MLLM = "mllm"


def vdc_config() -> ml_collections.ConfigDict:
    """Every field the VDC driver reads, with defaults: llava-1.5-7b, template-padded VQG by
    the MLLM's language model, judge = the same language model."""
    c = ml_collections.ConfigDict()
    c.job = "vdc"
    c.data = dict(
        kind="tfds",  # tfds | folder | csv | synthetic (generated shapes in the workdir)
        name="",  # tfds: a vl_jax.data.get_source name (cifar10, imagenet_dog10, ...)
        split="train",  # tfds split
        data_dir="",  # tfds: where the prepared array_record data lives ("" = TFDS default)
        manual_dir="",  # tfds: downloaded archives (ImageNet) for preparation
        path="",  # folder: the image folder; csv: the CSV of path,label rows
        class_names=[],  # csv: names that numeric labels index into ([] = the sorted labels)
        per_class=8,  # synthetic: images per shape
        seed=0,  # synthetic: image seed
    )
    c.corrupt = dict(
        attack="",  # "" = no poisons, else one of ATTACK_NAMES
        attack_kwargs={},  # the attack's parameters (e.g. {"alpha": 0.1} for blended)
        target=0,  # all-to-one target class
        poison_per_class=0,  # poisons per non-target class (0 = use poison_rate)
        poison_rate=0.0,  # poisons as a fraction of the labelled dataset
        noise="",  # "" | sym | asym label noise
        noise_rate=0.0,  # fraction of every class relabelled by the noise
        seed=0,  # which samples are altered
    )
    c.model = dict(
        name=MLLMS["7b"],  # hub id, checkpoint directory, or "tiny-random" (written in workdir)
        dtype="bfloat16",  # float32 | bfloat16 | float16
        seed=0,  # "tiny-random" only: its weights
    )
    c.vqg = dict(
        llm=MLLM,  # "" = templates, "mllm" = the MLLM's language model, or a text LLM id / dir
        n=6,  # label-specific yes/no questions per class
        questions_file="",  # a user-written questions JSON that overrides VQG
        max_new_tokens=256,  # VQG reply length
    )
    c.vqa = dict(
        batch_size=16,  # images per VQA step (all their questions in one generate call per kind)
        yes_no_tokens=8,  # max new tokens of a yes/no answer
        describe_tokens=64,  # max new tokens of a description
        num_beams=1,  # 1 = greedy
        repetition_penalty=1.0,
    )
    c.judge = dict(
        kind="llm",  # llm | embedding | none: who decides descriptions without a keyword hit
        llm=MLLM,  # as vqg.llm
        max_new_tokens=8,  # judge reply length
        batch_size=64,  # prompts per judge call
        embed_model="openai/clip-vit-base-patch32",  # kind="embedding": a CLIP
        embed_threshold=0.25,  # kind="embedding": cosine similarity that counts as consistent
    )
    c.threshold = 0.5  # flag a sample when its consistency score < threshold
    c.mesh = mesh()  # data x model devices (vl_jax.parallel.mesh_from_config)
    return c


def tfds_config(dataset: str) -> ml_collections.ConfigDict:
    """:func:`vdc_config` on one of :data:`DATASETS` (name, split, questions per class), with
    the all-to-one target class 0."""
    c = vdc_config()
    c.data.kind = "tfds"
    c.data.name, c.data.split, c.vqg.n = DATASETS[dataset]
    c.corrupt.target = 0
    return c


def use_small(c: ml_collections.ConfigDict, small: bool) -> ml_collections.ConfigDict:
    """Swaps llava-1.5-7b for the 0.5B LLaVA when the config's ``small`` flag is set."""
    if small:
        c.model.name = MLLMS["small"]
    return c
