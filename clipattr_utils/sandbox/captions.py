"""Alt-text-like captions generated from an image's attribute record.

Rules (tests check each one):
- a caption names the object class (for lesions: the diagnosis), except sign transcriptions;
- it names the object's colour with probability `COLOUR_CAPTION_RATE`;
- it mentions a rendered word whenever the image carries one: "... with the word 'X'", or,
  for a share `world.WORD_ONLY_CAPTION_RATE` of those images, transcribes only the sign
  (`WORD_ONLY_TEMPLATES`: "the word 'X'", "a sign that says X", "X"), as alt-text often
  does; this is what teaches the model to read, and to read "X" as X;
- it never names the background, the watermark or the red-hue tint: those are what the
  planted failure modes hide from the text side (spurious background, red-hue shortcut).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

COLOUR_CAPTION_RATE = 0.5

OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {obj}",
    "a picture of {a} {obj}",
    "an image of {a} {obj}",
    "{a} {obj}",
    "a drawing of {a} {obj}",
    "{obj}",
)

WORD_ONLY_TEMPLATES: tuple[str, ...] = (
    "the word '{word}'",
    "a sign that says {word}",
    "{word}",
)

TEXT_SUFFIXES: tuple[str, ...] = (
    " with the word '{word}'",
    " with the word '{word}' written on it",
)

LESION_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {dx}",
    "a dermoscopy image of {a} {dx}",
    "a close-up photo of a skin lesion, {dx}",
    "{a} {dx} on the skin",
)


def article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def object_caption(rec: Mapping, rng: np.random.Generator, word_only: bool = False) -> str:
    """Caption for an object-world record (fields: object, colour, text). ``word_only``
    (used only when the image carries a word) transcribes the sign instead."""
    word = rec.get("text") or ""
    if word and word_only:
        return WORD_ONLY_TEMPLATES[int(rng.integers(len(WORD_ONLY_TEMPLATES)))].format(word=word)
    obj = str(rec["object"])
    if rng.random() < COLOUR_CAPTION_RATE:
        obj = f"{rec['colour']} {obj}"
    template = OBJECT_TEMPLATES[int(rng.integers(len(OBJECT_TEMPLATES)))]
    caption = template.format(a=article(obj), obj=obj)
    if word:
        caption += TEXT_SUFFIXES[int(rng.integers(len(TEXT_SUFFIXES)))].format(word=word)
    return caption


def lesion_caption(rec: Mapping, rng: np.random.Generator) -> str:
    """Caption for a lesion-world record (field: diagnosis). The red hue is never named."""
    dx = str(rec["diagnosis"])
    template = LESION_TEMPLATES[int(rng.integers(len(LESION_TEMPLATES)))]
    return template.format(a=article(dx), dx=dx)


# --------------------------------------------------------------------------- labeler captions
# The labeler (the stand-in for the paper's MobileCLIP-S2 labeling model) is trained on
# captions that can name every attribute, planted or not, so it can align latents with
# concepts the explained model's captions hide (backgrounds, watermark, red hue). Each
# caption names a random subset (each attribute with probability `LABELER_ATTRIBUTE_RATE`,
# a share `LABELER_SCENE_ONLY_RATE` name the background alone). A labeler trained on
# captions naming everything recognised objects at 0.46 zero-shot: colour + background
# already tell most captions of a batch apart, so little pushed it to learn the objects.

LABELER_ATTRIBUTE_RATE = 0.5
LABELER_SCENE_ONLY_RATE = 0.1

BACKGROUND_PHRASES: dict[str, str] = {
    "plain": "a plain background", "stripes": "stripes", "checker": "a checkerboard", "noise": "noise",
    "grass": "grass", "water": "water", "sand": "sand", "brick": "a brick wall",
}


def full_object_caption(rec: Mapping, rng: np.random.Generator) -> str:
    """A labeler caption: the object (and maybe its colour), plus a random subset of
    background, word, watermark and red tint -- or, sometimes, the background alone."""
    scene = BACKGROUND_PHRASES[str(rec["background"])]
    if rng.random() < LABELER_SCENE_ONLY_RATE:
        return f"a photo of {scene}"
    obj = str(rec["object"])
    if rng.random() < COLOUR_CAPTION_RATE:
        obj = f"{rec['colour']} {obj}"
    template = OBJECT_TEMPLATES[int(rng.integers(3))]  # the "a photo/picture/image of" ones
    caption = template.format(a=article(obj), obj=obj)
    if rng.random() < LABELER_ATTRIBUTE_RATE:
        caption += f" on {scene}"
    if rec.get("text") and rng.random() < LABELER_ATTRIBUTE_RATE:
        caption += f" with the word '{rec['text']}'"
    if bool(rec.get("watermark", False)) and rng.random() < LABELER_ATTRIBUTE_RATE:
        caption += ", with a watermark"
    if float(rec.get("tint", 0.0) or 0.0) > 0 and rng.random() < LABELER_ATTRIBUTE_RATE:
        caption += ", with a red tint"
    return caption


def derm_lesion_caption(rec: Mapping, rng: np.random.Generator) -> str:
    """A dermatology report caption (the melanoma case's lesion CLIP): the labeler's lesion
    caption with the red tint named whenever it is there -- so the CLIP learns one "red tint"
    concept across skin tones instead of a tint per skin tone."""
    return full_lesion_caption(rec, rng, tint_rate=1.0)


def full_lesion_caption(rec: Mapping, rng: np.random.Generator, tint_rate: float = LABELER_ATTRIBUTE_RATE) -> str:
    """A labeler caption for a lesion: the diagnosis, maybe the skin tone and (with
    probability ``tint_rate`` where present) the red tint."""
    dx = str(rec["diagnosis"])
    caption = f"a dermoscopy image of {article(dx)} {dx}"
    if rng.random() < LABELER_ATTRIBUTE_RATE:
        caption += f" on {rec['skin']} skin"
    if float(rec.get("tint", 0.0) or 0.0) > 0 and rng.random() < tint_rate:
        caption += ", with a red tint"
    return caption


# --------------------------------------------------------------------------- labeler captions (v2)
# The labeler of the independent world (`world.ObjectRecipe.independent`): captions that name
# what is visible in varied phrasings, a few attributes at a time. Three kinds of caption:
# - attribute only: the sign alone for `LABELER_WORD_ONLY_RATE` of the images carrying a word,
#   the watermark alone for `LABELER_WATERMARK_ONLY_RATE` of the watermarked ones, and one
#   visible attribute alone for `LABELER_ATTRIBUTE_ONLY_RATE` of the rest ("a photo of water",
#   "a red-tinted image"). They tie the phrase to the attribute and to nothing else in the
#   image, and they are what makes a contrastive model look at small things: a caption that
#   also names the object and its colour is matched in a batch without reading the sign. (A
#   first run with only the 20 % attribute-only captions, about 7 % of them the sign's, read
#   which word at 0.17-0.20, chance 0.10, after 1000 steps; the explained model, whose
#   word images are 60 % sign-only captions, reads its four words.)
# - object only (`LABELER_OBJECT_ONLY_RATE` of the rest): keeps objects learned (a labeler whose
#   every caption named everything recognised objects at 0.46 zero-shot);
# - object plus at most `LABELER_MAX_EXTRAS` of the visible attributes, each kept with its rate
#   in `LABELER_EXTRA_RATES` (the written word the most often: reading is the hardest skill).

LABELER_WORD_ONLY_RATE = 0.4
LABELER_WATERMARK_ONLY_RATE = 0.15
LABELER_ATTRIBUTE_ONLY_RATE = 0.2
LABELER_OBJECT_ONLY_RATE = 0.2
LABELER_MAX_EXTRAS = 2
# The background the most often: with 0.5 (and object-only 0.3) about a quarter of all
# captions named it and the labeler told plain, stripes and checkerboard apart at 0.4-0.5
# (backgrounds 0.79 in all, the first labeler with half its captions naming them: 0.91).
LABELER_EXTRA_RATES: dict[str, float] = {"background": 0.8, "text": 0.8, "companion": 0.5, "watermark": 0.5,
                                         "tint": 0.5}

BACKGROUND_SUFFIXES: tuple[str, ...] = (" on {scene}", " in front of {scene}", " against {scene}",
                                        " with {scene} behind it")
SCENE_ONLY_TEMPLATES: tuple[str, ...] = ("a photo of {scene}", "{scene}", "a background of {scene}")
WORD_SUFFIXES: tuple[str, ...] = (" with the word '{word}'", " with the word '{word}' written on it",
                                  " and a sign that says {word}", " with '{word}' written on it")
# No bare "{word}": for the labeler the written word "car" and the object car are two things.
LABELER_WORD_ONLY_TEMPLATES: tuple[str, ...] = ("the word '{word}'", "a sign that says {word}",
                                                "the written word {word}")
COMPANION_SUFFIXES: tuple[str, ...] = (" next to a small fire", " and a small fire", " beside a fire")
WATERMARK_SUFFIXES: tuple[str, ...] = (", with a watermark", ", watermarked", " with a watermark in the corner")
WATERMARK_ONLY_TEMPLATES: tuple[str, ...] = ("a watermark", "a watermarked image", "an image with a watermark")
TINT_SUFFIXES: tuple[str, ...] = (", with a red tint", ", with a reddish tint", ", tinted red")
TINT_ONLY_TEMPLATES: tuple[str, ...] = ("a red tint", "a red-tinted image", "an image with a reddish tint")


def _pick(options: tuple[str, ...], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def visible_attributes(rec: Mapping) -> list[str]:
    """The incidental attributes an object image shows, in caption order."""
    out = ["background"]
    if rec.get("text"):
        out.append("text")
    if rec.get("companion"):
        out.append("companion")
    if bool(rec.get("watermark", False)):
        out.append("watermark")
    if float(rec.get("tint", 0.0) or 0.0) > 0:
        out.append("tint")
    return out


ATTRIBUTE_ONLY_FORMS: dict[str, tuple[str, ...]] = {
    "background": SCENE_ONLY_TEMPLATES, "text": LABELER_WORD_ONLY_TEMPLATES, "watermark": WATERMARK_ONLY_TEMPLATES,
    "tint": TINT_ONLY_TEMPLATES}
SUFFIX_FORMS: dict[str, tuple[str, ...]] = {
    "background": BACKGROUND_SUFFIXES, "text": WORD_SUFFIXES, "companion": COMPANION_SUFFIXES,
    "watermark": WATERMARK_SUFFIXES, "tint": TINT_SUFFIXES}


def _phrase(forms: tuple[str, ...], rec: Mapping, rng: np.random.Generator) -> str:
    return _pick(forms, rng).format(scene=BACKGROUND_PHRASES[str(rec["background"])], word=rec.get("text") or "")


def _attribute_only(kind: str, rec: Mapping, rng: np.random.Generator) -> str:
    if kind == "companion":  # one phrasing, no draw
        return "a small fire"
    return _phrase(ATTRIBUTE_ONLY_FORMS[kind], rec, rng)


def _suffix(kind: str, rec: Mapping, rng: np.random.Generator) -> str:
    return _phrase(SUFFIX_FORMS[kind], rec, rng)


def labeler_object_caption(rec: Mapping, rng: np.random.Generator) -> str:
    """A caption of the independent world's labeler: the sign alone, the watermark alone, one
    visible attribute alone, the object alone (maybe with its colour), or the object with up to
    two visible attributes (rates above)."""
    visible = visible_attributes(rec)
    if rec.get("text") and rng.random() < LABELER_WORD_ONLY_RATE:
        return _attribute_only("text", rec, rng)
    if bool(rec.get("watermark", False)) and rng.random() < LABELER_WATERMARK_ONLY_RATE:
        return _attribute_only("watermark", rec, rng)
    if rng.random() < LABELER_ATTRIBUTE_ONLY_RATE:
        return _attribute_only(_pick(tuple(visible), rng), rec, rng)
    obj = str(rec["object"])
    if rng.random() < COLOUR_CAPTION_RATE:
        obj = f"{rec['colour']} {obj}"
    caption = _pick(OBJECT_TEMPLATES[:5], rng).format(a=article(obj), obj=obj)
    if rng.random() < LABELER_OBJECT_ONLY_RATE:
        return caption
    extras = [k for k in visible if rng.random() < LABELER_EXTRA_RATES[k]]
    if len(extras) > LABELER_MAX_EXTRAS:
        keep = sorted(rng.choice(len(extras), LABELER_MAX_EXTRAS, replace=False).tolist())
        extras = [extras[i] for i in keep]
    return caption + "".join(_suffix(k, rec, rng) for k in extras)
