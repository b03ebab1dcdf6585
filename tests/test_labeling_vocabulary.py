"""labeling.vocabulary: ImageNet-21k names offline, the sandbox vocabulary read from the sandbox
modules, prompt-ensembled text embeddings and the empty-prompt baseline."""

import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clipattr_utils.labeling import (Vocabulary, encode_vocabulary, imagenet1k_names, imagenet21k_names,
                                     sandbox_vocabulary)
from clipattr_utils.labeling.vocabulary import TINT_PHRASE, WATERMARK_PHRASE, WORD_PHRASE, sprite_label
from clipattr_utils.models import load_clip
from clipattr_utils.sandbox import captions as cap
from clipattr_utils.sandbox import world
from clipattr_utils.sandbox.render import BACKGROUNDS, CLASS_SPRITES, COLOURS


@pytest.fixture(scope="module")
def labeler():
    return load_clip("sandbox-labeler", role="labeler")


def test_imagenet21k_names_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    names = imagenet21k_names()
    assert len(names) == 21843
    assert names[:4] == ["organism", "benthos", "heterotroph", "cell"]
    assert all(n == n.strip() and n and "_" not in n and "," not in n for n in names)
    assert names.count("crane") == 2  # the bird and the machine: one name, two synsets
    assert len(imagenet1k_names()) == 1000 and imagenet1k_names()[0] == "tench"


def test_sandbox_vocabulary_covers_every_rendered_value():
    v = sandbox_vocabulary()
    assert list(v.columns) == ["label", "attribute", "value", "prompt"] and v["label"].is_unique
    prompts = dict(zip(v["label"], v["prompt"]))  # the phrases of the labeler's captions
    assert prompts["ball"] == "a ball" and prompts["a brick wall"] == "a brick wall" and prompts["red"] == "red"
    by = {a: set(g["value"]) for a, g in v.groupby("attribute")}
    assert by["object"] == set(world.CLASSNAMES)
    poly = [s for c in world.CLASSNAMES if len(CLASS_SPRITES[c]) > 1 for s in CLASS_SPRITES[c]]
    assert by["sprite"] == set(poly) == {"bat_animal", "bat_club"}
    assert set(v.loc[v["attribute"] == "sprite", "label"]) == {"bat (animal)", "bat (club)"}
    assert by["colour"] == set(COLOURS)
    assert by["background"] == set(BACKGROUNDS)
    assert set(v.loc[v["attribute"] == "background", "label"]) == set(cap.BACKGROUND_PHRASES.values())
    assert by["text"] == set(world.TYPO_WORDS) | set(world.NEUTRAL_WORDS)
    assert by["watermark"] == {True} and by["tint"] == {True}
    # colour x object compounds: every pair the world draws (fire trucks never in fire colours)
    c = sandbox_vocabulary(colour_objects=True)
    comp = c[c["attribute"] == "colour+object"]
    assert len(comp) == sum(len(world.CLASS_COLOURS.get(o, COLOURS)) for o in world.CLASSNAMES)
    assert "blue fire truck" in set(comp["label"]) and "red fire truck" not in set(comp["label"])
    assert "red fire" in set(comp["label"]) and "blue fire" not in set(comp["label"])
    assert set(comp.loc[comp["label"] == "red ball", "value"]) == {"red+ball"}
    assert set(comp.loc[comp["label"] == "orange ball", "prompt"]) == {"an orange ball"}
    assert sprite_label("bat_club") == "bat (club)" and sprite_label("fire_truck") == "fire truck"


def test_phrases_are_what_the_labeler_captions_say():
    rec = world.make_dataset(1, "val", 0, text="menu", watermark=True, tint=0.3).attributes.iloc[0].to_dict()
    captions = {cap.full_object_caption(rec, np.random.default_rng(s)) for s in range(200)}
    text = " ".join(captions)
    assert WATERMARK_PHRASE in text and TINT_PHRASE in text and WORD_PHRASE.format("menu") in text
    assert any(f"a photo of {p}" in text for p in cap.BACKGROUND_PHRASES.values())


