"""The sandbox world: classes, planted failure modes (with their rates) and image sets.

Two worlds share one renderer:

- the **object world** (`make_dataset`): `CLASSNAMES` sprites on textured backgrounds, with
  optional rendered words, a corner watermark and a red-hue tint, captioned like alt-text;
- the **lesion world** (`make_lesion_dataset`): "nevus" vs "melanoma" blobs on skin, with a
  red hue (the red channel scaled, as in Eq. 32) far more common on the benign class (Sec. 5.4).

Planted failure modes in the *training* distribution (the paper's Sec. 5.3 / App. D modes):

(a) spurious correlation: `SPURIOUS_CLASS` sits on `SPURIOUS_BACKGROUND` in
    `SPURIOUS_RATE` of its images; other classes get that background only at
    `SPURIOUS_BACKGROUND_OTHER_RATE`; captions never name any background.
(b) visual typography: `TEXT_RATE` of the images carry a rendered word; a share
    `TEXT_OTHER_CLASS_SHARE` of those words name another class (one of the four `TYPO_WORDS`), the rest
    are neutral (`NEUTRAL_WORDS`); the caption mentions the word ("with the word 'X'"),
    and in `WORD_ONLY_CAPTION_RATE` of them transcribes only the sign, as alt-text often does.
(c) polysemy: `POLYSEMOUS_WORD` captions two unrelated sprites (`POLYSEMOUS_SPRITES`), 50/50.
(d) compound noun: `COMPOUND_CLASS` ("fire truck") is a class whose first word,
    `COMPOUND_HEAD` ("fire"), is a class of its own; the compound is drawn with relative
    weight `COMPOUND_CLASS_WEIGHT` (rarer than its head word), never in fire colours, and
    with an uncaptioned small flame beside it in `COMPOUND_COMPANION_RATE` of its images: the
    flame is the only fire a fire truck ever shows, so a fire-like component that drives the
    "fire truck" prompt on other images is not part of what the class looks like.
(e) lesion red hue: `LESION_TINT_RATE[d]` of the images of diagnosis d carry the red hue,
    drawn as the paper's Eq. 32 red-channel scaling (`render.lesion_red_hue`), not as a blend.

The test split is drawn *clean* by default (uniform backgrounds, no words, no watermark, no
tint); ``clean=False`` draws it from the training distribution instead.

Every image is a pure function of (seed, split, index): its attribute record is sampled
from ``SeedSequence([seed, split, index, world])`` and rendered from that record, so nothing big is
stored, and any record (also an edited one, see `SandboxImageSet.replace`) renders anywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from ..data import ImageSet
from . import captions as cap
from .render import (BACKGROUNDS, CLASS_SPRITES, COLOURS, LESION_PALETTE, RENDERER_VERSION, SKIN_TONES,
                     render_lesion, render_object, word_size)

CLASSNAMES: tuple[str, ...] = tuple(CLASS_SPRITES)
LESION_CLASSNAMES: tuple[str, ...] = ("nevus", "melanoma")

# (a) spurious background
SPURIOUS_CLASS = "boat"
SPURIOUS_BACKGROUND = "water"
SPURIOUS_RATE = 0.99
SPURIOUS_BACKGROUND_OTHER_RATE = 0.0
# (b) visual typography
TEXT_RATE = 0.4
TEXT_OTHER_CLASS_SHARE = 0.9
# Share of captions of images with a word that transcribe the sign only (see captions).
WORD_ONLY_CAPTION_RATE = 0.6
# Words are printed like a label: one font size, dark on a light box, centred in a band at
# the top or bottom. (A small ViT trained for minutes on a CPU does not learn to read words
# at random sizes and places; a fixed label it does.)
TEXT_PX = 0.24
NEUTRAL_WORDS: tuple[str, ...] = ("sale", "open", "hello", "stop", "menu", "taxi")
# The class names that appear as rendered words. Four, not all eleven one-word classes: a
# 4-layer ViT trained for ~25 CPU minutes learns to read four words (a linear probe on its
# embeddings tells them apart perfectly after 700 steps) but not eleven (probe at 0.15-0.18,
# chance 0.09, after 2400 steps). They avoid the classes of modes (a), (c) and (d).
TYPO_WORDS: tuple[str, ...] = ("car", "fish", "house", "flower")
# (c) polysemy
POLYSEMOUS_WORD = "bat"
POLYSEMOUS_SPRITES: tuple[str, ...] = CLASS_SPRITES[POLYSEMOUS_WORD]
# (d) compound noun. The compound class is rarer than the others in training (relative
# weight COMPOUND_CLASS_WEIGHT; uniform = 1), as compounds are rarer than their head word
# on the web; in COMPOUND_COMPANION_RATE of their training images a small flame (the head
# word's sprite) burns beside them, never captioned (fire trucks are photographed at fires).
# Fire trucks are painted in colours fire never has (CLASS_COLOURS): in renderer version 1
# they came in fire colours, so fire-like latents were *expected* on the class's own images
# and failure mining could not single out the flame (its z-score reached only ~1.7).
COMPOUND_CLASS = "fire truck"
COMPOUND_HEAD = "fire"
COMPOUND_CLASS_WEIGHT = 0.4
COMPOUND_COMPANION_RATE = 0.5
# incidental, never captioned, uncorrelated with the class
WATERMARK_RATE = 0.1
TINT_RATE = 0.05
TINT_RANGE = (0.25, 0.45)
# The labeler's world (`ObjectRecipe.independent`): each incidental attribute common enough
# that its captions teach it, none tied to the object.
INDEPENDENT_RATES: dict[str, float] = {"text": 0.5, "companion": 0.2, "watermark": 0.3, "tint": 0.3}
# (e) lesion world
MELANOMA_RATE = 0.5
LESION_TINT_RATE: dict[str, float] = {"nevus": 0.5, "melanoma": 0.05}

# Fire is drawn in fire colours only, fire trucks never in them; everything else in any colour.
CLASS_COLOURS: dict[str, tuple[str, ...]] = {"fire": ("red", "orange", "yellow"),
                                             "fire truck": ("green", "blue", "purple", "white", "black")}

SPLITS = {"train": 0, "test": 1, "val": 2}

OBJECT_FIELDS = ("object", "label", "sprite", "colour", "background", "cx", "cy", "scale", "angle",
                 "companion", "companion_cx", "companion_cy", "companion_scale",
                 "text", "text_x", "text_y", "text_px", "text_dark", "watermark", "watermark_corner",
                 "tint", "render_seed", "caption")
LESION_FIELDS = ("diagnosis", "label", "skin", "atypia", "radius", "irregularity", "squash", "base_colour",
                 "patch_colours", "hairs", "cx", "cy", "tint", "render_seed", "caption")


@dataclass(frozen=True)
class ObjectRecipe:
    """Rates of the object world's planted modes; `clean()` turns every one of them off."""

    compound_class_weight: float = COMPOUND_CLASS_WEIGHT
    spurious_rate: float = SPURIOUS_RATE
    spurious_background_other_rate: float = SPURIOUS_BACKGROUND_OTHER_RATE
    text_rate: float = TEXT_RATE
    text_other_class_share: float = TEXT_OTHER_CLASS_SHARE
    word_only_caption_rate: float = WORD_ONLY_CAPTION_RATE
    compound_companion_rate: float = COMPOUND_COMPANION_RATE
    # The same flame beside any object other than the compound and its head word. Never in
    # training (0): failure-mining pools set it so that fire occurs independently of the class.
    companion_other_rate: float = 0.0
    watermark_rate: float = WATERMARK_RATE
    tint_rate: float = TINT_RATE
    # Two switches for worlds without the planted class links (the labeler's world): words
    # drawn from every written word whatever the object (default: another class's name in
    # `text_other_class_share` of them, never the object's own), and every colour for every
    # class (default: fire only in fire colours, fire trucks never, `CLASS_COLOURS`).
    word_independent: bool = False
    class_colours: bool = True

    @classmethod
    def clean(cls) -> "ObjectRecipe":
        # Clean: every background equally likely for every class (rate 1/len(BACKGROUNDS)).
        uniform = 1.0 / len(BACKGROUNDS)
        return cls(compound_class_weight=1.0, spurious_rate=uniform, spurious_background_other_rate=uniform,
                   text_rate=0.0, compound_companion_rate=0.0, watermark_rate=0.0, tint_rate=0.0)

    @classmethod
    def independent(cls) -> "ObjectRecipe":
        """The labeler's world: every attribute common and independent of the object.

        Backgrounds uniform for every class, a word on `INDEPENDENT_RATES["text"]` of the
        images drawn from all written words, the flame beside any object (but fire itself) at
        one rate, watermark and tint common, every colour for every class, the compound as
        common as any class. None of the explained world's planted links (a)-(d) survives:
        `planted_links` of this recipe is empty (tests check it)."""
        uniform = 1.0 / len(BACKGROUNDS)
        r = INDEPENDENT_RATES
        return cls(compound_class_weight=1.0, spurious_rate=uniform, spurious_background_other_rate=uniform,
                   text_rate=r["text"], text_other_class_share=0.0, word_only_caption_rate=0.0,
                   compound_companion_rate=r["companion"], companion_other_rate=r["companion"],
                   watermark_rate=r["watermark"], tint_rate=r["tint"], word_independent=True, class_colours=False)

    def planted_links(self) -> list[str]:
        """The explained world's planted object-attribute links this recipe draws: an empty
        list means every rendered attribute is independent of the object class."""
        uniform = 1.0 / len(BACKGROUNDS)
        links = []
        if abs(self.spurious_rate - self.spurious_background_other_rate) > 1e-12 or \
                abs(self.spurious_background_other_rate - uniform) > 1e-12:
            links.append(f"(a) {SPURIOUS_BACKGROUND} behind {SPURIOUS_CLASS}: {self.spurious_rate} vs "
                         f"{self.spurious_background_other_rate} for other classes (uniform {uniform:.3f})")
        if self.text_rate > 0 and not self.word_independent:
            links.append("(b) written words depend on the object (another class's name, never its own)")
        if self.compound_companion_rate != self.companion_other_rate:
            links.append(f"(d) flame beside {COMPOUND_CLASS}: {self.compound_companion_rate} vs "
                         f"{self.companion_other_rate} beside other objects")
        if self.compound_class_weight != 1.0:
            links.append(f"(d) {COMPOUND_CLASS} drawn with weight {self.compound_class_weight}")
        if self.class_colours:
            links.append(f"colours tied to classes ({sorted(CLASS_COLOURS)})")
        return links


