"""Small-scale training (CLIP contrastive, LLaVA-style) on one jitted, sharded, resumable loop."""