def test_encode_vocabulary_averages_templates_then_normalises(labeler):
    labels = ["boat", "water", "a brick wall"]
    templates = ("{}", "a photo of {}")
    got = encode_vocabulary(labeler, labels, templates)
    a = labeler.encode_text(labels)
    b = labeler.encode_text([f"a photo of {x}" for x in labels])
    torch.testing.assert_close(got, F.normalize(a + b, dim=1))
    torch.testing.assert_close(encode_vocabulary(labeler, labels), a)  # the paper's bare label
    with pytest.raises(ValueError, match="exactly one"):
        encode_vocabulary(labeler, labels, ("a photo",))
    with pytest.raises(TypeError, match="single string"):
        encode_vocabulary(labeler, "boat")


def test_vocabulary_build_subset_and_empty_prompt(labeler):
    frame = sandbox_vocabulary()
    vocab = Vocabulary.build(labeler, pd.concat([frame, frame.iloc[:2]]), templates=("{}", "a photo of {}"))
    assert len(vocab) == len(frame)  # repeats dropped
    assert vocab.embeddings.shape == (len(frame), 128)
    torch.testing.assert_close(vocab.embeddings.norm(dim=1), torch.ones(len(frame)))
    empty = F.normalize(labeler.encode_text([""])[0] + labeler.encode_text(["a photo of "])[0], dim=0)
    torch.testing.assert_close(vocab.empty, empty)
    plain = Vocabulary.build(labeler, ["boat", "car"])
    torch.testing.assert_close(plain.empty, labeler.encode_text([""])[0])
    assert plain.frame["attribute"].isna().all()
    sub = vocab.subset(vocab.frame["attribute"] == "background")
    assert len(sub) == len(BACKGROUNDS) and sub.templates == vocab.templates
    assert "Vocabulary(" in repr(sub)
    with pytest.raises(ValueError, match="do not match"):
        Vocabulary(frame, vocab.embeddings[:3], vocab.empty)


def test_vocabulary_text_cache_is_used_only_on_an_exact_key(labeler, tmp_path, monkeypatch):
    """The second build reads the cached embeddings (no text encoding), equal to a fresh build;
    other templates, other prompts or changed text weights each get embeddings of their own."""
    import copy

    labels = ["boat", "water", "a brick wall"]
    first = Vocabulary.build(labeler, labels, templates=("a photo of {}",), cache_dir=tmp_path)
    calls = []
    real = type(labeler).encode_text

    def counting(self, texts, *a, **kw):
        calls.append(list(texts))
        return real(self, texts, *a, **kw)

    monkeypatch.setattr(type(labeler), "encode_text", counting)
    again = Vocabulary.build(labeler, labels, templates=("a photo of {}",), cache_dir=tmp_path)
    assert calls == [] and "text_cache" in again.meta
    torch.testing.assert_close(again.embeddings, first.embeddings)
    torch.testing.assert_close(again.empty, first.empty)
    fresh = Vocabulary.build(labeler, labels, templates=("a photo of {}",))
    torch.testing.assert_close(again.embeddings, fresh.embeddings)
    calls.clear()
    Vocabulary.build(labeler, labels, templates=("{}",), cache_dir=tmp_path)
    Vocabulary.build(labeler, labels[::-1], templates=("a photo of {}",), cache_dir=tmp_path)
    assert len(calls) == 4  # two new keys, each embedding its labels and the empty prompt
    other = copy.deepcopy(labeler)
    with torch.no_grad():
        proj = dict(other.model.named_parameters())["text_projection"]
        proj.add_(0.5 * torch.randn(proj.shape, generator=torch.Generator().manual_seed(0)))
    changed = Vocabulary.build(other, labels, templates=("a photo of {}",), cache_dir=tmp_path)
    assert len(calls) == 6 and not torch.allclose(changed.embeddings, first.embeddings)
    assert len(list(tmp_path.glob("text-*"))) == 4
