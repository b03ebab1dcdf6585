"""Label vocabularies and their text embeddings under a labeler (the set T of Eq. 2).

Sources:

* `imagenet21k_names`: the 21,843 ImageNet-21k (fall 2011, Google's) classes, the paper's
  vocabulary (App. A "Datasets"), offline from the synset and lemma files timm ships;
* `imagenet1k_names`: open_clip's cleaned ImageNet-1k names;
* `sandbox_vocabulary`: every attribute value the sandbox world renders, with its attribute
  (object, sprite, colour, background, text, watermark, tint), read from the sandbox modules;
* any list of strings.

A `Vocabulary` holds the labels, their (attribute, value) columns and the labeler's text
embeddings: per label the mean over ``templates`` of the unit text embeddings of
``template.format(prompt)``, re-normalised (prompt ensembling; the paper uses the bare label,
``templates=("{}",)``). ``prompt`` is the label itself unless the vocabulary frame has a
``prompt`` column (the sandbox vocabulary writes each label as the noun phrase its labeler's
captions use, article included: "a ball", "an orange ball", "a brick wall", so that a
template such as "a photo of {}" reads as those captions do). The empty-prompt baseline
t_empty of Eq. 2 goes through the same templates: ``template.format("")`` (the bare empty
prompt ``""`` for the paper's template).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

PAPER_TEMPLATES: tuple[str, ...] = ("{}",)
"""The paper's prompt: the bare label (Sec. 3.2)."""

COLUMNS = ("label", "attribute", "value")
"""Columns of a vocabulary frame (an optional ``prompt`` column holds the text to embed)."""

# Phrases the sandbox labeler's captions use for the incidental attributes
# (`sandbox.captions.full_object_caption`: "..., with a watermark", "..., with a red tint",
# "... with the word 'X'"); tests check the captions still say them.
WATERMARK_PHRASE = "a watermark"
COMPANION_PHRASE = "a small fire"
TINT_PHRASE = "a red tint"
WORD_PHRASE = "the word '{}'"


# ---------------------------------------------------------------------------- name lists


def imagenet21k_names() -> list[str]:
    """The 21,843 ImageNet-21k class names (index order of timm's ``imagenet-21k-goog``): the
    first WordNet lemma of each synset, underscores as spaces, stripped. Offline: timm ships
    the synset and lemma files. Names repeat (e.g. "crane" the bird and the machine);
    `Vocabulary.build` drops repeats by default."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-21k-goog")
    names = [info.index_to_description(i).split(",")[0].replace("_", " ").strip() for i in range(info.num_classes())]
    if len(names) != 21843:
        raise RuntimeError(f"timm's imagenet-21k-goog lists {len(names)} classes, expected 21843")
    return names


def imagenet1k_names() -> list[str]:
    """open_clip's cleaned ImageNet-1k class names (`data.imagenet_classnames`)."""
    from ..data import imagenet_classnames

    return list(imagenet_classnames())


def sprite_label(sprite: str) -> str:
    """``"bat_animal"`` -> ``"bat (animal)"``: a sprite of a polysemous class, named by its
    class word and, in brackets, what tells it apart."""
    from ..sandbox.render import CLASS_SPRITES

    for cls, sprites in CLASS_SPRITES.items():
        if sprite in sprites:
            rest = sprite[len(cls.replace(" ", "_")):].strip("_") if sprite.startswith(cls.replace(" ", "_")) else sprite
            return f"{cls} ({rest.replace('_', ' ')})" if rest else cls
    raise ValueError(f"sprite_label: unknown sprite {sprite!r}")