@dataclass(frozen=True)
class LesionRecipe:
    melanoma_rate: float = MELANOMA_RATE
    tint_rate_nevus: float = LESION_TINT_RATE["nevus"]
    tint_rate_melanoma: float = LESION_TINT_RATE["melanoma"]

    def __post_init__(self) -> None:
        # Rates are probabilities; a typo such as 20 for 0.2 would otherwise tint every image.
        for name in ("melanoma_rate", "tint_rate_nevus", "tint_rate_melanoma"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"LesionRecipe.{name} must be a probability in [0, 1], got {value!r}")

    @classmethod
    def clean(cls) -> "LesionRecipe":
        return cls(tint_rate_nevus=0.0, tint_rate_melanoma=0.0)


def _rng(seed: int, split: str, index: int, world: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index), world]))


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    values = [value] if isinstance(value, str) else list(value)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ValueError(f"{name}: {bad or value!r} not allowed; choose from {list(allowed)}")


def _place_companion(cx: float, cy: float, scale: float) -> tuple[float, float, float, float]:
    """(object scale, companion cx, cy, scale): a small companion at the object's upper right,
    the object shrunk to make room."""
    scale *= 0.8
    cscale = 0.13
    return (scale, float(np.clip(cx + 0.55 * scale, cscale, 1 - cscale)),
            float(np.clip(cy - 0.75 * scale, cscale, 1 - cscale)), cscale)


