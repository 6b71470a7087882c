"""The offline demo: both methods on real images with the small models trained here.

    python main.py --config configs/offline_demo.py --workdir runs/demo

Runs, in order, into `runs/demo/<part>/`: MCLA and CLIP k-means on easy-VQA shapes (K = 3) and
colours (K = 8) with the shipped demo CLIP (`vl_jax/assets/demo/clip`, trained on the easy-VQA
train split by scripts/train_demo_models.py) and a semantic space from the shipped WordNet nouns;
then VDC with the demo VLM (`vl_jax/assets/demo/vlm`) on the easy-VQA test images with injected
dirt: BadNets and Blended poisons relabelled to a target class, plus 20 % symmetric label noise.
No network; a few minutes on 2 CPU cores. Each part writes its own metrics.json; a rerun resumes.

The demo CLIP's tokenizer knows only the ~500 pieces of the easy-VQA text, so its semantic space
is restricted to WordNet nouns it spells as one token (`space.max_tokens = 1`, 106 nouns). Shapes
and colours are the *same* images; each image's nearest nouns are colour words, so a space of the
nouns nearest to the k-means centres (SIC's rule) makes colour-dominated text counterparts. MCLA
here keeps, per centre, the 4 nouns that single it out from the other centres (`space.rule =
"margin"`, `space.gamma_r = 4`; shapes: circle, rectangle, triangle and letters) and starts its
heads from the k-means centres (`train.init = "kmeans"`), so it refines CLIP k-means.
"""

import os

import ml_collections

import configs.mcla
import vl_jax
from configs.vdc.common import vdc_config as vdc_default

DEMO = os.path.join(os.path.dirname(vl_jax.__file__), "assets", "demo")


def mcla_part(method: str, dataset: str, features: str) -> ml_collections.ConfigDict:
    """The demo's clustering config of ``method`` on ``dataset`` (also the ablation's
    ``demo_*`` datasets, configs/mcla/ablation.py)."""
    c = configs.mcla.get(method, dataset)
    c.model.clip = os.path.join(DEMO, "clip")
    c.data.features_dir = features  # shared by the two methods of a dataset (encoded once)
    c.space.max_tokens = 1
    c.space.gamma_r = 8
    c.train.lr = 0.01  # 4,000 images make 15 steps per epoch at batch 256: a larger step
    c.train.batch_size = 256
    if method == "mcla":
        c.space.rule = "margin"  # nouns that tell the K centres apart (docs/mcla.md)
        c.space.gamma_r = 4  # per centre; 6 or more lets colour words into the shapes space
        c.train.init = "kmeans"  # start from the k-means solution (few steps on 800 images)
        # The larger step above is for the heads (few steps from a k-means start). The adapter
        # and the prompt context keep the default one: at 0.01 the adapter's residual branch
        # 0.2 A(u) outgrows the CLIP feature 0.8 u within 20 epochs (docs/mcla.md).
        c.train.embed_lr = configs.mcla.common.train_config().lr
    return c


def _vdc(attack: str) -> ml_collections.ConfigDict:
    """VDC on the 1,000 easy-VQA test images (the VLM never saw them) with `attack` poisons
    relabelled to class 0 (circle), 30 per other class, and 20 % symmetric label noise."""
    c = vdc_default()
    c.data.kind, c.data.name, c.data.split = "tfds", "easy_vqa_shapes", "test"
    c.corrupt.attack, c.corrupt.target, c.corrupt.poison_per_class = attack, 0, 30
    c.corrupt.noise, c.corrupt.noise_rate = "sym", 0.2
    c.model.name, c.model.dtype = os.path.join(DEMO, "vlm"), "float32"
    # The demo VLM answers the easy-VQA question forms it was trained on, not free-form
    # questions: the questions file holds those forms (it is not a text LLM, so no VQG either).
    c.vqg.llm = ""
    c.vqg.n = 4
    c.vqg.questions_file = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "offline_demo_questions.json")  # fmt: skip
    c.vqa.batch_size, c.vqa.yes_no_tokens, c.vqa.describe_tokens = 64, 4, 12
    c.judge.kind = "none"  # keyword match decides: the descriptions name the shape
    return c


def get_config():
    c = ml_collections.ConfigDict()
    c.job = "suite"
    parts = {}
    for dataset, short in (("easy_vqa_shapes", "shapes"), ("easy_vqa_colors", "colors")):
        features = os.path.join("{workdir}", "..", f"features_{short}")  # next to the parts
        for method in ("kmeans", "mcla"):
            parts[f"{method}_{short}"] = mcla_part(method, dataset, features)
    for attack in ("badnets", "blended"):
        parts[f"vdc_{attack}"] = _vdc(attack)
    c.parts = parts
    return c
