"""Where in the image: planted masks, live tokens and latent maps, each against an independent
computation (another render, open_clip's own intermediates, finite differences, the
closed-form Act x Grad, Monte Carlo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _notebooks import SANDBOX_WEIGHTS, require_weights
from clipattr_utils import spatial
from clipattr_utils.sandbox.render import LESION_MASKS, OBJECT_MASKS, render_lesion, render_object
from clipattr_utils.sandbox.world import ObjectRecipe, make_dataset, make_lesion_dataset


def _pixels(rec, **change):
    return np.asarray(render_object({**rec, **change}, 64)).astype(int)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one pixel in every direction."""
    padded = np.pad(mask, 1)
    return np.any([padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)


def test_object_masks_are_where_the_renderer_drew():
    """Each mask against a second render without that element (or with another colour): the
    pixels that change lie on the mask, and the mask is mostly pixels that change."""
    pool = make_dataset(60, "test", 11, recipe=ObjectRecipe.independent())
    recs = pool._records
    seen = set()
    for i, rec in enumerate(recs):
        m = pool.masks(i)
        assert set(m) == set(OBJECT_MASKS) and all(v.shape == (64, 64) and v.dtype == np.float32 for v in m.values())
        assert np.array_equal(np.asarray(pool.load_image(i)), _pixels(rec))   # masks leave the pixels alone
        assert np.all(m["background"] + m["object"] + m["companion"] + m["word"] <= 1 + 1e-6)
        checks = [("object", {"colour": "red" if rec["colour"] != "red" else "blue"})]
        if rec["text"]:
            checks.append(("word", {"text": ""}))
        if rec["companion"]:
            checks.append(("companion", {"companion": ""}))
        if rec["watermark"]:
            checks.append(("watermark", {"watermark": False}))
        for name, change in checks:
            changed = np.any(_pixels(rec) != _pixels(rec, **change), axis=-1)
            # (PIL rasterises a wide outline a pixel wider on some edges in RGB than in L)
            assert not np.any(changed & ~_dilate(m[name] > 0)), (i, name)
            assert changed[m[name] >= 0.999].mean() > 0.6, (i, name)
            seen.add(name)
        assert m["tint"].mean() == float(float(rec["tint"]) > 0)
    assert seen == {"object", "word", "companion", "watermark"}


def test_lesion_masks_cover_the_lesion():
    pool = make_lesion_dataset(10, "test", 3)
    for i, rec in enumerate(pool._records):
        m = pool.masks(i)
        assert set(m) == set(LESION_MASKS)
        assert np.array_equal(np.asarray(pool.load_image(i)), np.asarray(render_lesion(rec, 64)))
        np.testing.assert_allclose(m["lesion"] + m["skin"], 1.0)
        # another pigment changes the lesion's pixels and no others
        other = "black" if rec["base_colour"] != "black" else "tan"
        changed = np.any(np.asarray(render_lesion(rec, 64)).astype(int)
                         != np.asarray(render_lesion({**rec, "base_colour": other}, 64)).astype(int), axis=-1)
        assert not np.any(changed & ~_dilate(m["lesion"] > 0)), i
        assert changed[m["lesion"] >= 0.999].mean() > 0.6, i   # pigment patches and hairs cover the rest


def test_scores_against_planted_maps_and_monte_carlo():
    cover = torch.zeros(2, 8, 8)
    cover[:, :2] = 1.0                                   # the top two rows: a quarter of the grid
    heat = torch.zeros(2, 8, 8)
    heat[0, 0, 3] = 5.0                                  # all heat on the element
    heat[1, 0, 3], heat[1, 5, 5] = 1.0, 3.0              # a quarter of it
    heat[1, 6, 6] = -10.0                                # negative heat does not count
    np.testing.assert_allclose(spatial.energy_share(heat, cover).numpy(), [1.0, 0.25])
    assert spatial.pointing_hits(heat, cover).tolist() == [True, False]
    rng = torch.Generator().manual_seed(0)
    random_maps = torch.rand(4000, 8, 8, generator=rng) ** 3
    mc = spatial.energy_share(random_maps, cover[0].expand(4000, 8, 8)).mean()
    assert abs(float(mc) - float(spatial.random_share(cover)[0])) < 0.01
    assert torch.isnan(spatial.energy_share(-torch.ones(1, 8, 8), cover[:1])).all()
    pixels = np.zeros((64, 64), np.float32)
    pixels[:16, :8] = 1.0
    assert spatial.patch_coverage(pixels, (8, 8))[:2, 0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="does not split"):
        spatial.patch_coverage(np.zeros((60, 64)), (8, 8))


# ----------------------------------------------------------------------------- with the CLIP

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    require_weights(SANDBOX_WEIGHTS)
    import clipattr_utils as ca
    from clipattr_utils.sae.model import TopKSAE

    clip = ca.load_clip("sandbox")
    pool = make_dataset(8, "test", 5, recipe=ObjectRecipe.independent())
    images = [pool.load_image(i) for i in range(len(pool))]
    cache = tmp_path_factory.mktemp("spatial")
    x = ca.extract(clip, pool, cache, progress=False).read()
    torch.manual_seed(0)
    sae = TopKSAE(clip.head.d_pre, 256, k=16)
    sae.init_bias_(x.mean(0))
    return {"clip": clip, "sae": sae.eval(), "images": images, "x": x, "pool": pool}


def test_live_tokens_are_the_cached_class_tokens_and_open_clips_patches(model):
    clip, images = model["clip"], model["images"]
    tok = spatial.forward_tokens(clip, spatial.pixels(clip, images))
    assert tok.grid == (8, 8) and tok.patch_tokens.shape == (8, 64, 96)
    assert torch.equal(tok.class_token, model["x"])
    with torch.no_grad():
        inter = clip.model.visual.forward_intermediates(spatial.pixels(clip, images), indices=1,
                                                        intermediates_only=True, output_fmt="NLC")
    theirs = inter["image_intermediates"][-1]
    torch.testing.assert_close(tok.patch_tokens, theirs[:, -64:], rtol=1e-5, atol=1e-5)


def _f(model, latent, scale_patch=None, t=0.0, zero=False):
    """The latent's pre-activation with one patch embedding scaled by (1 + t), or all zeroed."""
    clip, sae = model["clip"], model["sae"]

    def edit(e):
        e = e.clone()
        if zero:
            return torch.zeros_like(e)
        if scale_patch is not None:
            e[:, scale_patch] = e[:, scale_patch] * (1 + t)
        return e

    with torch.no_grad():
        x = spatial.forward_tokens(clip, spatial.pixels(clip, model["images"]), edit=edit).class_token.double()
        return ((x - sae.b_dec.double()) @ sae.W_enc[:, latent].double() + sae.b_enc[latent].double())


def test_grad_x_input_is_the_derivative_of_scaling_each_patch(model):
    latent = int(model["sae"].encode(model["x"]).indices[0, 0])
    maps = spatial.latent_heatmap(model["clip"], model["sae"], model["images"], latent, "grad_x_input")
    assert maps.heat.shape == (8, 8, 8)
    h = 1e-3
    for p in (0, 27, 63):
        fd = (_f(model, latent, p, h) - _f(model, latent, p, -h)) / (2 * h)
        torch.testing.assert_close(maps.heat.flatten(1)[:, p].double(), fd, rtol=2e-2, atol=2e-3)


def test_integrated_gradients_are_complete(model):
    latent = int(model["sae"].encode(model["x"]).indices[0, 0])
    expected = _f(model, latent) - _f(model, latent, zero=True)
    err = {}
    for steps in (16, 128):
        maps = spatial.latent_heatmap(model["clip"], model["sae"], model["images"], latent, "integrated_gradients",
                                      steps=steps)
        err[steps] = (maps.heat.sum((1, 2)).double() - expected).abs()
    # the midpoint rule converges (quadratically for a smooth path): the sums reach f(e) - f(0)
    # (a left Riemann sum, alpha = i / steps, is off by 0.1 in all at 128 steps)
    assert float(err[128].sum()) < 2e-3 * float(expected.abs().sum()), (err, expected)
    assert float(err[128].sum()) < 0.1 * float(err[16].sum()), err
    torch.testing.assert_close(maps.value.double(), _f(model, latent), rtol=1e-5, atol=1e-5)


def _f_images(model, latent, images):
    clip, sae = model["clip"], model["sae"]
    with torch.no_grad():
        x = spatial.forward_tokens(clip, spatial.pixels(clip, images)).class_token.double()
    return (x - sae.b_dec.double()) @ sae.W_enc[:, latent].double() + sae.b_enc[latent].double()


def test_integrated_gradients_from_a_baseline_image(model):
    """From baseline images the maps sum to f(image) - f(baseline) (the path's two ends computed
    by plain forward passes), and are exactly zero on patches whose pixels the baseline keeps."""
    latent = int(model["sae"].encode(model["x"]).indices[0, 0])
    images = model["images"]
    edited = []
    for im in images:            # brighten the top-left 16 x 16 pixels: patches (0, 0), (0, 1), (1, 0), (1, 1)
        arr = np.asarray(im.convert("RGB")).copy()
        arr[:16, :16] = np.clip(arr[:16, :16].astype(int) + 90, 0, 255)
        edited.append(Image.fromarray(arr))
    expected = _f_images(model, latent, edited) - _f_images(model, latent, images)
    maps = spatial.latent_heatmap(model["clip"], model["sae"], edited, latent, "integrated_gradients", steps=64,
                                  baseline=images)
    torch.testing.assert_close(maps.heat.sum((1, 2)).double(), expected, rtol=2e-2, atol=2e-3)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[:2, :2] = False
    assert float(maps.heat[:, outside].abs().max()) == 0.0
    assert float(maps.heat[:, :2, :2].abs().sum()) > 0
    with pytest.raises(ValueError, match="takes none"):
        spatial.latent_heatmap(model["clip"], model["sae"], edited, latent, "grad_x_input", baseline=images)
    with pytest.raises(ValueError, match="one image per image"):
        spatial.latent_heatmap(model["clip"], model["sae"], edited, latent, baseline=images[:3])


def test_plain_gradient_is_the_pooled_pixel_gradient(model):
    clip, sae = model["clip"], model["sae"]
    latent = int(sae.encode(model["x"]).indices[0, 0])
    maps = spatial.latent_heatmap(clip, sae, model["images"], latent, "gradient")
    batch = spatial.pixels(clip, model["images"]).clone().requires_grad_(True)
    from clipattr_utils.features import class_token_hook

    with class_token_hook(clip.model) as store:
        clip.model.encode_image(batch)
    f = (store["x"] - sae.b_dec) @ sae.W_enc[:, latent] + sae.b_enc[latent]
    (g,) = torch.autograd.grad(f.sum(), batch)
    per_patch = g.abs().sum(1).reshape(8, 8, 8, 8, 8).sum((2, 4))   # (N, rows, 8 px, cols, 8 px)
    torch.testing.assert_close(maps.heat, per_patch, rtol=1e-4, atol=1e-6)


def test_relevance_maps_are_scaled_by_the_act_grad_gradient(model):
    """With an output, the map's value is the closed-form Act x Grad relevance of the latent
    (`attribution.act_grad`) wherever the latent is active."""
    import clipattr_utils as ca

    clip, sae, x = model["clip"], model["sae"], model["x"]
    text = torch.nn.functional.normalize(torch.randn(3, clip.head.d_post, generator=torch.Generator().manual_seed(1)),
                                         dim=-1)
    code = sae.encode(x)
    latent = int(code.indices[0, 0])
    maps = spatial.latent_heatmap(clip, sae, model["images"], latent, "grad_x_input", target=text, output=2)
    attr = ca.attribution.act_grad(x, sae, clip.head, text)
    active = (attr.indices == latent)
    rows = active.any(1)
    closed = (attr.values[:, 2, :] * active).sum(1)
    torch.testing.assert_close(maps.value[rows].double(), closed[rows].double(), rtol=1e-4, atol=1e-6)
    plain = spatial.latent_heatmap(clip, sae, model["images"], latent, "grad_x_input")
    ratio = maps.value / plain.value
    torch.testing.assert_close(maps.heat, plain.heat * ratio[:, None, None], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="both target and output"):
        spatial.latent_heatmap(clip, sae, model["images"], latent, target=text)
    with pytest.raises(ValueError, match="unknown method"):
        spatial.latent_heatmap(clip, sae, model["images"], latent, "lrp")


def test_patch_activations_are_the_sae_code_of_each_patch_token(model):
    clip, sae = model["clip"], model["sae"]
    tok = spatial.forward_tokens(clip, spatial.pixels(clip, model["images"]))
    dense = sae.pre_acts(tok.patch_tokens.reshape(-1, 96))
    kth = dense.topk(sae.k, dim=1).values[:, -1:]
    expected = torch.where(dense >= kth, dense.clamp_min(0), torch.zeros_like(dense))
    latents = [3, 100, int(sae.encode(tok.patch_tokens[0]).indices[0, 0])]
    got = spatial.patch_activations(clip, sae, model["images"], latents)
    assert got.shape == (8, 3, 8, 8)
    want = expected[:, latents].reshape(8, 64, 3).permute(0, 2, 1).reshape(8, 3, 8, 8)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got[:, 2].max() > 0


def test_overlays_show_the_heat_where_it_is_and_the_gallery_draws_them(model):
    from PIL import Image

    from clipattr_utils.gallery import latent_grid

    image = Image.new("RGB", (64, 64), (128, 128, 128))
    heat = torch.zeros(8, 8)
    heat[1, 6] = 2.0
    out = np.asarray(spatial.overlay(image, heat)).astype(int)
    plain = np.asarray(image).astype(int)
    changed = np.any(out != plain, -1)
    assert changed[8:16, 48:56].all() and not changed[40:, :24].any()   # on the hot patch, not far away
    assert np.array_equal(np.asarray(spatial.overlay(image, -heat)), plain)   # negative heat is not drawn
    calls = []

    def source(latent, rows):
        calls.append((latent, list(rows)))
        return torch.ones(len(rows), 8, 8)

    fig = latent_grid(model["pool"], {5: [0, 1, 2]}, heat=source)
    assert calls == [(5, [0, 1, 2])]
    drawn = fig.axes[0].get_images()[0].get_array()
    assert not np.array_equal(np.asarray(drawn), np.asarray(model["pool"].load_image(0)))
    src = spatial.heat_source(model["clip"], model["sae"], model["pool"], "grad_x_input")
    latent = int(model["sae"].encode(model["x"]).indices[0, 0])
    torch.testing.assert_close(src(latent, [0, 3]), spatial.latent_heatmap(
        model["clip"], model["sae"], [model["images"][0], model["images"][3]], latent, "grad_x_input").heat)
    with pytest.raises(ValueError, match="unknown method"):
        spatial.heat_source(model["clip"], model["sae"], model["pool"], "occlusion")
    # a baseline set: each row's path starts at the same row of the baseline (rows out of order)
    tinted = model["pool"].replace(tint=0.4)
    src = spatial.heat_source(model["clip"], model["sae"], tinted, baseline_set=model["pool"], steps=8)
    torch.testing.assert_close(src(latent, [5, 2]), spatial.latent_heatmap(
        model["clip"], model["sae"], [tinted.load_image(5), tinted.load_image(2)], latent, steps=8,
        baseline=[model["images"][5], model["images"][2]]).heat)
    with pytest.raises(ValueError, match="share rows"):
        spatial.heat_source(model["clip"], model["sae"], tinted, baseline_set=[model["images"][0]])
    with pytest.raises(ValueError, match="needs method='integrated_gradients'"):
        spatial.heat_source(model["clip"], model["sae"], tinted, "gradient", baseline_set=model["pool"])