def sample_object_record(rng: np.random.Generator, recipe: ObjectRecipe, objects: Sequence[str],
                         background: str | Sequence[str] | None = None, text: str | None = None,
                         tint: float | None = None, watermark: bool | None = None,
                         sprite: str | None = None) -> dict:
    """One object-world attribute record (plus its caption). Overrides fix an attribute."""
    w = np.array([recipe.compound_class_weight if o == COMPOUND_CLASS else 1.0 for o in objects])
    obj = objects[int(rng.choice(len(objects), p=w / w.sum()))]
    sprites = CLASS_SPRITES[obj] if sprite is None else (sprite,)
    spr = sprites[int(rng.integers(len(sprites)))]
    palette = CLASS_COLOURS.get(obj, tuple(COLOURS)) if recipe.class_colours else tuple(COLOURS)
    colour = palette[int(rng.integers(len(palette)))]
    # Background: the spurious class's own background with its planted rate, the rest uniform.
    p_special = recipe.spurious_rate if obj == SPURIOUS_CLASS else recipe.spurious_background_other_rate
    others = [b for b in BACKGROUNDS if b != SPURIOUS_BACKGROUND]
    u = rng.random()
    bg = SPURIOUS_BACKGROUND if u < p_special else others[int(rng.integers(len(others)))]
    if background is not None:
        choices = [background] if isinstance(background, str) else list(background)
        bg = choices[int(rng.integers(len(choices)))]
    # Word: another class's name or a neutral word.
    word = ""
    if rng.random() < recipe.text_rate:
        if recipe.word_independent:
            pool = list(TYPO_WORDS) + list(NEUTRAL_WORDS)
        elif rng.random() < recipe.text_other_class_share:
            pool = [w for w in TYPO_WORDS if w != obj]
        else:
            pool = list(NEUTRAL_WORDS)
        word = pool[int(rng.integers(len(pool)))]
    if text is not None:
        word = text
    scale = float(rng.uniform(0.28, 0.38))
    angle = float(rng.uniform(-20, 20)) + (-45.0 if spr == "bat_club" else 0.0)
    text_px = TEXT_PX
    text_dark = True
    text_top = bool(rng.random() < 0.5)
    cx = float(rng.uniform(0.5 - (0.5 - scale) * 0.8, 0.5 + (0.5 - scale) * 0.8))
    if word:
        # Words live in a band at the top or bottom; the sprite moves to the other side.
        w, h = word_size(word, 256)
        pad = 0.02  # the sign's padding, as a fraction of the image
        w_frac, h_frac = w / 256 * text_px, h / 256 * text_px
        text_x = max(pad, 0.5 - w_frac / 2)
        text_y = pad if text_top else 1 - pad - h_frac
        lo, hi = (0.5, 1 - 0.85 * scale) if text_top else (0.85 * scale, 0.5)
        cy = float(rng.uniform(min(lo, hi), max(lo, hi)))
    else:
        text_x = text_y = 0.0
        cy = float(rng.uniform(0.5 - (0.5 - scale) * 0.8, 0.5 + (0.5 - scale) * 0.8))
    has_wm = bool(rng.random() < recipe.watermark_rate)
    corner = ("tl", "tr", "bl", "br")[int(rng.integers(4))]
    if watermark is not None:
        has_wm = bool(watermark)
    tint_s = float(rng.uniform(*TINT_RANGE)) if rng.random() < recipe.tint_rate else 0.0
    if tint is not None:
        tint_s = float(tint)
    # The compound's companion: a small flame at the truck's upper right, the truck shrunk.
    companion, ccx, ccy, cscale = "", 0.0, 0.0, 0.0
    if obj == COMPOUND_CLASS:
        burning = rng.random() < recipe.compound_companion_rate
    elif obj != COMPOUND_HEAD and recipe.companion_other_rate > 0:
        # Drawn only when switched on, so the default worlds' random streams are unchanged.
        burning = rng.random() < recipe.companion_other_rate
    else:
        burning = False
    if burning:
        companion = CLASS_SPRITES[COMPOUND_HEAD][0]
        scale, ccx, ccy, cscale = _place_companion(cx, cy, scale)
    word_only = bool(rng.random() < recipe.word_only_caption_rate)
    rec = {
        "object": obj, "label": CLASSNAMES.index(obj), "sprite": spr, "colour": colour, "background": bg,
        "cx": cx, "cy": cy, "scale": scale, "angle": angle,
        "companion": companion, "companion_cx": ccx, "companion_cy": ccy, "companion_scale": cscale,
        "text": word, "text_x": text_x, "text_y": text_y, "text_px": text_px, "text_dark": text_dark,
        "watermark": has_wm, "watermark_corner": corner, "tint": tint_s,
        "render_seed": int(rng.integers(2**31 - 1)),
    }
    rec["caption"] = cap.object_caption(rec, rng, word_only=word_only)
    return rec


