"""load_clip(role="labeler") and features.extract(what="embedding"): a labeler's final embeddings,
cached with the class-token machinery (keys, resume, atomic finish)."""

import json
import warnings

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils import features
from clipattr_utils.data import TensorImageSet
from clipattr_utils.models import HeadUnavailableError, RandomWeightsWarning, load_clip
from clipattr_utils.sandbox import make_dataset

from _tiny import InterruptAt


def _reference_embeddings(clip, image_set, indices):
    images = torch.stack([clip.preprocess(image_set.load_image(i)) for i in indices])
    with torch.no_grad():
        return F.normalize(clip.model.encode_image(images).float(), dim=-1)


def test_sandbox_labeler_embeddings_are_cached_unit_final_embeddings(tmp_path):
    lab = load_clip("sandbox-labeler", role="labeler")
    assert lab.role == "labeler" and lab.has_head  # a class-token ViT keeps its head in either role
    images = make_dataset(10, "val", 3)
    emb = features.extract(lab, images, tmp_path, batch_size=4, num_workers=0, progress=False, what="embedding")
    assert emb.what == "embedding" and (emb.n, emb.d) == (10, lab.d_post) == (10, 128)
    assert "-emb-" in emb.path.name and emb.meta["what"] == "embedding"
    x = emb.read()
    torch.testing.assert_close(x.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(x, _reference_embeddings(lab, images, range(10)), rtol=1e-4, atol=1e-5)
    assert emb.ids == [images.sample_id(i) for i in range(10)]
    # same model and images, class tokens: another key, another folder; both reused as cached
    tok = features.extract(lab, images, tmp_path, batch_size=4, num_workers=0, progress=False)
    assert tok.what == "class_token" and tok.path != emb.path and tok.d == 96
    assert "what" not in tok.meta["key_full"] and emb.meta["key_full"]["what"] == "embedding"
    again = features.extract(lab, images, tmp_path, batch_size=4, num_workers=0, progress=False, what="embedding")
    assert again.path == emb.path
    with pytest.raises(ValueError, match="what must be one of"):
        features.extract(lab, images, tmp_path, what="tokens")
    with pytest.raises(ValueError, match="layer=-1"):
        features.extract(lab, images, tmp_path, what="embedding", layer=2)


def test_class_token_keys_unchanged_by_the_embedding_option(clip_tiny):
    images = TensorImageSet([np.zeros((32, 32, 3), np.uint8)])
    key = features.cache_key(clip_tiny, images, -1, "fp32")
    assert key == features.cache_key(clip_tiny, images, -1, "fp32", "class_token") and "what" not in key
    assert features.cache_key(clip_tiny, images, -1, "fp32", "embedding")["what"] == "embedding"


def test_embedding_extraction_resumes_to_the_uninterrupted_result(clip_tiny, tmp_path):
    rng = np.random.default_rng(2)
    pics = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(23)]
    whole = features.extract(clip_tiny, TensorImageSet(pics), tmp_path / "a", batch_size=6, num_workers=0,
                             progress=False, what="embedding")
    broken = InterruptAt(pics)
    broken.at = 14
    with pytest.raises(KeyboardInterrupt):
        features.extract(clip_tiny, broken, tmp_path / "b", batch_size=6, num_workers=0, progress=False,
                         what="embedding")
    partial = next((tmp_path / "b").iterdir())
    assert partial.name.endswith(".partial") and json.loads((partial / "progress.json").read_text())["next_row"] == 12
    broken.at = None
    resumed = features.extract(clip_tiny, broken, tmp_path / "b", batch_size=6, num_workers=0, progress=False,
                               what="embedding")
    assert not partial.exists() and torch.equal(resumed.read(), whole.read())
    torch.testing.assert_close(whole.read().norm(dim=1), torch.ones(23))


def test_invalid_role_is_refused():
    with pytest.raises(ValueError, match="role must be one of"):
        load_clip("sandbox", role="teacher")


@pytest.mark.parametrize("name", ["MobileCLIP-S2", "MobileCLIP2-S0", "coca_ViT-B-32", "RN50"])
def test_refused_for_attribution_with_a_pointer_to_the_labeler_role(name):
    assert name in open_clip.list_models()
    with pytest.raises(ValueError, match="role='labeler'"):
        load_clip(name)


@pytest.mark.slow
def test_timm_fastvit_labeler_random_init(tmp_path):
    """MobileCLIP2-S0 (timm FastViT tower, no class token), random weights, offline: usable as a
    labeler, no head, embeddings cached."""
    with pytest.warns(RandomWeightsWarning):
        lab = load_clip("MobileCLIP2-S0", role="labeler")
    assert not lab.has_head and lab.d_post == 512 and lab.role == "labeler"
    assert "MobileCLIP2-S0" in repr(lab)  # repr leaves the missing head out instead of raising
    with pytest.raises(HeadUnavailableError, match="no class-token head"):
        lab.head
    with pytest.raises(HeadUnavailableError):
        lab.d_pre
    assert getattr(lab, "head", None) is None
    text = lab.encode_text(["a photo of a boat", ""])
    assert text.shape == (2, 512)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(2))
    images = make_dataset(3, "val", 0)
    emb = features.extract(lab, images, tmp_path, batch_size=2, num_workers=0, progress=False, what="embedding")
    assert (emb.n, emb.d) == (3, 512)
    torch.testing.assert_close(emb.read(), _reference_embeddings(lab, images, range(3)), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="has no class token"):
        features.extract(lab, images, tmp_path, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        assert load_clip("sandbox", role="labeler").has_head
