"""LLaVA-style training (vl_jax.train.vlm): the answer loss decreases, the frozen vision tower
stays frozen, a resumed run equals an uninterrupted one, 8 devices compute the same step as 1, and
the exported HF directory loads through `llava.from_pretrained` / `llava.load_processor`.

Tiny models (16x16 images -> 4 image tokens, one decoder layer) on 16 synthetic images.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_clip

from configs.demo import vlm as vlm_config
from vl_jax.models import clip, llava
from vl_jax.train import clip as train_clip
from vl_jax.train import easy_vqa
from vl_jax.train import vlm as train_vlm


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, decoder tokenizer, data) with a tiny exported CLIP as the vision tower."""
    tok = easy_vqa.train_tokenizer(easy_vqa.corpus(), vocab_size=512)
    path = str(tmp_path_factory.mktemp("clip"))
    cfg = train_clip.model_config(tiny_clip(layers=2), len(tok), tok.eos_token_id)
    train_clip.export(clip.init(cfg, seed=0), tok, path)
    c = vlm_config.get_config()
    c.vision_init = path
    c.text.update(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2)
    c.max_length = 32
    c.num_steps = 6
    c.optim.update(lr=3e-3, warmup_steps=1)
    return c, easy_vqa.without_eos(tok), easy_vqa.synthetic_split()


def params_of(model, part=None):
    state = nnx.state(model if part is None else getattr(model, part), nnx.Param)
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def restart(trainer, state):
    """Back to the initial state (copied: the step donates its inputs), as a new process."""
    trainer.params, trainer.opt_state = jax.tree.map(jnp.copy, state)
    trainer.step = 0


def close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.fixture(scope="module")
def trainer1(setup, mesh1):
    """(one-device Trainer, its initial state, (mean, std), batches of 8): one compiled step
    shared by the tests below."""
    c, tok, data = setup
    trainer, stats = train_vlm.make_trainer(c, tok, mesh1)
    fresh = jax.tree.map(jnp.copy, (trainer.params, trainer.opt_state))
    batches = train_vlm.QABatches(data, tok, trainer.model().config, 8, c.max_length, seed=0)
    return trainer, fresh, stats, batches


@pytest.mark.slow
def test_examples_are_masked_to_the_answer(setup, trainer1):
    _, tok, _ = setup
    trainer, _, _, batches = trainer1
    cfg = trainer.model().config
    b = batches(0)
    for ids, w in zip(b["input_ids"], b["weights"]):
        # 2 x 2 patches + the class token (config: last layer, strategy "full")
        assert (ids == cfg.image_token_id).sum() == cfg.num_image_tokens == 5
        answer = tok.decode(ids[w > 0], skip_special_tokens=True).strip()
        assert answer in easy_vqa.COLORS or answer.startswith("a ")  # a colour or a description
        assert ids[w > 0][-1] == tok.eos_token_id


@pytest.mark.slow
def test_loss_decreases_frozen_tower_and_resume(trainer1, tmp_path):
    trainer, fresh, _, batches = trainer1
    restart(trainer, fresh)
    tower0 = params_of(trainer.model(), "vision_tower")
    proj0 = params_of(trainer.model(), "projector")
    full, history = trainer.fit(batches, 6, log_every=1)
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-2:]) < losses[0], losses
    close(params_of(full, "vision_tower"), tower0, rtol=0, atol=0)  # frozen: bit-identical
    kernel = params_of(full, "projector")["linear_1"]["kernel"]
    assert not np.allclose(kernel, proj0["linear_1"]["kernel"])

    restart(trainer, fresh)
    trainer.fit(batches, 6, str(tmp_path), checkpoint_every=3, stop_at=3)
    assert trainer.step == 3
    restart(trainer, fresh)  # as a new process: everything must come from the checkpoint
    resumed, hist = trainer.fit(batches, 6, str(tmp_path), checkpoint_every=3, log_every=1)
    assert [h["step"] for h in hist] == [4, 5, 6]  # it did resume at step 3
    close(params_of(resumed), params_of(full), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_eight_devices_equal_one(setup, trainer1, mesh8):
    """One step with the batch split over 8 devices equals the 1-device step."""
    c, tok, _ = setup
    one, fresh, _, batches = trainer1
    restart(one, fresh)
    got = {}
    for name, trainer in (("one", one), ("eight", train_vlm.make_trainer(c, tok, mesh8)[0])):
        loss = float(trainer.run_step(batches(0))["loss"])
        got[name] = params_of(trainer.model()), loss
    assert got["one"][1] == pytest.approx(got["eight"][1], rel=1e-5)
    close(got["one"][0], got["eight"][0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_export_loads_through_from_pretrained_and_processor(setup, trainer1, mesh1, tmp_path):
    c, tok, data = setup
    trainer, _, (mean, std), _ = trainer1
    model = trainer.model()
    train_vlm.export(model, tok, str(tmp_path), mean, std)
    loaded = llava.from_pretrained(str(tmp_path))
    assert loaded.config == model.config
    close(params_of(loaded), params_of(model), rtol=0, atol=0)
    # The processor expands <image> exactly as encode_example does.
    processor = llava.load_processor(str(tmp_path))
    q = "what color is the circle?"
    inputs = processor(
        images=[data.images[0]], text=[train_vlm.PROMPT.format(question=q)], return_tensors="np"
    )
    ids, _ = train_vlm.encode_example(tok, q, None, model.config.num_image_tokens)
    assert inputs["input_ids"][0].tolist() == ids
    pixels = inputs["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(
        pixels, np.asarray(train_clip.normalize_images(data.images[:1], mean, std)), atol=1e-5
    )
    # A second stage starts from the exported model (config.init_from).
    c2 = c.copy_and_resolve_references()
    c2.init_from = str(tmp_path)
    again, stats = train_vlm.make_trainer(c2, tok, mesh1)
    close(params_of(again.model()), params_of(model), rtol=0, atol=0)
    assert stats == (tuple(mean), tuple(std))
    result = train_vlm.evaluate_dir(str(tmp_path), data.subset(4))
    assert result["num_questions"] == 4 and 0 <= result["answer_accuracy"] <= 1
