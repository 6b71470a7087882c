"""A tiny CLIP trained contrastively on the easy-VQA shapes (train split), evaluated zero-shot.

    python main.py --config configs/demo/clip.py --workdir runs/clip
    python main.py --config configs/demo/clip.py:runlocal --workdir /tmp/clip   # seconds, no meaning

Writes the HF-format model (config.json, model.safetensors, tokenizer, preprocessor config,
eval.json) to `export_dir` (default `<workdir>/model`) and checkpoints to `<workdir>/checkpoints`
(a rerun resumes). `scripts/train_demo_models.py` runs this to rebuild `vl_jax/assets/demo/clip`.
"""

import ml_collections

from vl_jax.train.loop import optimizer_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.job = "train_clip"
    c.seed = 0
    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.train_limit = ml_collections.FieldReference(None, field_type=int)
    c.data.test_limit = ml_collections.FieldReference(None, field_type=int)
    c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=512))
    c.model = ml_collections.ConfigDict(
        dict(
            image_size=64,  # easy-VQA's native size: no resizing
            patch_size=8,
            width=64,
            layers=3,
            heads=4,
            mlp_ratio=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
            context_length=16,  # the longest caption is 10 tokens
            embed_dim=64,
            act="quick_gelu",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        )
    )
    c.batch_size = 128  # global; divisible by the mesh's data axis
    c.num_steps = 1200
    c.optim = optimizer_config(lr=2e-3, warmup_steps=100, weight_decay=0.05)
    c.checkpoint_every = 400
    c.log_every = 100
    c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
    c.export_dir = ""
    c.export_dtype = "float32"
    if arg == "runlocal":
        c.num_steps, c.batch_size, c.checkpoint_every, c.log_every = 10, 16, 5, 5
        c.data.train_limit, c.data.test_limit = 64, 32
    return c
