"""VDC on ImageNet-100 (CMC's classes), one all-to-one backdoor attack, 50 poisoned per class.

    python -m vdc_jax.main --config configs/vdc/imagenet100.py:sig --workdir runs/in100_sig \
        --config.data.manual_dir /data/ILSVRC2012

Arg: `<attack>[,small]`. The paper's 50 per class is eta = 0.099 of a 500-per-class subset;
our `train` split has all ~1,300 images per class (126k), so the ratio here is ~0.039 — pass
`--config.data.split 'train[:40%]'` for about the paper's size (not stratified).
"""

from vdc_jax.cleanse import apply_arg, default_config


def get_config(arg: str = "badnets"):
    c = default_config()
    c.data.kind = "tfds"
    c.data.name = "imagenet100"
    c.data.split = "train"
    c.corrupt.target = 0
    c.corrupt.poison_per_class = 50
    c.vqg.n = 6
    return apply_arg(c, arg, attack=True)
