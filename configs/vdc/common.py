"""What every VDC config shares: the full default config, the MLLMs, datasets and attacks.

    c = vdc_config()                                   # every field the driver reads
    a = parse_arg(arg, attack=ATTACK_NAMES, **PAPER_FLAGS)
    c.corrupt.attack = a.attack
    paper_setting(c, a)       # InstructBLIP in the official protocol; `,llava` / `,ours` /
                              # `,small` / `,qwen2_5_vl` / `,qwen2_5_vl_3b`

The driver (``vdc_jax.cleanse``) only reads a config; this module is the one place one is
built. The schema is documented field by field below and in docs/vdc.md.
"""

from __future__ import annotations

import ml_collections

from configs.common import mesh
from vl_jax.errors import ConfigError

# The MLLMs: LLaVA-1.5-7B (the library default), a 0.5B LLaVA (the configs' `small` flag) and
# the paper's InstructBLIP-Vicuna-7B (the paper configs' default, in the official protocol).
MLLMS = {
    "7b": "llava-hf/llava-1.5-7b-hf",
    "small": "llava-hf/llava-interleave-qwen-0.5b-hf",
    "instructblip": "Salesforce/instructblip-vicuna-7b",
    # Qwen2.5-VL, the MLLM VDC 2.0 recommends (`qwen_setting`); the 3B for smaller machines.
    "qwen2_5_vl": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2_5_vl_3b": "Qwen/Qwen2.5-VL-3B-Instruct",
}
# VDC 2.0's way of asking a label-specific question: an explicit verdict first, then a reason
# (the answer reader takes the leading yes/no; greedy decoding fixes it before the reason).
YES_NO_FIRST = "Answer Yes or No first, then give a short reason."
# Qwen2-VL's pixel budget per image in the VDC configs (the processor's default is 1280 x 28^2):
# 448^2 px = at most 1024 patches, 256 image tokens; ImageNet photos (~500 x 375) keep their
# size, only larger ones are scaled down. A fixed throughput setting, not tuned on any labels.
QWEN_MAX_PIXELS = 448 * 448
# config.protocol: the rule sets of vdc_jax.protocol ("ours" is the default).
PROTOCOLS = ("ours", "official")
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
        kind="tfds",  # tfds | folder | csv | hf | synthetic (generated shapes in the workdir)
        name="",  # tfds: a vl_jax.data.get_source name (cifar10, imagenet_dog10, ...)
        split="train",  # tfds split
        data_dir="",  # tfds: where the prepared array_record data lives ("" = TFDS default)
        manual_dir="",  # tfds: downloaded archives (ImageNet) for preparation
        path="",  # folder: the image folder; csv: the CSV of path,label rows; hf: the dataset
        class_names=[],  # csv / hf: names that numeric labels index into ([] = the sorted labels)
        image_column="image",  # hf: the column of images (Image feature, bytes or paths)
        label_column="label",  # hf: the column of labels ("" = unlabelled)
        id_column="",  # hf: a column of unique ids ("" = "<split>/<row>")
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
        min_new_tokens=0,  # stop tokens are banned before this many new tokens (HF meaning)
        num_beams=1,  # 1 = greedy
        repetition_penalty=1.0,
        length_penalty=1.0,  # beam search: hypothesis score = sum log p / length ** this
        prompt="chat",  # chat = the model family's template around the question; raw = the
        # question string itself (InstructBLIP as LAVIS prompts it: the official protocol)
    )
    c.judge = dict(
        kind="llm",  # llm | embedding | none: who decides descriptions without a keyword hit
        llm=MLLM,  # as vqg.llm
        max_new_tokens=8,  # judge reply length
        batch_size=64,  # prompts per judge call
        embed_model="openai/clip-vit-base-patch32",  # kind="embedding": a CLIP
        embed_threshold=0.25,  # kind="embedding": cosine similarity that counts as consistent
    )
    # The CLIP pre-screen (vdc_jax.prescreen): a sample whose label is CLIP's zero-shot top-1
    # with p >= min_prob, and shared by >= min_agree of its CLIP-space neighbours, skips the
    # MLLM (score 1, kept). The thresholds are a rule fixed in advance, not tuned on any labels.
    c.prescreen = dict(
        enabled=False,
        clip="",  # a CLIP checkpoint: hub id or directory
        prompt="a photo of a {}",  # zero-shot prompt per class name
        batch_size=64,  # images per CLIP encoding step
        min_prob=0.9,  # zero-shot probability of the label, at least
        neighbours=10,  # nearest images (cosine, CLIP image space) of the data being cleaned
        min_agree=0.5,  # share of those neighbours carrying the sample's label, at least
    )
    c.threshold = 0.5  # flag a sample when its consistency score < threshold
    # W/cleaned_hf, the scored samples as an HF dataset with label_issue and score columns
    # (vdc_jax.export_hf): auto = when data.kind is "hf" | true | false
    c.export_hf = "auto"
    # ours | official (vdc_jax.protocol): the answer-evaluation rules and general questions.
    # official = the paper code's rules (substring "yes", any-token descriptions, empty answers
    # dropped, "Caption"/"Labels" judge, dirty detected at score <= threshold in the metrics);
    # set the paper's decoding with `official_protocol` below, not by this field alone.
    c.protocol = "ours"
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