def sample_lesion_record(rng: np.random.Generator, recipe: LesionRecipe, diagnosis: str | None = None,
                         tint: float | None = None) -> dict:
    """One lesion-world record. A latent "atypia" in [0, 1] drives every malignancy cue
    (size, border irregularity, dark base colour, colour variegation); its class-conditional
    distributions overlap, so shape alone leaves some error and the red-hue shortcut pays."""
    dx = LESION_CLASSNAMES[int(rng.random() < recipe.melanoma_rate)]
    if diagnosis is not None:
        dx = diagnosis
    atypia = float(rng.beta(4.0, 2.2) if dx == "melanoma" else rng.beta(2.2, 4.0))
    skin = list(SKIN_TONES)[int(rng.integers(len(SKIN_TONES)))]
    radius = float(0.15 + 0.12 * atypia + rng.uniform(-0.03, 0.03))
    irregularity = float(max(0.0, 0.04 + 0.4 * atypia + rng.normal(0, 0.04)))
    bases = ("tan", "brown", "dark brown", "black")
    base = bases[int(np.clip(atypia * 4 + rng.normal(0, 0.6), 0, 3.999))]
    n_patches = int(rng.binomial(3, 0.85 * atypia ** 1.5))
    patch_pool = [c for c in LESION_PALETTE if c != base]
    patches = [patch_pool[int(rng.integers(len(patch_pool)))] for _ in range(n_patches)]
    rate = recipe.tint_rate_melanoma if dx == "melanoma" else recipe.tint_rate_nevus
    tint_s = float(rng.uniform(*TINT_RANGE)) if rng.random() < rate else 0.0
    if tint is not None:
        tint_s = float(tint)
    rec = {
        "diagnosis": dx, "label": LESION_CLASSNAMES.index(dx), "skin": skin, "atypia": atypia,
        "radius": radius, "irregularity": irregularity, "squash": float(rng.uniform(0.7, 1.0)),
        "base_colour": base, "patch_colours": "+".join(patches), "hairs": int(rng.integers(0, 4)),
        "cx": float(rng.uniform(0.42, 0.58)), "cy": float(rng.uniform(0.42, 0.58)), "tint": tint_s,
        "render_seed": int(rng.integers(2**31 - 1)),
    }
    rec["caption"] = cap.lesion_caption(rec, rng)
    return rec


