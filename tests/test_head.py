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


# ------------------------------------------------------------------ the head follows the model


def _sandbox():
    from clipattr_utils.models import load_clip

    return load_clip("sandbox")


def _perturbed_state(model, seed, keys=("ln_post", "proj", "resblocks.3")):
    """The model's state dict with the chosen visual tensors moved (a stand-in for fine-tuned weights)."""
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in state.items():
        if k.startswith("visual.") and any(part in k for part in keys) and v.is_floating_point():
            state[k] = v * (1 + 0.3 * torch.randn(v.shape, generator=g)) + 0.1 * torch.randn(v.shape, generator=g)
    return state


def _reference_embedding(model, images):
    """open_clip's own encode_image, with the class token it consumed."""
    with torch.no_grad(), class_token_hook(model) as captured:
        reference = model.encode_image(images)
    return captured["x"], reference


def _by_hand(x, ln_weight, ln_bias, proj, eps):
    """LayerNorm + projection written out from the raw tensors (independent of Head)."""
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return ((x - mu) / torch.sqrt(var + eps) * ln_weight + ln_bias) @ proj


def test_head_follows_load_state_dict():
    clip = _sandbox()
    head = clip.head
    assert head.follows_model and head.source is clip.model
    # No copy: the head's tensors are the model's storage.
    assert head.proj.data_ptr() == clip.model.visual.proj.data_ptr()
    assert head.gamma.data_ptr() == clip.model.visual.ln_post.weight.data_ptr()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    before = head.frozen()
    versions = [t._version for t in (clip.model.visual.proj, clip.model.visual.ln_post.weight)]

    state = _perturbed_state(clip.model, seed=5)
    clip.model.load_state_dict(state)
    # load_state_dict copies in place, which bumps the version counters caches are keyed on.
    assert all(t._version > v for t, v in zip((clip.model.visual.proj, clip.model.visual.ln_post.weight), versions))

    x, reference = _reference_embedding(clip.model, images)
    out = head(x)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(clip.encode_image(images), reference, atol=0, rtol=0)
    ln = clip.model.visual.ln_post
    expected = _by_hand(x, state["visual.ln_post.weight"], state["visual.ln_post.bias"], state["visual.proj"], ln.eps)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    # The snapshot taken before the load disagrees: the load really changed the head.
    assert (before(x) - reference).norm() > 0.1 * reference.norm()


def test_head_follows_replaced_tensors_and_modules():
    clip = _sandbox()
    head, visual = clip.head, clip.model.visual
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)

    visual.proj = torch.nn.Parameter(torch.randn(visual.proj.shape, generator=g) * 0.1)
    assert head.proj.data_ptr() == visual.proj.data_ptr()
    x, reference = _reference_embedding(clip.model, images)
    torch.testing.assert_close(head(x), reference, atol=1e-5, rtol=1e-5)

    new_ln = torch.nn.LayerNorm(visual.ln_post.normalized_shape, eps=1e-2)
    with torch.no_grad():
        new_ln.weight.uniform_(0.5, 1.5, generator=g)
        new_ln.bias.normal_(0, 0.5, generator=g)
    visual.ln_post = new_ln
    assert head.eps == 1e-2
    x, reference = _reference_embedding(clip.model, images)
    torch.testing.assert_close(head(x), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head(x), _by_hand(x, new_ln.weight, new_ln.bias, visual.proj, 1e-2), atol=1e-4,
                               rtol=1e-4)

    # A new model object on the LoadedCLIP: a head that followed the old one is rebound.
    other = _sandbox()
    with torch.no_grad():
        other.model.visual.proj.mul_(-1)
    clip.model = other.model
    assert clip.head.source is other.model
    x, reference = _reference_embedding(clip.model, images)
    torch.testing.assert_close(clip.head(x), reference, atol=1e-5, rtol=1e-5)


def test_head_refuses_replacements_that_do_not_fit():
    clip = _sandbox()
    visual, x = clip.model.visual, torch.randn(2, clip.d_pre)
    good_proj = visual.proj
    visual.proj = torch.nn.Parameter(torch.zeros(clip.d_pre + 1, clip.d_post))
    with pytest.raises(ValueError, match=r"visual.proj.*d_pre=96.*\(97, 128\).*replaced"):
        clip.head(x)
    visual.proj = good_proj
    visual.ln_post = torch.nn.Identity()
    with pytest.raises(TypeError, match="ln_post=Identity"):
        clip.head(x)
    with pytest.raises(TypeError, match="ln_post"):
        Head.from_model(torch.nn.Linear(3, 3))


def test_standalone_head_stays_frozen():
    clip = _sandbox()
    visual = clip.model.visual
    standalone = Head(clip.head.gamma, clip.head.beta, clip.head.proj, clip.head.eps)
    frozen = clip.head.frozen()
    assert not standalone.follows_model and not frozen.follows_model and standalone.source is None
    assert standalone.proj.data_ptr() != visual.proj.data_ptr()
    x = torch.randn(4, clip.d_pre, generator=torch.Generator().manual_seed(6))
    expected = _by_hand(x, visual.ln_post.weight.detach().clone(), visual.ln_post.bias.detach().clone(),
                        visual.proj.detach().clone(), visual.ln_post.eps)
    clip.model.load_state_dict(_perturbed_state(clip.model, seed=7))
    for head in (standalone, frozen):
        torch.testing.assert_close(head(x), expected, atol=1e-4, rtol=1e-4)
    assert (clip.head(x) - expected).norm() > 0.1 * expected.norm()
    assert set(standalone.state_dict()) == set(clip.head.state_dict()) == {"gamma", "beta", "proj"}
    standalone.eps = 0.5
    assert standalone.eps == 0.5
    with pytest.raises(AttributeError, match="follows its model"):
        clip.head.eps = 0.5


def test_converting_a_following_head_detaches_it_loudly():
    from clipattr_utils.head import HeadDetachedWarning

    clip = _sandbox()
    head = clip.head
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert head.to("cpu") is head and head.float() is head  # changes nothing: still following
    assert head.follows_model
    x = torch.randn(2, clip.d_pre, dtype=torch.float64)
    with pytest.warns(HeadDetachedWarning, match="standalone"):
        head.double()
    assert not head.follows_model and head.proj.dtype == torch.float64
    expected = head(x)
    with torch.no_grad():
        clip.model.visual.proj.mul_(2)
    torch.testing.assert_close(head(x), expected, atol=0, rtol=0)


def test_attribution_after_load_state_dict_uses_new_weights():
    from clipattr_utils.attribution import act_grad
    from clipattr_utils.sae import TopKSAE

    clip = _sandbox()
    torch.manual_seed(8)
    sae = TopKSAE(clip.d_pre, 300, k=8)
    g = torch.Generator().manual_seed(9)
    x = 2 * torch.randn(5, clip.d_pre, generator=g) + 1
    text = torch.randn(3, clip.d_post, generator=g)
    before = act_grad(x, sae, clip.head, text)  # fills attribution's per-(sae, head) cache

    state = _perturbed_state(clip.model, seed=10, keys=("ln_post", "proj"))
    clip.model.load_state_dict(state)
    after = act_grad(x, sae, clip.head, text)
    ln = clip.model.visual.ln_post
    independent = Head(state["visual.ln_post.weight"], state["visual.ln_post.bias"], state["visual.proj"], ln.eps)
    expected = act_grad(x, sae, independent, text)
    assert torch.equal(after.indices, expected.indices)
    torch.testing.assert_close(after.values, expected.values, atol=1e-5, rtol=1e-4)
    assert (before.values - expected.values).abs().max() > 1e-3 * expected.values.abs().max()
