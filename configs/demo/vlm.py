"""A tiny LLaVA-style VLM trained on the easy-VQA shapes questions (train split), evaluated by
greedy generation on the test questions.

    python main.py --config configs/demo/vlm.py --workdir runs/vlm \
        --config.vision_init=runs/clip/model     # any HF CLIP dir; default: the shipped demo CLIP
    python main.py --config configs/demo/vlm.py:runlocal --workdir /tmp/vlm   # seconds, no meaning

The vision tower comes from the CLIP in `vision_init` (frozen unless `freeze_vision=False`), the
projector and the Llama decoder are trained from scratch; the tokenizer is the CLIP's. Writes the
HF-format model (config.json, model.safetensors, tokenizer + processor files, eval.json) to
`export_dir` (default `<workdir>/model`) and checkpoints to `<workdir>/checkpoints` (a rerun
resumes). `scripts/train_demo_models.py` runs this to rebuild `vl_jax/assets/demo/vlm`.
"""

import ml_collections

from vl_jax.train.loop import optimizer_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "train_vlm"
    c.seed = 0
    c.vision_init = ""  # a HF CLIP directory; "" = the demo CLIP shipped in vl_jax/assets/demo
    c.freeze_vision = True
    c.init_from = ""  # a HF LLaVA directory to continue from (a previous stage); "" = fresh
    # The last layer with its class token ("full"): the token CLIP's contrastive loss trained
    # (LLaVA-1.5 uses -2 / "default": patch tokens of the penultimate layer).
    c.feature_layer = -1
    c.select_strategy = "full"
    c.prompt = "USER: <image>\n{question} ASSISTANT:"  # <image> expands to the image tokens
    c.describe = True  # add "describe the image." -> "a red circle." examples
    c.own_color = 0  # yes/no questions per image about its own colour (vl_jax.train.vlm.examples)
    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.train_limit = ml_collections.FieldReference(None, field_type=int)
    c.data.test_limit = ml_collections.FieldReference(None, field_type=int)
    c.text = ml_collections.ConfigDict(
        dict(hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4)
    )
    c.max_length = 96  # 64 image tokens + the longest question and answer fit
    c.batch_size = 64  # global; divisible by the mesh's data axis
    c.num_steps = 2000
    c.optim = optimizer_config(lr=2e-3, warmup_steps=100, weight_decay=0.05)
    c.checkpoint_every = 500
    c.log_every = 100
    c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
    c.export_dir = ""
    c.export_dtype = "float32"
    if arg == "stage2":  # continue a stage-1 model (--config.init_from=DIR), new order and schedule
        c.seed = 1
        c.own_color = 2
        c.num_steps = 1000
        c.optim = optimizer_config(lr=1e-3, warmup_steps=50, weight_decay=0.05)
    if arg == "runlocal":
        c.num_steps, c.batch_size, c.checkpoint_every, c.log_every = 10, 16, 5, 5
        c.data.train_limit, c.data.test_limit = 32, 8
    return c
