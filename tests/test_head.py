"""The Head reproduces open_clip's encode_image from the cached class token (issue 2, item 4)."""

import warnings

import open_clip
import pytest
import torch

from clipattr_utils.features import class_token_hook
from clipattr_utils.head import Head


def _randomize_ln_post(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ln = model.visual.ln_post
        ln.weight.copy_(torch.rand(ln.weight.shape, generator=g) + 0.5)
        ln.bias.copy_(torch.randn(ln.bias.shape, generator=g) * 0.2)


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16"])
def test_head_matches_encode_image(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name).eval()
    _randomize_ln_post(model)
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), class_token_hook(model) as captured:
        reference = model.encode_image(images)
    head = Head.from_model(model)
    out = head(captured["x"])
    rel = ((out - reference).norm(dim=1) / reference.norm(dim=1)).max().item()
    assert rel <= 1e-5, f"{name}: head vs encode_image relative error {rel:.2e}"
    cos = head.cosine(captured["x"], reference[:2])
    assert torch.allclose(cos.diagonal(), torch.ones(2), atol=1e-5)


def test_class_token_hook_intermediate_layer(clip_tiny):
    visual = clip_tiny.model.visual
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        x = visual._embeds(images)
        x = visual.transformer.resblocks[0](x)  # independent manual pass through block 0
        with class_token_hook(clip_tiny.model, layer=0) as captured:
            clip_tiny.model.encode_image(images)
    torch.testing.assert_close(captured["x"], x[:, 0])
    with pytest.raises(ValueError, match="layer=5"):
        with class_token_hook(clip_tiny.model, layer=5):
            pass


def test_head_rejects_wrong_shapes(clip_tiny):
    head = clip_tiny.head
    with pytest.raises(ValueError, match="d_pre=48"):
        head(torch.zeros(2, 47))
    with pytest.raises(ValueError, match="d_post=32"):
        head.cosine(torch.zeros(2, 48), torch.zeros(3, 31))
    with pytest.raises(ValueError, match="proj"):
        Head(torch.ones(4), torch.zeros(4), torch.zeros(5, 2), 1e-5)
