"""A tiny open_clip ViT (random init, seeded) for fast extraction tests.

Built through open_clip's own CLIP class so hooks, ln_post and proj are the real ones; the
same seed gives the same weights in another process (the kill/resume test relies on it).
"""

from __future__ import annotations

import torch
from open_clip.model import CLIP
from open_clip.transform import image_transform
import open_clip

from clipattr_utils.data import TensorImageSet
from clipattr_utils.head import Head
from clipattr_utils.models import LoadedCLIP

TINY_CFG = dict(
    embed_dim=32,
    vision_cfg=dict(image_size=32, patch_size=8, width=48, layers=2, head_width=16),
    text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
)


def tiny_clip(seed: int = 0, image_size: int = 32) -> LoadedCLIP:
    torch.manual_seed(seed)
    cfg = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "image_size": image_size}}
    model = CLIP(**cfg).eval()
    with torch.no_grad():  # non-trivial LayerNorm so the head is really tested
        model.visual.ln_post.weight.uniform_(0.5, 1.5)
        model.visual.ln_post.bias.normal_(0, 0.3)
    return LoadedCLIP(model=model, preprocess=image_transform(image_size, is_train=False),
                      tokenizer=open_clip.get_tokenizer("ViT-B-32", context_length=16),
                      head=Head.from_model(model), name=f"tiny{image_size}", pretrained=f"seed{seed}")


class InterruptAt(TensorImageSet):
    """Raises KeyboardInterrupt (like Ctrl-C) when image ``at`` is decoded (resume tests)."""

    at = None

    def load_image(self, i):
        if i == self.at:
            raise KeyboardInterrupt(f"interrupted at image {i}")
        return super().load_image(i)