def _recipe_key(recipe: ObjectRecipe) -> dict:
    """The recipe as stored and fingerprinted. ``companion_other_rate`` came later: left out
    while 0 so every image set made before it keeps its fingerprint (and its feature caches)."""
    d = asdict(recipe)
    if d["companion_other_rate"] == 0:
        del d["companion_other_rate"]
    # Likewise the switches of the independent world, while they keep their defaults.
    for name, default in (("word_independent", False), ("class_colours", True)):
        if d[name] == default:
            del d[name]
    return d


class SandboxImageSet(ImageSet):
    """A rendered image set: an attribute table (one row per image) plus the recipe that made it.

    Images are rendered on demand from their row (`load_image`), so the set is tiny in memory.
    `attributes` is the pandas table (a copy); `captions` its caption column.
    """

    def __init__(self, world: str, table: pd.DataFrame, recipe: dict, size: int = 64):
        if world not in ("objects", "lesions"):
            raise ValueError(f"SandboxImageSet: world must be 'objects' or 'lesions', got {world!r}")
        if size < 16:
            raise ValueError(f"SandboxImageSet: size must be >= 16 pixels, got {size}")
        fields = OBJECT_FIELDS if world == "objects" else LESION_FIELDS
        missing = [f for f in fields if f not in table.columns]
        if missing:
            raise ValueError(f"SandboxImageSet: attribute table lacks columns {missing}")
        self.world = world
        self._table = table.reset_index(drop=True)
        self.recipe = dict(recipe)
        self.size = int(size)
        self.classnames = list(CLASSNAMES if world == "objects" else LESION_CLASSNAMES)
        self._render = render_object if world == "objects" else render_lesion
        self._records = self._table.to_dict("records")

    # -- ImageSet protocol
    def __len__(self) -> int:
        return len(self._table)

    def sample_id(self, i: int) -> str:
        return str(self._table.at[i, "sample_id"])

    def label(self, i: int) -> int:
        return int(self._table.at[i, "label"])

    def labels(self) -> list[int]:
        return [int(v) for v in self._table["label"]]

    def load_image(self, i: int) -> Image.Image:
        if not -len(self) <= i < len(self):
            raise IndexError(f"SandboxImageSet: index {i} out of range for {len(self)} images")
        return self._render(self._records[i], self.size)

    def masks(self, i: int) -> dict[str, np.ndarray]:
        """Where image ``i``'s renderer drew each element: float32 (size, size) arrays in [0, 1]
        (the share of each pixel covered), named by `render.OBJECT_MASKS` or
        `render.LESION_MASKS`; drawn in the same pass as `load_image`'s pixels."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"SandboxImageSet: index {i} out of range for {len(self)} images")
        out: dict[str, np.ndarray] = {}
        self._render(self._records[i], self.size, masks=out)
        return out

    def describe(self) -> dict:
        return {"kind": "sandbox", "world": self.world, "n": len(self), "size": self.size,
                "renderer_version": RENDERER_VERSION, **self.recipe}

    def fingerprint(self) -> str:
        """sha256 of the full recipe (n, split, seed, size, mode rates, overrides, edits,
        renderer version): the recipe determines every pixel and label."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True, default=str).encode()).hexdigest()

    # -- sandbox extras
    @property
    def attributes(self) -> pd.DataFrame:
        return self._table.copy()

    @property
    def captions(self) -> list[str]:
        """Alt-text captions (the planted caption rules of `captions`)."""
        return list(self._table["caption"])

    def full_captions(self, style: str = "full") -> list[str]:
        """Labeler captions (`captions.full_object_caption`): each can name any attribute --
        background, word, watermark, red tint -- that alt-text hides. ``style="derm"`` (lesions
        only): `captions.derm_lesion_caption`, which names the red tint whenever it is there.
        Deterministic from each row's render seed."""
        if style not in ("full", "derm", "labeler") or (style == "derm" and self.world != "lesions"):
            raise ValueError(f"full_captions: style must be 'full', 'labeler' or (lesions only) 'derm', got {style!r} "
                             f"for the {self.world} world")
        if self.world == "objects":
            make = cap.labeler_object_caption if style == "labeler" else cap.full_object_caption
        else:
            make = cap.derm_lesion_caption if style == "derm" else cap.full_lesion_caption  # 'labeler': full
        return [make(r, np.random.default_rng([int(r["render_seed"]), 1])) for r in self._records]

    def render_array(self, indices: Sequence[int] | None = None, progress: bool = False) -> np.ndarray:
        """(n, size, size, 3) uint8 pixels of the given rows (all rows by default)."""
        from tqdm.auto import tqdm

        idx = range(len(self)) if indices is None else list(indices)
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        for k, i in enumerate(tqdm(idx, desc=f"render {self.world}", disable=not progress)):
            out[k] = np.asarray(self.load_image(i))
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> "SandboxImageSet":
        """The rows at `indices` (positions, or a boolean mask), recorded in the recipe."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"subset: boolean mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset: indices out of range for {len(self)} images")
        digest = hashlib.sha256(idx.tobytes()).hexdigest()[:16]
        edits = list(self.recipe.get("edits", [])) + [{"subset": digest, "n": int(idx.size)}]
        return SandboxImageSet(self.world, self._table.iloc[idx], {**self.recipe, "edits": edits}, self.size)

    def replace(self, **columns: Any) -> "SandboxImageSet":
        """A copy with attribute columns set to constants (e.g. ``tint=0.35``, ``text='fish'``).

        Only rendering attributes that do not move anything else may be edited: ``tint``,
        ``watermark``, ``background``, ``colour``. (Text placement depends on the word, so
        words are set at sampling time: `make_dataset(text=...)`.)"""
        allowed = {"tint", "watermark", "background", "colour"}
        bad = sorted(set(columns) - allowed)
        if bad:
            raise ValueError(f"replace: cannot edit {bad}; editable columns are {sorted(allowed)}")
        if "background" in columns:
            _check_choice("background", columns["background"], BACKGROUNDS)
        if "colour" in columns:
            _check_choice("colour", columns["colour"], tuple(COLOURS))
        if "tint" in columns and not 0.0 <= float(columns["tint"]) <= 1.0:
            raise ValueError(f"replace: tint must be in [0, 1], got {columns['tint']}")
        table = self._table.copy()
        for k, v in columns.items():
            table[k] = v
        edits = list(self.recipe.get("edits", [])) + [{"replace": {k: columns[k] for k in sorted(columns)}}]
        return SandboxImageSet(self.world, table, {**self.recipe, "edits": edits}, self.size)


    def with_word(self, word: str) -> "SandboxImageSet":
        """A copy in which every object image carries the sign ``word``, placed as the world
        places words (a label in a band at the top or bottom; an existing sign keeps its band,
        otherwise the band away from the sprite), the sprite moved out of the band where it
        overlaps. Everything else about each image stays (a paired control)."""
        if self.world != "objects":
            raise ValueError("with_word: only object-world image sets carry words")
        if not isinstance(word, str) or not word:
            raise ValueError(f"with_word: word must be a non-empty string, got {word!r}")
        table = self._table.copy()
        w, h = word_size(word, 256)
        pad = 0.02
        w_frac, h_frac = w / 256 * TEXT_PX, h / 256 * TEXT_PX
        for i, r in enumerate(self._records):
            scale, cy = float(r["scale"]), float(r["cy"])
            top = float(r["text_y"]) < 0.5 if r["text"] else cy >= 0.5
            lo, hi = (0.5, 1 - 0.85 * scale) if top else (0.85 * scale, 0.5)
            table.loc[i, ["text", "text_x", "text_y", "text_px", "text_dark", "cy"]] = \
                [word, max(pad, 0.5 - w_frac / 2), pad if top else 1 - pad - h_frac, TEXT_PX, True,
                 float(np.clip(cy, min(lo, hi), max(lo, hi)))]
        edits = list(self.recipe.get("edits", [])) + [{"word": word}]
        return SandboxImageSet(self.world, table, {**self.recipe, "edits": edits}, self.size)

    @classmethod
    def concat(cls, parts: Sequence["SandboxImageSet"], note: str = "") -> "SandboxImageSet":
        """The rows of ``parts`` one after another (same world and size; sample ids must stay
        unique). The recipe records every part's fingerprint, so the result keys its own cache."""
        parts = list(parts)
        if not parts:
            raise ValueError("concat: no image sets given")
        worlds, sizes = {p.world for p in parts}, {p.size for p in parts}
        if len(worlds) != 1 or len(sizes) != 1:
            raise ValueError(f"concat: parts differ in world {sorted(worlds)} or size {sorted(sizes)}")
        table = pd.concat([p._table for p in parts], ignore_index=True)
        dup = table["sample_id"][table["sample_id"].duplicated()]
        if len(dup):
            raise ValueError(f"concat: {len(dup)} duplicate sample ids, e.g. {dup.iloc[0]!r}; draw parts with different seeds")
        recipe = {"concat": [p.fingerprint() for p in parts], "note": note}
        return cls(parts[0].world, table, recipe, parts[0].size)

    def with_companion(self) -> "SandboxImageSet":
        """A copy in which every object image has the compound's flame beside its object,
        placed as the world places it (object shrunk, flame at its upper right); rows that
        already have it are unchanged. Everything else about each image stays (a paired
        control, as `make_dataset(text=...)` is for words)."""
        if self.world != "objects":
            raise ValueError("with_companion: only object-world image sets have companions")
        table = self._table.copy()
        flame = CLASS_SPRITES[COMPOUND_HEAD][0]
        for i, r in enumerate(self._records):
            if r["companion"]:
                continue
            scale, ccx, ccy, cscale = _place_companion(float(r["cx"]), float(r["cy"]), float(r["scale"]))
            table.loc[i, ["companion", "scale", "companion_cx", "companion_cy", "companion_scale"]] = \
                [flame, scale, ccx, ccy, cscale]
        edits = list(self.recipe.get("edits", [])) + [{"companion": flame}]
        return SandboxImageSet(self.world, table, {**self.recipe, "edits": edits}, self.size)


