"""Reference CLIP models and inputs built with transformers/PyTorch, shared by the tests."""

import numpy as np
import torch
import transformers

# Two configurations that differ in every dimension the loader has to get right.
CONFIGS = {
    "gelu_eos": dict(
        text=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=16, eos_token_id=98,
                  bos_token_id=97, pad_token_id=0, hidden_act="quick_gelu"),
        vision=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, image_size=30, patch_size=6, hidden_act="gelu"),
        projection_dim=24,
    ),
    "quickgelu_argmax": dict(
        # eos_token_id=2 is HF's legacy flag for argmax pooling (original OpenAI CLIP configs).
        text=dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, max_position_embeddings=12, eos_token_id=2,
                  bos_token_id=62, pad_token_id=1, hidden_act="gelu_new", layer_norm_eps=1e-6),
        vision=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                    num_attention_heads=3, image_size=32, patch_size=8, hidden_act="quick_gelu",
                    layer_norm_eps=1e-6),
        projection_dim=16,
    ),
}  # fmt: skip


def make_hf_clip(spec: dict, seed: int = 0) -> transformers.CLIPModel:
    cfg = transformers.CLIPConfig(
        text_config=spec["text"],
        vision_config=spec["vision"],
        projection_dim=spec["projection_dim"],
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters so that a swapped key would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def text_inputs(spec: dict, batch: int = 4, seed: int = 1):
    """Right-padded ids with one EOS per row (the max id in argmax mode), as a tokenizer makes."""
    t = spec["text"]
    rng = np.random.RandomState(seed)
    length = t["max_position_embeddings"]
    eos = t["eos_token_id"] if t["eos_token_id"] != 2 else t["vocab_size"] - 1
    ids = rng.randint(3, min(t["bos_token_id"], eos), size=(batch, length))
    ids[:, 0] = t["bos_token_id"]
    ends = rng.randint(2, length, size=batch)
    ends[0] = length - 1  # one full-length row
    mask = np.zeros_like(ids)
    for i, e in enumerate(ends):
        ids[i, e] = eos
        ids[i, e + 1 :] = t["pad_token_id"]
        mask[i, : e + 1] = 1
    return ids.astype(np.int32), mask.astype(np.int32)


def image_inputs(spec: dict, batch: int = 3, seed: int = 2):
    s = spec["vision"]["image_size"]
    return np.random.RandomState(seed).randn(batch, s, s, 3).astype(np.float32)


def hf_features(model, pixels=None, ids=None, mask=None):
    with torch.no_grad():
        out = {}
        if pixels is not None:
            px = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            out["image"] = model.get_image_features(pixel_values=px).pooler_output.numpy()
        if ids is not None:
            out["text"] = model.get_text_features(
                input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
            ).pooler_output.numpy()
        return out