def sandbox_vocabulary(colour_objects: bool = False, watermark: bool = True) -> pd.DataFrame:
    """Every attribute value the sandbox object world renders, as labels the sandbox labeler
    was trained to read. Columns ``label, attribute, value``:

    ========== ======================================= =====================================
    attribute  labels                                  value (= the attribute table's value)
    ========== ======================================= =====================================
    object     each class name ("boat", "fire truck")  the class
    sprite     the sprites of polysemous classes,      the sprite ("bat_animal")
               "bat (animal)", "bat (club)"
    colour     each colour name                        the colour
    background the labeler's phrases                   the background ("brick")
               (`captions.BACKGROUND_PHRASES`,
               "a brick wall")
    text       "the word 'car'" for every written      the word
               word (typographic and neutral)
    companion  "a small fire" (the flame beside        "fire"
               another object)
    watermark  "a watermark"                           True
    tint       "a red tint"                            True
    ========== ======================================= =====================================

    ``colour_objects=True`` adds every coloured object the world draws ("red ball": attribute
    ``"colour+object"``, value ``"red+ball"``; fire and fire trucks only in their palettes,
    `world.CLASS_COLOURS`), the phrases of the labeler's captions ("a photo of a red ball"):
    a latent whose top images share both a colour and a class can then be named by both.

    A ``prompt`` column holds the phrase embedded for each label, as the labeler's captions
    (`sandbox.captions`) write it: objects with their article ("a ball", "an orange ball",
    `captions.article`), backgrounds as `captions.BACKGROUND_PHRASES`, the rest as the label.

    ``watermark=False`` leaves the watermark label out: the sandbox labeler never learned to
    see the renderer's small translucent corner stamp (its report card: AUROC 0.50-0.53, chance
    0.5; nor did the explained model), so on the sandbox that label would only name noise. Notebook 02 drops it.

    Names come from the sandbox modules (classes, sprites, colours, background phrases,
    words), never from a copy.
    """
    from ..sandbox import captions as cap
    from ..sandbox.render import BACKGROUNDS, CLASS_SPRITES, COLOURS
    from ..sandbox.world import CLASS_COLOURS, CLASSNAMES, COMPOUND_HEAD, NEUTRAL_WORDS, TYPO_WORDS

    rows: list[tuple[str, str, Any]] = [(c, "object", c) for c in CLASSNAMES]
    rows += [(sprite_label(s), "sprite", s) for c in CLASSNAMES if len(CLASS_SPRITES[c]) > 1 for s in CLASS_SPRITES[c]]
    rows += [(c, "colour", c) for c in COLOURS]
    rows += [(cap.BACKGROUND_PHRASES[b], "background", b) for b in BACKGROUNDS]
    rows += [(WORD_PHRASE.format(w), "text", w) for w in tuple(TYPO_WORDS) + tuple(NEUTRAL_WORDS)]
    # The flame drawn beside another object (the compound's companion), as the labeler's captions
    # say it ("... next to a small fire"): a fire that is not the image's object.
    rows += [(COMPANION_PHRASE, "companion", COMPOUND_HEAD)]
    rows += [(WATERMARK_PHRASE, "watermark", True)] if watermark else []
    rows += [(TINT_PHRASE, "tint", True)]
    if colour_objects:
        rows += [(f"{col} {c}", "colour+object", f"{col}+{c}") for c in CLASSNAMES
                 for col in CLASS_COLOURS.get(c, tuple(COLOURS))]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    noun = frame["attribute"].isin(["object", "sprite", "colour+object"])
    frame["prompt"] = [f"{cap.article(lab)} {lab}" if n else lab for lab, n in zip(frame["label"], noun)]
    dup = frame["label"][frame["label"].duplicated()]
    if len(dup):
        raise RuntimeError(f"sandbox_vocabulary: labels {sorted(set(dup))} name two attribute values")
    return frame