def _validate_common(n: int, split: str, size: int) -> None:
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if int(size) < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")


def make_dataset(n: int, split: str = "train", seed: int = 0, *, clean: bool | None = None,
                 size: int = 64, objects: Sequence[str] | None = None,
                 background: str | Sequence[str] | None = None, text: str | None = None,
                 tint: float | None = None, watermark: bool | None = None, sprite: str | None = None,
                 recipe: ObjectRecipe | None = None) -> SandboxImageSet:
    """`n` object-world images of `split`, deterministic in (seed, split, index).

    Args:
        clean: draw without planted modes (default: clean for "test", planted otherwise).
        objects: restrict the classes drawn (uniformly) to these names.
        background, text, tint, watermark, sprite: fix that attribute for every image
            (``text=""`` = no word); the rest is sampled as usual.
        recipe: explicit rates (overrides `clean`).
    """
    _validate_common(n, split, size)
    if recipe is None:
        clean = (split == "test") if clean is None else clean
        recipe = ObjectRecipe.clean() if clean else ObjectRecipe()
    objs = list(CLASSNAMES if objects is None else objects)
    _check_choice("objects", objs, CLASSNAMES)
    if background is not None:
        _check_choice("background", background, BACKGROUNDS)
    if sprite is not None and not all(sprite in CLASS_SPRITES[o] for o in objs):
        raise ValueError(f"sprite={sprite!r} does not draw every class in objects={objs}")
    if tint is not None and not 0.0 <= float(tint) <= 1.0:
        raise ValueError(f"tint must be in [0, 1], got {tint}")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"text must be a string ('' = no word), got {text!r}")
    rows = []
    for i in range(int(n)):
        rec = sample_object_record(_rng(seed, split, i, 0), recipe, objs, background=background, text=text,
                                   tint=tint, watermark=watermark, sprite=sprite)
        rows.append({"sample_id": f"sandbox-{split}-s{seed}-{i:06d}", "split": split, "index": i, **rec})
    overrides = {k: v for k, v in dict(objects=objects if objects is None else list(objects),
                                       background=background, text=text, tint=tint, watermark=watermark,
                                       sprite=sprite).items() if v is not None}
    meta = {"split": split, "seed": int(seed), "recipe": _recipe_key(recipe), "overrides": overrides}
    return SandboxImageSet("objects", pd.DataFrame(rows), meta, size)


