"""CLIP contrastive training (vl_jax.train.clip on vl_jax.train.loop): the loss decreases, a
resumed run equals an uninterrupted one, and 8 devices compute the same step as 1.

Tiny model (16x16 images, one layer per tower) on 16 synthetic images (`easy_vqa.synthetic_split`), so
the whole file runs in seconds; the real data is exercised by tests/test_demo_models.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_clip

from vl_jax.models import clip
from vl_jax.train import clip as train_clip
from vl_jax.train import easy_vqa
from vl_jax.train.loop import Trainer, make_optimizer, optimizer_config


@pytest.fixture(scope="module")
def tokenizer():
    return easy_vqa.train_tokenizer(easy_vqa.corpus(), vocab_size=512)


def make_trainer(tokenizer, mesh, steps=6):
    cfg = train_clip.model_config(tiny_clip(), len(tokenizer), tokenizer.eos_token_id)
    tx = make_optimizer(optimizer_config(lr=3e-3, warmup_steps=1), steps)
    return Trainer(clip.init(cfg, seed=0), train_clip.loss_fn, tx, mesh)


def snapshot(trainer):
    """Copies of the initial state (the step donates its inputs)."""
    return jax.tree.map(jnp.copy, (trainer.params, trainer.opt_state))


def restart(trainer, state):
    trainer.params, trainer.opt_state = jax.tree.map(jnp.copy, state)
    trainer.step = 0


def params_of(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_tokenizer_round_trip(tokenizer, tmp_path):
    """The trained tokenizer is written as HF files and read back by the CLIP loader."""
    from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize

    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    ids, mask = tokenize(loaded, ["a photo of a red circle", "what color is the shape?"])
    assert len(loaded) < 1024 and loaded.eos_token_id != 2  # 2 would mean argmax pooling in HF
    assert ids[0, 0] == loaded.bos_token_id and ids[0, mask[0].sum() - 1] == loaded.eos_token_id
    # Every word of the corpus is one token (the BPE has merged them all).
    assert mask[0].sum() == 2 + 6
    assert loaded.decode(ids[1], skip_special_tokens=True) == "what color is the shape?"


@pytest.fixture(scope="module")
def trainer1(tokenizer, mesh1):
    """(one-device Trainer, its initial state): one compiled step shared by the tests below."""
    trainer = make_trainer(tokenizer, mesh1)
    return trainer, snapshot(trainer)


@pytest.fixture(scope="module")
def batches(tokenizer):
    return train_clip.CaptionBatches(easy_vqa.synthetic_split(), tokenizer, 8, 16, seed=0)


@pytest.mark.slow
def test_loss_decreases_and_resume_equals_uninterrupted(trainer1, batches, tmp_path):
    trainer, fresh = trainer1
    restart(trainer, fresh)
    full, history = trainer.fit(batches, 6, log_every=1)
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-2:]) < losses[0], losses

    restart(trainer, fresh)
    trainer.fit(batches, 6, str(tmp_path), checkpoint_every=3, stop_at=3)
    assert trainer.step == 3
    restart(trainer, fresh)  # as a new process: everything must come from the checkpoint
    resumed, hist = trainer.fit(batches, 6, str(tmp_path), checkpoint_every=3, log_every=1)
    assert [h["step"] for h in hist] == [4, 5, 6]  # it did resume at step 3
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        params_of(resumed),
        params_of(full),
    )

    # A damaged newest checkpoint is skipped: the run resumes from the one before.
    newest = tmp_path / "checkpoints" / "6"
    for f in newest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"")
    restart(trainer, fresh)
    trainer.fit(batches, 3, str(tmp_path))
    assert trainer.step == 3


@pytest.mark.slow
def test_eight_devices_equal_one(tokenizer, trainer1, batches, mesh8):
    """One step with the batch split over 8 devices equals the 1-device step."""
    got = {}
    one, fresh = trainer1
    restart(one, fresh)
    for name, trainer in (("one", one), ("eight", make_trainer(tokenizer, mesh8))):
        loss = float(trainer.run_step(batches(0))["loss"])
        got[name] = params_of(trainer.model()), loss
    assert got["one"][1] == pytest.approx(got["eight"][1], rel=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        got["one"][0],
        got["eight"][0],
    )


@pytest.mark.slow
def test_zero_shot_and_export_round_trip(tokenizer, trainer1, tmp_path):
    """export -> clip.from_pretrained gives the same zero-shot numbers as the in-memory model."""
    data = easy_vqa.synthetic_split()
    model = trainer1[0].model()
    train_clip.export(model, tokenizer, str(tmp_path))
    direct = train_clip.zero_shot(model, tokenizer, data)
    assert train_clip.evaluate_dir(str(tmp_path), data) == direct
    assert set(direct) >= {"shape_accuracy", "color_accuracy"}
