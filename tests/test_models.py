"""load_clip: names, tags, local checkpoints, refusals, offline failure, text encoding."""

import time
import warnings

import torch.nn as nn

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clipattr_utils import models
from clipattr_utils.models import HubUnreachableError, RandomWeightsWarning, load_clip


def test_random_weights_warn_loudly():
    with pytest.warns(RandomWeightsWarning, match="RANDOM WEIGHTS"):
        clip = load_clip("ViT-B-32")
    assert clip.pretrained is None
    assert (clip.d_pre, clip.d_post) == (768, 512)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="Close matches: .*ViT-B-32"):
        load_clip("ViT-B-33")


@pytest.mark.parametrize("name, why", [
    ("RN50", "not a ViT"),
    ("coca_ViT-B-32", "CoCa"),
    ("ViT-B-16-SigLIP", "timm"),
])
def test_unsupported_towers_are_refused(name, why):
    assert name in open_clip.list_models()
    with pytest.raises(ValueError, match=why) as err:
        load_clip(name)
    assert "Supported:" in str(err.value) and "ViT-L-14" in str(err.value)


def test_unknown_tag_lists_available():
    with pytest.raises(ValueError, match="Available: .*laion2b_s34b_b79k"):
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79")


def test_unreachable_hub_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_ENDPOINT", "https://10.255.255.1")  # unroutable: a connect can only time out
    monkeypatch.setattr(models, "HUB_TIMEOUT_S", 2.0)
    start = time.monotonic()
    with pytest.raises(HubUnreachableError) as err:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "connect" in message and "pre-download" in message and "local checkpoint" in message


def test_local_checkpoint_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = open_clip.create_model("ViT-B-32")
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    clip = load_clip("ViT-B-32", pretrained=path)
    assert clip.pretrained == str(path)
    for (k, a), b in zip(source.state_dict().items(), clip.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="does not fit"):
        load_clip("ViT-B-16", pretrained=path)
    with pytest.raises(FileNotFoundError):
        load_clip("ViT-B-32", pretrained=tmp_path / "missing.safetensors")


def test_identity_separates_weights(clip_tiny):
    from _tiny import tiny_clip

    same, other = tiny_clip(seed=0), tiny_clip(seed=1)
    assert same.identity["visual_sha256"] == clip_tiny.identity["visual_sha256"]
    assert other.identity["visual_sha256"] != clip_tiny.identity["visual_sha256"]


def test_identity_follows_weights_loaded_later(tmp_path):
    clip = load_clip("sandbox")
    original = {k: v.clone() for k, v in clip.model.state_dict().items()}
    sha0 = clip.identity["visual_sha256"]
    perturbed = {k: v * 1.5 + 0.01 if k.startswith("visual.ln_post") else v for k, v in original.items()}
    clip.model.load_state_dict(perturbed)  # in place: same tensors, new values
    sha1 = clip.identity["visual_sha256"]
    assert sha1 != sha0
    # The memo agrees with a fresh, never-memoised load of the same weights.
    path = tmp_path / "perturbed.safetensors"
    save_file({k: v.contiguous() for k, v in perturbed.items()}, str(path))
    assert load_clip("sandbox", pretrained=path).identity["visual_sha256"] == sha1

    with torch.no_grad():
        clip.model.visual.proj.mul_(2)  # an in-place update (like an optimiser step)
    sha2 = clip.identity["visual_sha256"]
    assert sha2 not in (sha0, sha1)
    clip.model.visual.proj = nn.Parameter(original["visual.proj"].clone())  # a replaced parameter
    assert clip.identity["visual_sha256"] == sha1
    clip.model.load_state_dict(original)
    assert clip.identity["visual_sha256"] == sha0  # same values, same hash
    clip.model.visual.proj.data.mul_(3)  # .data writes do not bump the version counter ...
    assert clip.refresh_identity()["visual_sha256"] not in (sha0, sha1, sha2)  # ... refresh_identity sees them


def test_encode_text_is_normalized_and_batch_invariant(clip_tiny):
    prompts = [f"a photo of a thing number {i}" for i in range(11)]
    full = clip_tiny.encode_text(prompts, batch_size=64)
    batched = clip_tiny.encode_text(prompts, batch_size=3)
    assert full.shape == (11, clip_tiny.d_post)
    torch.testing.assert_close(full.norm(dim=-1), torch.ones(11))
    torch.testing.assert_close(full, batched, atol=1e-6, rtol=0)
    with torch.no_grad():
        ref = clip_tiny.model.encode_text(clip_tiny.tokenizer(prompts[:1]))
    torch.testing.assert_close(full[:1], ref / ref.norm(), atol=1e-6, rtol=0)
    with pytest.raises(TypeError):
        clip_tiny.encode_text("one string")