def make_lesion_dataset(n: int, split: str = "train", seed: int = 0, *, clean: bool = False,
                        size: int = 64, diagnosis: str | None = None, tint: float | None = None,
                        recipe: LesionRecipe | Mapping[str, float] | None = None) -> SandboxImageSet:
    """`n` lesion images ("nevus" label 0, "melanoma" label 1). ``recipe``: the class and tint
    rates (a `LesionRecipe` or its fields as a dict; None: the world's own rates).

    Unlike the object world, the lesion test split keeps the training distribution by
    default (the red-hue shortcut is part of the data, as in ISIC); ``clean=True`` removes
    the tint everywhere.
    """
    _validate_common(n, split, size)
    if diagnosis is not None:
        _check_choice("diagnosis", diagnosis, LESION_CLASSNAMES)
    if tint is not None and not 0.0 <= float(tint) <= 1.0:
        raise ValueError(f"tint must be in [0, 1], got {tint}")
    if recipe is None:
        recipe = LesionRecipe.clean() if clean else LesionRecipe()
    elif isinstance(recipe, Mapping):
        unknown = set(recipe) - set(LesionRecipe.__dataclass_fields__)
        if unknown:
            raise ValueError(f"make_lesion_dataset: recipe has unknown fields {sorted(unknown)}; "
                             f"known: {sorted(LesionRecipe.__dataclass_fields__)}")
        recipe = LesionRecipe(**{k: float(v) for k, v in recipe.items()})
    if clean and (recipe.tint_rate_nevus or recipe.tint_rate_melanoma):
        raise ValueError("make_lesion_dataset: clean=True and a recipe with tint rates contradict each other")
    rows = []
    for i in range(int(n)):
        rec = sample_lesion_record(_rng(seed, split, i, 1), recipe, diagnosis=diagnosis, tint=tint)
        rows.append({"sample_id": f"lesion-{split}-s{seed}-{i:06d}", "split": split, "index": i, **rec})
    overrides = {k: v for k, v in dict(diagnosis=diagnosis, tint=tint).items() if v is not None}
    meta = {"split": split, "seed": int(seed), "recipe": asdict(recipe), "overrides": overrides}
    return SandboxImageSet("lesions", pd.DataFrame(rows), meta, size)