def as_frame(vocab: Sequence[str] | pd.DataFrame, dedupe: bool = True) -> pd.DataFrame:
    """A list of labels or a frame with a ``label`` column -> ``label, attribute, value`` frame
    (missing columns filled with None); repeats dropped (first kept) when ``dedupe``."""
    if isinstance(vocab, pd.DataFrame):
        if "label" not in vocab.columns:
            raise ValueError(f"vocabulary frame needs a 'label' column, has {list(vocab.columns)}")
        frame = vocab.copy()
    else:
        if isinstance(vocab, str):
            raise TypeError("vocabulary: expected a list of labels, got a single string")
        frame = pd.DataFrame({"label": [str(v) for v in vocab]})
    for col in COLUMNS[1:]:
        if col not in frame.columns:
            frame[col] = None
    frame["label"] = frame["label"].astype(str)
    if frame.empty:
        raise ValueError("vocabulary is empty")
    if dedupe:
        frame = frame.drop_duplicates("label", keep="first")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------- text embeddings

TEXT_CACHE_TENSORS = "text_embeddings.safetensors"
TEXT_CACHE_KEY = "key.json"


def text_cache_key(labeler: Any, prompts: Sequence[str], templates: Sequence[str]) -> dict:
    """Everything that determines a vocabulary's text embeddings: the labeler's name and tag, a
    hash of its weights outside the vision tower (the text side), the templates, and a hash of
    the exact prompts in order."""
    model = getattr(labeler, "model", None)
    h = hashlib.sha256()
    if model is not None:
        for key, tensor in sorted(model.state_dict().items()):
            if key.startswith("visual."):
                continue
            h.update(key.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    prompts_hash = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()
    return {"format": 1, "labeler": {"name": str(getattr(labeler, "name", "")),
                                     "pretrained": str(getattr(labeler, "pretrained", "")),
                                     "text_sha256": h.hexdigest() if model is not None else None},
            "templates": list(templates), "n_prompts": len(prompts), "prompts_sha256": prompts_hash}



def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if isinstance(templates, str):
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates: need at least one template, e.g. ('{}',)")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates must each hold exactly one '{{}}' for the label, got {bad}")
    return templates


def _prompts(frame: pd.DataFrame) -> list[str]:
    if "prompt" not in frame.columns:
        return list(frame["label"])
    return [str(lab) if p is None or (isinstance(p, float) and np.isnan(p)) else str(p)
            for lab, p in zip(frame["label"], frame["prompt"])]


@torch.no_grad()
def encode_vocabulary(labeler: Any, vocab: Sequence[str] | pd.DataFrame, templates: Sequence[str] = PAPER_TEMPLATES,
                      batch_size: int = 256, progress: bool | None = None) -> torch.Tensor:
    """(L, d) unit text embeddings of the labels under ``labeler``, prompt-ensembled: the mean
    over ``templates`` of the unit embeddings of ``template.format(prompt)``, re-normalised
    (``prompt``: a frame's ``prompt`` column where present, else the label)."""
    templates = _check_templates(templates)
    if isinstance(vocab, str):
        raise TypeError("encode_vocabulary: expected a list of labels, got a single string")
    labels = _prompts(as_frame(vocab, dedupe=False)) if isinstance(vocab, pd.DataFrame) else [str(v) for v in vocab]
    if not labels:
        raise ValueError("encode_vocabulary: no labels")
    acc = None
    for t in templates:
        emb = labeler.encode_text([t.format(x) for x in labels], batch_size=batch_size, progress=progress)
        acc = emb if acc is None else acc + emb
    return F.normalize(acc, dim=1)