def official_protocol(c: ml_collections.ConfigDict, mllm: str = "instructblip"):
    """The paper's pipeline: the official rules (``c.protocol = "official"``) and the official
    code's decoding for ``mllm``.

    instructblip (the paper's default): InstructBLIP-Vicuna-7B as LAVIS's
    ``blip2_vicuna_instruct.generate`` runs it — the raw question as the prompt, beam search
    with 5 beams, repetition penalty 1.5, length penalty 1, min length 1, max length 256. LAVIS
    calls the language model's ``generate`` with ``inputs_embeds`` only (query outputs +
    prompt embeddings, no ``input_ids``), so under the transformers it requires (>= 4.28) the
    output holds only new tokens and max_length / min_length count new tokens: 256 / 1 new
    tokens here, for descriptions and yes/no answers alike (a shorter yes/no budget could end
    a beam search differently); and the repetition penalty sees only the new tokens (the VQA
    engine's default for the raw prompt). See docs/generation.md for how the engine matches it.

    llava: LLaVA-1.5-7B as the official code's LLaVA wrapper runs it — greedy, 512 new
    tokens, LLaVA's own conversation template around the question (the model was tuned only
    in that format; a raw question would be out of distribution, and the official wrapper
    uses the template too).
    """
    c.protocol = "official"
    c.threshold = 0.5
    c.judge.max_new_tokens = 16  # the official judge's reply is read for "yes" anywhere
    v = c.vqa
    if mllm == "instructblip":
        c.model.name = MLLMS["instructblip"]
        v.prompt, v.num_beams, v.repetition_penalty, v.length_penalty = "raw", 5, 1.5, 1.0
        v.min_new_tokens, v.describe_tokens, v.yes_no_tokens = 1, 256, 256
        v.batch_size = 8  # 5 beams multiply the rows: 8 images x 6 questions x 5 = 240 rows
    elif mllm == "llava":
        c.model.name = MLLMS["7b"]
        v.prompt, v.num_beams, v.repetition_penalty, v.length_penalty = "chat", 1, 1.0, 1.0
        v.min_new_tokens, v.describe_tokens, v.yes_no_tokens = 0, 512, 512
    else:
        raise ValueError(f"official_protocol: mllm must be instructblip or llava, got {mllm!r}")
    return c


def qwen_setting(c: ml_collections.ConfigDict, mllm: str = "qwen2_5_vl"):
    """Qwen2.5-VL-Instruct (``mllm``: "qwen2_5_vl" = 7B, "qwen2_5_vl_3b" = 3B) as VDC 2.0 runs
    it: our rules (`protocol = "ours"`: the leading yes/no is read), the checkpoint's chat
    template around the question, greedy, yes/no questions with `YES_NO_FIRST` appended, and
    the same model writing the questions and judging descriptions (its decoder, text only).
    Two Qwen-only fields: ``model.max_pixels`` (`QWEN_MAX_PIXELS`: each image's pixel budget,
    the throughput knob of dynamic resolution) and ``vqa.yes_no_instruction``."""
    c.protocol = "ours"
    c.model.name = MLLMS[mllm]
    c.model.max_pixels = QWEN_MAX_PIXELS
    v = c.vqa
    v.prompt, v.num_beams, v.repetition_penalty, v.length_penalty = "chat", 1, 1.0, 1.0
    v.min_new_tokens = 0
    v.yes_no_instruction = YES_NO_FIRST
    c.vqg.llm = MLLM
    c.judge.kind, c.judge.llm = "llm", MLLM
    return c


def paper_setting(c: ml_collections.ConfigDict, a) -> ml_collections.ConfigDict:
    """The paper configs' model and protocol flags: default InstructBLIP-Vicuna-7B in the
    official protocol; ``llava`` = LLaVA-1.5-7B in the official protocol; ``ours`` = our rules
    and decoding (llava-1.5-7b, the library defaults); ``small`` = the 0.5B LLaVA with ours
    (``llava,small``: the 0.5B LLaVA in the official protocol); ``qwen2_5_vl`` /
    ``qwen2_5_vl_3b`` = Qwen2.5-VL-7B / 3B-Instruct as VDC 2.0 runs it (`qwen_setting`)."""
    qwen = [k for k in ("qwen2_5_vl", "qwen2_5_vl_3b") if a.get(k)]
    if qwen:
        if len(qwen) > 1 or a.llava or a.small:
            raise ConfigError(
                f"config arg: {', '.join(qwen)} picks the MLLM; it does not combine with "
                "llava, small or another Qwen"
            )
        return qwen_setting(c, qwen[0])
    if a.ours or (a.small and not a.llava):
        return use_small(c, a.small)
    official_protocol(c, "llava" if a.llava else "instructblip")
    return use_small(c, a.small)


# The flags `paper_setting` reads, for parse_arg.
PAPER_FLAGS = dict(llava=False, ours=False, small=False, qwen2_5_vl=False, qwen2_5_vl_3b=False)


def use_small(c: ml_collections.ConfigDict, small: bool) -> ml_collections.ConfigDict:
    """Swaps llava-1.5-7b for the 0.5B LLaVA when the config's ``small`` flag is set."""
    if small:
        c.model.name = MLLMS["small"]
    return c