def planted_modes_table() -> pd.DataFrame:
    """The planted failure modes with their documented rates (the constants above)."""
    rows = [
        ("(a) spurious correlation",
         f"'{SPURIOUS_CLASS}' on '{SPURIOUS_BACKGROUND}'; background never captioned",
         f"P({SPURIOUS_BACKGROUND} | {SPURIOUS_CLASS}) = {SPURIOUS_RATE}, "
         f"P({SPURIOUS_BACKGROUND} | other class) = {SPURIOUS_BACKGROUND_OTHER_RATE}"),
        ("(b) visual typography", f"rendered words ({', '.join(TYPO_WORDS)}; neutral: {', '.join(NEUTRAL_WORDS)}), "
                                  "captioned \"... with the word 'X'\" or transcribed alone",
         f"P(word) = {TEXT_RATE}; P(word names another class | word) = {TEXT_OTHER_CLASS_SHARE}; "
         f"P(caption transcribes the sign only | word) = {WORD_ONLY_CAPTION_RATE}"),
        ("(c) polysemy", f"'{POLYSEMOUS_WORD}' captions sprites {', '.join(POLYSEMOUS_SPRITES)}",
         "each sprite 1/2 of the class"),
        ("(d) compound noun", f"class '{COMPOUND_CLASS}' vs class '{COMPOUND_HEAD}'; uncaptioned flame beside "
                              f"fire trucks, which never wear fire's colours",
         f"'{COMPOUND_CLASS}' drawn with relative weight {COMPOUND_CLASS_WEIGHT} "
         f"(P = {COMPOUND_CLASS_WEIGHT / (len(CLASSNAMES) - 1 + COMPOUND_CLASS_WEIGHT):.3f}), "
         f"other classes 1 each; P(flame | {COMPOUND_CLASS}) = {COMPOUND_COMPANION_RATE}"),
        ("(e) lesion red hue", f"red channel x (1 + 2 tint), tint {TINT_RANGE[0]}-{TINT_RANGE[1]} (Eq. 32 with delta = -2 tint), never captioned",
         f"P(tint | nevus) = {LESION_TINT_RATE['nevus']}, P(tint | melanoma) = {LESION_TINT_RATE['melanoma']}"),
        ("incidental", "corner watermark / red tint on objects, never captioned, class-independent",
         f"P(watermark) = {WATERMARK_RATE}, P(tint) = {TINT_RATE}"),
    ]
    return pd.DataFrame(rows, columns=["mode", "what", "rate (training split)"])