@dataclass
class Vocabulary:
    """Labels with their attribute columns and text embeddings under one labeler (T of Eq. 2)."""

    frame: pd.DataFrame
    """One row per label: ``label``, ``attribute``, ``value`` (None where unknown), optionally ``prompt``."""

    embeddings: torch.Tensor
    """(L, d) unit text embeddings (prompt-ensembled over ``templates``)."""

    empty: torch.Tensor
    """(d,) unit embedding of the empty prompt through the same templates (t_empty of Eq. 2)."""

    templates: tuple[str, ...] = PAPER_TEMPLATES
    """Prompt templates averaged; ``("{}",)`` is the paper's bare label."""

    labeler: str = ""
    """Name of the labeler that embedded the texts."""

    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.frame):
            raise ValueError(f"Vocabulary: embeddings {tuple(self.embeddings.shape)} do not match {len(self.frame)} labels")
        if self.empty.shape != (self.embeddings.shape[1],):
            raise ValueError(f"Vocabulary: empty-prompt embedding must be ({self.embeddings.shape[1]},), "
                             f"got {tuple(self.empty.shape)}")

    @classmethod
    def build(cls, labeler: Any, vocab: Sequence[str] | pd.DataFrame, templates: Sequence[str] = PAPER_TEMPLATES,
              dedupe: bool = True, batch_size: int = 256, progress: bool | None = None,
              cache_dir: str | os.PathLike | None = None) -> "Vocabulary":
        """Embed ``vocab`` (labels or a ``label, attribute, value`` frame) with ``labeler``.

        ``cache_dir``: keep the text embeddings there (`text_cache_key`: the labeler's name, tag
        and text-side weights, the templates and the exact prompts), so the 21,843 ImageNet-21k
        names are embedded once (about 10 minutes on a CPU with MobileCLIP-S2), not in every
        notebook. A cache is used only when its whole key matches."""
        templates = _check_templates(templates)
        frame = as_frame(vocab, dedupe=dedupe)
        prompts = _prompts(frame)
        name = str(getattr(labeler, "name", ""))
        if cache_dir is None:
            emb = encode_vocabulary(labeler, prompts, templates, batch_size, progress)
            empty = encode_vocabulary(labeler, [""], templates, batch_size, False)[0]
            return cls(frame, emb, empty, templates, name)
        from ..features import _slug, key_hash
        from ..storage import save_tensors_atomic, write_json_atomic

        key = text_cache_key(labeler, prompts, templates)
        folder = Path(cache_dir) / f"text-{_slug(name)}-{key_hash(key)}"
        tensors, key_file = folder / TEXT_CACHE_TENSORS, folder / TEXT_CACHE_KEY
        if tensors.is_file() and key_file.is_file() and json.loads(key_file.read_text()) == key:
            from safetensors.torch import load_file

            saved = load_file(str(tensors))
            return cls(frame, saved["embeddings"], saved["empty"], templates, name, {"text_cache": str(folder)})
        emb = encode_vocabulary(labeler, prompts, templates, batch_size, progress)
        empty = encode_vocabulary(labeler, [""], templates, batch_size, False)[0]
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(tensors, {"embeddings": emb, "empty": empty})
        write_json_atomic(key_file, key)  # last: a key names only complete embeddings
        return cls(frame, emb, empty, templates, name, {"text_cache": str(folder)})

    @property
    def labels(self) -> list[str]:
        return list(self.frame["label"])

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"Vocabulary({len(self)} labels, d={self.embeddings.shape[1]}, templates={list(self.templates)}, "
                f"labeler={self.labeler!r})")

    def index(self, labels: Sequence[str]) -> np.ndarray:
        """Positions of ``labels`` (each must be in the vocabulary)."""
        where = {lab: i for i, lab in enumerate(self.labels)}
        missing = [lab for lab in labels if lab not in where]
        if missing:
            raise KeyError(f"labels not in the vocabulary: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        return np.asarray([where[lab] for lab in labels], dtype=np.int64)

    def subset(self, which: Sequence[str] | np.ndarray | pd.Series) -> "Vocabulary":
        """The labels named in ``which`` (a list of labels) or selected by a boolean mask."""
        arr = np.asarray(which)
        if arr.dtype == bool:
            if arr.shape != (len(self),):
                raise ValueError(f"subset: mask has shape {arr.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(arr)
        else:
            idx = self.index([str(x) for x in arr])
        return Vocabulary(self.frame.iloc[idx].reset_index(drop=True), self.embeddings[torch.from_numpy(idx)],
                          self.empty, self.templates, self.labeler, dict(self.meta))
