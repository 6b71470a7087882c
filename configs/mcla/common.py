"""What the clustering configs share: the dataset and CLIP tables and the config layout.

Each method's file (configs/mcla/<method>.py) starts from :func:`experiment_config` and sets
its own hyper-parameters where a reader sees them. The schema ``mcla_jax.experiment`` reads is
documented in docs/mcla.md ("Config").
"""

from __future__ import annotations

import ml_collections

from configs.common import mesh, parse_arg

# name -> (vl_jax.data name, train split, evaluation split, K). Evaluation splits follow SIC and
# TAC: ImageNet subsets are evaluated on their ILSVRC-2012 val images (750 for ImageNet-Dogs).
DATASETS = {
    "imagenet_dogs": ("imagenet_dogs", "train", "validation", 15),
    "imagenet10": ("imagenet10", "train", "validation", 10),
    "cifar10": ("cifar10", "train", "test", 10),
    "cifar20": ("cifar100_20", "train", "test", 20),
    "stl10": ("stl10", "train", "test", 10),
    "easy_vqa_shapes": ("easy_vqa_shapes", "train", "test", 3),
    "easy_vqa_colors": ("easy_vqa_colors", "train", "test", 8),
}
CLIP_MODELS = {
    "b32": "openai/clip-vit-base-patch32",
    "b16": "openai/clip-vit-base-patch16",
    "l14": "openai/clip-vit-large-patch14",
}


def train_config() -> ml_collections.ConfigDict:
    """Training defaults of the trained methods (TAC's optimiser and entropy weight, SIC's
    confident fraction; docs/mcla.md). Method files override what their method uses."""
    c = ml_collections.ConfigDict()
    c.method = "mcla"  # mcla | sic | tac (mcla_jax.methods)
    c.num_clusters = 10
    c.seed = 0
    c.epochs = 20
    c.batch_size = 512  # global; must be divisible by the mesh's data axis
    c.lr = 1e-3
    c.embed_lr = 0.0  # MCLA's adapter and prompt context: their own learning rate (0 = lr)
    c.b1, c.b2 = 0.9, 0.99
    c.weight_decay = 0.0
    c.warmup_epochs = 1  # prototype/semantic targets come from the previous epoch's heads
    # MCLA's semantic CE starts at this epoch (>= warmup_epochs): 5, the MCA author's code (1
    # measured no better by the label-free criterion, docs/mcla.md "Prompt learning").
    c.semantic_warmup_epochs = 5
    # MCLA's residual image adapter z = n(r A(u) + (1 - r) u), r = 0.2 (the MCA author's code).
    c.model = ml_collections.ConfigDict(dict(hidden=0, adapter=True, adapter_ratio=0.2))
    # MCLA's learnable prompt context (mcla_jax.prompts): n vectors initialised from `init`'s
    # token embeddings; per step `nouns_per_step` nouns (0 = all) are re-embedded with gradient,
    # all nouns once per epoch (docs/mcla.md, "Prompt learning"). Off for SIC / TAC.
    c.prompt = ml_collections.ConfigDict(dict(enabled=True, init="a photo of a", nouns_per_step=0))
    c.weights = ml_collections.ConfigDict(
        dict(
            instance=1.0,  # only trains something when the adapter is on (skipped otherwise)
            consistency=1.0,
            prototype=1.0,
            semantic=1.0,
            cluster=1.0,
            neighbour=1.0,
            entropy=5.0,
        )
    )
    c.tau = ml_collections.ConfigDict(dict(instance=0.1, prototype=0.5, cluster=0.5, text=0.005))
    c.confident_frac = 0.9  # SIC: top floor(0.9 floor(N / K)) rows per cluster -> semantic centre
    c.semantic_nouns = 30  # SIC: space nouns averaged into each semantic centre
    c.init = "random"  # or "kmeans": linear heads start at k-means centres (SIC's option)
    c.init_scale = 0.05  # a in W = 2aC, b = -a|C|^2
    # Rows per block of the per-epoch targets pass; its memory is a few [rows, K] arrays.
    # 0: 2^24 / K (64 MB per array; one block for N <= 1.1M at K = 15, 16,777 rows at K = 1000).
    c.target_block_rows = 0
    return c


def experiment_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
    """The layout every clustering config shares, for ``method`` on the dataset of ``arg``.

    ``arg`` = ``DATASET[,b16|l14][,train_eq_eval][,runlocal]``; ``runlocal`` alone means
    easy-VQA shapes with a tiny random CLIP (plumbing checks in a minute on a CPU)."""
    a = parse_arg(
        arg, dataset=(None, *DATASETS), clip=tuple(CLIP_MODELS), train_eq_eval=False,
        runlocal=False,
    )  # fmt: skip
    name = a.dataset or ("easy_vqa_shapes" if a.runlocal else "imagenet_dogs")
    source, train_split, eval_split, k = DATASETS[name]
    c = ml_collections.ConfigDict()
    c.job = "mcla"
    c.method = method
    c.seeds = "0"  # comma-separated; metrics.json reports each and mean +- std
    c.data = ml_collections.ConfigDict(
        dict(name=name, source=source, train_split=train_split, eval_split=eval_split,
             # train_eval: fit on train, evaluate on eval; train_eq_eval: the older protocol
             protocol="train_eq_eval" if a.train_eq_eval else "train_eval",
             data_dir="", manual_dir="", encode_batch=256,
             # kind "hf": a local HF dataset at `path` (vl_jax.data.hf) instead of `source`
             kind="tfds", path="", image_column="image", label_column="label", id_column="",
             limit=800 if a.runlocal else 0,  # images per split (0 = all)
             features_dir="")  # "" = WORKDIR/features; "{workdir}" stands for the workdir
    )  # fmt: skip
    # model.tiny: a random CLIP (vl_jax.models.tiny) written into the workdir instead of `clip`.
    c.model = ml_collections.ConfigDict(
        dict(clip=CLIP_MODELS[a.clip], dtype="float32", tiny=bool(a.runlocal))
    )
    # space.kind: sic | tac | mcla; space.rule (mcla only): "nearest" = each k-means centre
    # lists its gamma_r nearest nouns (SIC); "margin" = the gamma_r nouns that single it out
    # from the other centres. max_tokens > 0 keeps nouns the tokenizer spells in <= that many.
    c.space = ml_collections.ConfigDict(
        dict(kind="mcla", prompts="single", cache_dir="", gamma_r=50 if a.runlocal else 500,
             gamma_u=0.05, tac_per_centre=5, max_tokens=0, rule="nearest")
    )  # fmt: skip
    c.knn = 20
    # Neighbour lists: "exact" (vl_jax.cluster.knn, O(N^2 D)) or "ivf" (vl_jax.cluster.knn_ivf:
    # approximate, for N in the 100k-1M range; nlist / nprobe 0 = its default rules).
    c.knn_search = ml_collections.ConfigDict(dict(kind="exact", nlist=0, nprobe=0))
    c.kmeans_n_init = 10
    c.train = train_config()
    c.train.num_clusters = k
    if a.runlocal:
        c.train.epochs = 5
        c.train.batch_size = 128
    c.mesh = mesh()
    c.runlocal = bool(a.runlocal)
    return c
