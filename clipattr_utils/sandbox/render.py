"""Pixels of the sandbox world: sprites, backgrounds, rendered words, watermark, red-hue tint.

Everything here is a pure function of an attribute record (a mapping with the fields listed
in `world.OBJECT_FIELDS` / `world.LESION_FIELDS`) and the output size, using numpy and
Pillow only; randomness inside an image (texture noise, lesion outline) comes from the
record's ``render_seed``, so a record re-renders to identical pixels anywhere.

Sprites are drawn on a 2x canvas and box-downsampled, which anti-aliases edges without
touching the (2x nearest-upscaled) background: a uniform 2x2 block averages to itself.

Bump `RENDERER_VERSION` whenever any pixel a record produces changes; it is part of every
image set's fingerprint, so feature caches made with older pixels are not reused.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# 2: fire trucks never in fire colours; the lesion red hue scales the red channel (Eq. 32).
RENDERER_VERSION = "2"

# Object colours (sprite fill); names are what captions say.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 205, 30),
    "green": (40, 160, 55),
    "blue": (35, 80, 215),
    "purple": (135, 55, 185),
    "white": (242, 242, 242),
    "black": (28, 28, 28),
}

BACKGROUNDS: tuple[str, ...] = ("plain", "stripes", "checker", "noise", "grass", "water", "sand", "brick")

# The pink-red colour that the object world's incidental tint blends towards.
TINT_RGB = (235, 65, 95)

# Skin tones for lesion backgrounds, light to dark.
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "very light": (246, 222, 204),
    "light": (232, 196, 170),
    "medium": (214, 170, 138),
    "tan": (190, 142, 106),
    "brown": (150, 104, 74),
}

Point = tuple[float, float]


# --------------------------------------------------------------------------- geometry helpers

def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28,
             a0: float = 0.0, a1: float | None = None) -> list[Point]:
    """A closed ellipse (a1 None) or the arc from angle a0 to a1, as n points."""
    if a1 is None:
        angles = [a0 + 2 * math.pi * k / n for k in range(n)]
    else:
        angles = list(np.linspace(a0, a1, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[Point]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _star(r_out: float, r_in: float, points: int = 5) -> list[Point]:
    out = []
    for k in range(2 * points):
        r = r_out if k % 2 == 0 else r_in
        a = -math.pi / 2 + k * math.pi / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _club() -> list[Point]:
    # A baseball bat along the x axis: thin handle (left) widening into the barrel (right).
    top, bottom = [], []
    for k in range(13):
        x = -0.95 + 1.9 * k / 12
        half = 0.08 + 0.16 * max(0.0, (x + 0.3) / 1.25)
        top.append((x, -half))
        bottom.append((x, half))
    cap = _ellipse(0.95, 0.0, 0.06, 0.24, n=9, a0=-math.pi / 2, a1=math.pi / 2)
    return top + cap + bottom[::-1]


# Each sprite: a list of (polygon in [-1, 1]^2, y down; fill role). Roles: "main" (the
# record's colour), "dark"/"light" (shades of it), or a fixed RGB tuple.
Part = tuple[list[Point], object]

SPRITES: dict[str, list[Part]] = {
    "ball": [(_ellipse(0, 0, 0.85, 0.85), "main"), (_ellipse(-0.3, -0.3, 0.2, 0.2, n=12), "light")],
    "house": [(_rect(-0.7, -0.1, 0.7, 0.9), "main"),
              ([(-0.95, -0.1), (0.0, -0.9), (0.95, -0.1)], "dark"),
              (_rect(-0.18, 0.35, 0.18, 0.9), "light"),
              (_rect(0.3, 0.1, 0.55, 0.35), "light")],
    "tree": [(_rect(-0.14, 0.15, 0.14, 0.95), (110, 70, 35)),
             (_ellipse(0, -0.3, 0.7, 0.62), "main"),
             (_ellipse(-0.25, -0.45, 0.25, 0.2, n=12), "light")],
    "car": [([(-0.95, 0.05), (0.95, 0.05), (0.95, 0.5), (-0.95, 0.5)], "main"),
            ([(-0.55, 0.05), (-0.35, -0.4), (0.35, -0.4), (0.6, 0.05)], "main"),
            ([(-0.4, 0.0), (-0.27, -0.3), (0.0, -0.3), (0.0, 0.0)], "light"),
            ([(0.08, 0.0), (0.08, -0.3), (0.3, -0.3), (0.45, 0.0)], "light"),
            (_ellipse(-0.55, 0.55, 0.24, 0.24, n=16), (20, 20, 20)),
            (_ellipse(0.55, 0.55, 0.24, 0.24, n=16), (20, 20, 20))],
    "boat": [([(-0.95, 0.3), (0.95, 0.3), (0.6, 0.8), (-0.6, 0.8)], "main"),
             (_rect(-0.05, -0.95, 0.05, 0.3), (90, 60, 30)),
             ([(0.1, -0.9), (0.1, 0.2), (0.8, 0.2)], (248, 248, 240)),
             ([(-0.1, -0.6), (-0.1, 0.2), (-0.6, 0.2)], (248, 248, 240))],
    "fish": [([(0.35, 0.0), (0.95, -0.5), (0.85, 0.0), (0.95, 0.5)], "dark"),
             (_ellipse(-0.15, 0.0, 0.65, 0.4), "main"),
             (_ellipse(-0.5, -0.1, 0.08, 0.08, n=10), (15, 15, 15)),
             ([(-0.1, -0.35), (0.15, -0.6), (0.25, -0.3)], "dark")],
    "star": [(_star(0.95, 0.4), "main")],
    "bat_animal": [([(-1.0, -0.4), (-0.6, -0.2), (-0.25, -0.3), (0.0, -0.1), (0.25, -0.3), (0.6, -0.2),
                     (1.0, -0.4), (0.85, 0.05), (0.62, -0.02), (0.48, 0.22), (0.26, 0.08), (0.0, 0.4),
                     (-0.26, 0.08), (-0.48, 0.22), (-0.62, -0.02), (-0.85, 0.05)], "main"),
                    (_ellipse(0.0, 0.0, 0.17, 0.3, n=14), "dark"),
                    ([(-0.15, -0.2), (-0.12, -0.45), (-0.02, -0.25)], "dark"),
                    ([(0.15, -0.2), (0.12, -0.45), (0.02, -0.25)], "dark")],
    "bat_club": [(_club(), "main"), (_ellipse(-0.97, 0.0, 0.06, 0.13, n=10), "dark")],
    "fire": [([(0.0, -0.95), (0.2, -0.45), (0.45, -0.7), (0.55, -0.1), (0.7, 0.3), (0.45, 0.8), (0.0, 0.95),
               (-0.45, 0.8), (-0.7, 0.3), (-0.55, -0.2), (-0.35, 0.0), (-0.3, -0.55)], "main"),
             ([(0.0, -0.3), (0.25, 0.15), (0.35, 0.5), (0.0, 0.8), (-0.35, 0.5), (-0.2, 0.1)], (250, 230, 90))],
    "fire_truck": [(_rect(-0.95, -0.2, 0.45, 0.5), "main"),
                   ([(0.45, -0.55), (0.8, -0.55), (0.97, -0.15), (0.97, 0.5), (0.45, 0.5)], "main"),
                   ([(0.55, -0.45), (0.78, -0.45), (0.9, -0.15), (0.55, -0.15)], (200, 225, 245)),
                   (_rect(-0.85, -0.42, 0.35, -0.36), (215, 215, 215)),
                   (_rect(-0.85, -0.28, 0.35, -0.22), (215, 215, 215))]
                  + [(_rect(x, -0.42, x + 0.06, -0.22), (215, 215, 215)) for x in (-0.8, -0.5, -0.2, 0.1)]
                  + [(_ellipse(x, 0.55, 0.2, 0.2, n=14), (20, 20, 20)) for x in (-0.65, -0.1, 0.65)],
    "cup": [(_ellipse(0.55, 0.05, 0.38, 0.38, n=20), "dark"),
            (_ellipse(0.55, 0.05, 0.2, 0.2, n=16), "cutout"),
            ([(-0.7, -0.6), (0.55, -0.6), (0.45, 0.8), (-0.6, 0.8)], "main"),
            (_ellipse(-0.075, -0.6, 0.625, 0.1, n=20), "light")],
    "flower": [(_rect(-0.05, 0.1, 0.05, 0.98), (40, 130, 40)),
               ([(0.0, 0.7), (0.45, 0.45), (0.05, 0.55)], (40, 130, 40))]
              + [(_ellipse(0.32 * math.cos(a), -0.3 + 0.32 * math.sin(a), 0.24, 0.24, n=14), "main")
                 for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]
              + [(_ellipse(0.0, -0.3, 0.17, 0.17, n=14), (250, 215, 40))],
}

# Which sprites draw which object class; more than one = a polysemous caption word.
CLASS_SPRITES: dict[str, tuple[str, ...]] = {
    "ball": ("ball",), "bat": ("bat_animal", "bat_club"), "boat": ("boat",), "car": ("car",),
    "cup": ("cup",), "fire": ("fire",), "fire truck": ("fire_truck",), "fish": ("fish",),
    "flower": ("flower",), "house": ("house",), "star": ("star",), "tree": ("tree",),
}


def _shade(rgb: Sequence[int], f: float) -> tuple[int, int, int]:
    if f < 1:
        return tuple(int(round(c * f)) for c in rgb)  # type: ignore[return-value]
    return tuple(int(round(c + (255 - c) * (f - 1))) for c in rgb)  # type: ignore[return-value]


def _outline(rgb: Sequence[int]) -> tuple[int, int, int]:
    # Dark outline for everything but black sprites, which get a light one: the sprite stays
    # visible on any background without the outline colour becoming a class cue.
    return (200, 200, 200) if sum(rgb) < 150 else _shade(rgb, 0.45)


# --------------------------------------------------------------------------- backgrounds

def _lowfreq_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a small random grid upscaled bicubically."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def render_background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255] for one of `BACKGROUNDS`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "plain":
        base = rng.uniform(120, 235, 3)
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "stripes":
        # Two close tones: a texture, not a second object competing with the sprite.
        c1 = rng.uniform(110, 225, 3)
        c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(25, 50), 60, 255)
        angle = rng.choice([0.0, 45.0, 90.0, 135.0]) * math.pi / 180
        period = rng.uniform(size / 10, size / 5)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        mask = (np.floor(phase) % 2 == 0)[..., None]
        img = np.where(mask, c1, c2)
    elif kind == "checker":
        c1 = rng.uniform(110, 225, 3)
        c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(25, 50), 60, 255)
        cell = rng.uniform(size / 10, size / 5)
        mask = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0)[..., None]
        img = np.where(mask, c1, c2)
    elif kind == "noise":
        base = rng.uniform(100, 200, 3)
        img = base + rng.normal(0, 22, (size, size, 3))
    elif kind == "grass":
        base = np.array([70, 140, 50]) * rng.uniform(0.8, 1.15)
        img = base * (0.75 + 0.5 * _lowfreq_noise(rng, size, 5))[..., None]
        # Blades: short near-vertical strokes, lighter or darker than the base.
        n = int(size * size / 14)
        x0, y0 = rng.integers(0, size, n), rng.integers(0, size, n)
        length = rng.integers(2, max(3, size // 10), n)
        tone = rng.uniform(0.6, 1.4, n)
        for x, y, l, t in zip(x0, y0, length, tone):
            img[max(0, y - l):y + 1, x] = base * t
    elif kind == "water":
        base = np.array([40, 110, 200]) * rng.uniform(0.8, 1.15)
        img = base * (0.8 + 0.35 * _lowfreq_noise(rng, size, 4))[..., None]
        # Wave crests: thin light sinusoidal lines.
        period = rng.uniform(size / 8, size / 5)
        amp = rng.uniform(1.0, size / 24)
        freq = rng.uniform(2.0, 4.0) * 2 * math.pi / size
        wave = np.sin(xx * freq + rng.uniform(0, 2 * math.pi)) * amp
        crest = np.abs(((yy + wave) % period) - period / 2) < 0.9
        img = np.where(crest[..., None], np.minimum(base * 1.7 + 40, 255), img)
    elif kind == "sand":
        base = np.array([225, 200, 150]) * rng.uniform(0.85, 1.05)
        img = base * (0.9 + 0.15 * _lowfreq_noise(rng, size, 6))[..., None]
        specks = rng.random((size, size)) < 0.08
        img = np.where(specks[..., None], img * 0.75, img)
    elif kind == "brick":
        brick = np.array([160, 70, 50]) * rng.uniform(0.85, 1.15)
        mortar = np.array([215, 210, 200]) * rng.uniform(0.9, 1.0)
        bh = rng.uniform(size / 9, size / 6)
        bw = 2 * bh
        row = np.floor(yy / bh)
        shift = (row % 2) * bw / 2
        joint = ((yy % bh) < 1.2) | (((xx + shift) % bw) < 1.2)
        img = np.where(joint[..., None], mortar, brick * (0.9 + 0.2 * _lowfreq_noise(rng, size, 8))[..., None])
    else:
        raise ValueError(f"render_background: unknown background {kind!r}; expected one of {BACKGROUNDS}")
    return np.clip(img, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- drawing

@lru_cache(maxsize=16)
def font(size_px: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font (no system fonts: pixels must not depend on the machine)."""
    f = ImageFont.load_default(size=size_px)
    if not isinstance(f, ImageFont.FreeTypeFont):
        raise RuntimeError("the sandbox renderer needs Pillow built with FreeType (ImageFont.load_default(size=...))")
    return f


def _transform(points: Sequence[Point], cx: float, cy: float, half: float, angle_deg: float) -> list[Point]:
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + half * (x * ca - y * sa), cy + half * (x * sa + y * ca)) for x, y in points]


def draw_sprite(canvas: Image.Image, sprite: str, rgb: Sequence[int], cx: float, cy: float,
                half: float, angle_deg: float, background: Image.Image | None = None,
                mask: Image.Image | None = None) -> None:
    """Draw `sprite` onto `canvas` (in place), centred at (cx, cy) px with half-size `half` px.

    The "cutout" role (the hole of a cup handle) is filled with the matching background
    pixels, so holes show the background and not a flat colour. ``mask`` (mode "L", the
    canvas's size), when given, gets the same polygons in 255 and the cutouts in 0: the
    pixels this sprite drew.
    """
    if sprite not in SPRITES:
        raise ValueError(f"draw_sprite: unknown sprite {sprite!r}; expected one of {sorted(SPRITES)}")
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(half / 14)))
    line = _outline(rgb)
    for points, role in SPRITES[sprite]:
        poly = _transform(points, cx, cy, half, angle_deg)
        if role == "cutout":
            if background is None:
                raise ValueError("draw_sprite: a sprite with a cutout needs the background image")
            hole = Image.new("L", canvas.size, 0)
            ImageDraw.Draw(hole).polygon(poly, fill=255)
            canvas.paste(background, (0, 0), hole)
            draw.line(poly + poly[:1], fill=line, width=width)
            if mask is not None:
                ImageDraw.Draw(mask).polygon(poly, fill=0)
                ImageDraw.Draw(mask).line(poly + poly[:1], fill=255, width=width)
            continue
        if role == "main":
            fill = tuple(int(c) for c in rgb)
        elif role == "dark":
            fill = _shade(rgb, 0.7)
        elif role == "light":
            fill = _shade(rgb, 1.45)
        else:
            fill = tuple(role)  # type: ignore[arg-type]
        draw.polygon(poly, fill=fill, outline=line, width=width)
        if mask is not None:
            ImageDraw.Draw(mask).polygon(poly, fill=255, outline=255, width=width)


def draw_word(canvas: Image.Image, word: str, x: float, y: float, px: int, dark: bool,
              mask: Image.Image | None = None) -> None:
    """Draw `word` as a sign: a light (or dark) box with dark (or light) lettering, top-left
    at (x, y), font size `px`. The box keeps the word legible on any background. ``mask``
    (mode "L"), when given, gets the sign's box in 255."""
    fill, box = ((10, 10, 10), (245, 245, 240)) if dark else ((250, 250, 250), (25, 25, 30))
    w, h = word_size(word, px)
    pad = max(1, px // 8)
    ImageDraw.Draw(canvas).rectangle([x - pad, y - pad, x + w + pad, y + h + pad], fill=box)
    if mask is not None:
        ImageDraw.Draw(mask).rectangle([x - pad, y - pad, x + w + pad, y + h + pad], fill=255)
    ImageDraw.Draw(canvas).text((x, y), word, font=font(px), fill=fill)


def word_size(word: str, px: int) -> tuple[int, int]:
    """(width, height) in pixels of the lettering of `word` at font size `px` (the box of
    `draw_word` adds px // 8 on every side)."""
    x0, y0, x1, y1 = font(px).getbbox(word)
    return int(x1), int(y1)


WATERMARK_TEXT = "(c) wm"


def draw_watermark(img: Image.Image, corner: str, px: int, mask: np.ndarray | None = None) -> Image.Image:
    """A translucent white corner stamp, like stock-photo watermarks. ``mask`` (float32, the
    image's (H, W)), when given, gets the stamp's opacity in [0, 1] written into it."""
    if corner not in ("tl", "tr", "bl", "br"):
        raise ValueError(f"draw_watermark: corner must be tl/tr/bl/br, got {corner!r}")
    w, h = word_size(WATERMARK_TEXT, px)
    margin = max(1, img.width // 32)
    x = margin if corner[1] == "l" else img.width - w - margin
    y = margin if corner[0] == "t" else img.height - h - margin
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((x, y), WATERMARK_TEXT, font=font(px), fill=(255, 255, 255, 150),
                               stroke_width=1, stroke_fill=(60, 60, 60, 110))
    if mask is not None:
        mask[...] = np.maximum(mask, np.asarray(layer)[..., 3] > 0)
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def red_tint(img: Image.Image | np.ndarray, strength: float) -> Image.Image:
    """The object world's incidental red/pink hue: blend every pixel towards `TINT_RGB` by
    `strength` in [0, 1]. (The lesion world's planted hue is `lesion_red_hue`.)"""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"red_tint: strength must be in [0, 1], got {strength}")
    arr = np.asarray(img, dtype=np.float32)
    out = (1.0 - strength) * arr + strength * np.asarray(TINT_RGB, dtype=np.float32)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def scale_red(pixels: np.ndarray, factor: float) -> np.ndarray:
    """uint8 (H, W, 3) pixels with the red channel times ``factor``, clipped to [0, 255] and
    rounded: the paper's Eq. 32 with ``factor = 1 - delta`` (`melanoma.hue.red_hue`)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"scale_red: expected uint8 (H, W, 3) pixels, got {arr.dtype} {arr.shape}")
    out = arr.copy()
    # factor: a number, or an (H, W) array for a per-pixel scale (`lesion_red_hue(where=)`)
    out[..., 0] = np.round(np.clip(arr[..., 0].astype(np.float64) / 255.0 * np.asarray(factor, np.float64),
                                   0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def lesion_red_hue(img: Image.Image, strength: float, where: np.ndarray | None = None) -> Image.Image:
    """The lesion world's planted red hue: the red channel times ``1 + 2 * strength`` (Eq. 32
    with delta = -2 * strength; the world's strengths 0.25-0.45 give x1.5-x1.9, the paper's
    "more red" test condition is x2). Planted as the same operation the paper tests with, so
    Eq. 33's latent direction and Eq. 32's image edit move the class token the same way (a
    blend towards pink, renderer version 1, moved it at cosine 0.56 to Eq. 32's shift).

    ``where`` (an (H, W) weight in [0, 1], e.g. a `render_lesion` mask) confines the hue: each
    pixel's red is scaled by ``1 + 2 * strength * where``. The world itself always tints the whole
    image; a local hue is a counterfactual, for asking where a latent reads the hue."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"lesion_red_hue: strength must be in [0, 1], got {strength}")
    pixels = np.asarray(img.convert("RGB"))
    if where is None:
        return Image.fromarray(scale_red(pixels, 1.0 + 2.0 * float(strength)))
    where = np.asarray(where, dtype=np.float64)
    if where.shape != pixels.shape[:2] or not np.all((where >= 0) & (where <= 1)):
        raise ValueError(f"lesion_red_hue: where must be an (H, W) = {pixels.shape[:2]} weight in [0, 1], "
                         f"got shape {where.shape}")
    return Image.fromarray(scale_red(pixels, 1.0 + 2.0 * float(strength) * where))


def _finish(big: Image.Image, size: int) -> Image.Image:
    return big.resize((size, size), Image.BOX)


OBJECT_MASKS = ("object", "companion", "word", "watermark", "background", "tint")
"""What `render_object_masks` returns a mask of: the object's sprite, the flame beside it, the
word's sign, the watermark stamp, the background (everything the sprite, flame and sign leave
visible) and the tint (the whole image when tinted: the object world's tint is global)."""


def _coverage(mask: Image.Image, size: int) -> np.ndarray:
    """A 0/255 mask at twice the size -> (size, size) float32 share of each pixel covered (the
    same 2x2 box average the image gets, without its rounding to 8 bits)."""
    arr = np.asarray(mask, dtype=np.float32) / 255.0
    f = arr.shape[0] // size
    return arr.reshape(size, f, size, f).mean(axis=(1, 3))


def render_object(rec: Mapping, size: int = 64, masks: dict[str, np.ndarray] | None = None) -> Image.Image:
    """Render one object-world record (see `world.OBJECT_FIELDS`) as a (size, size) RGB image.

    ``masks``, when given (a dict), is filled with one float32 (size, size) array in [0, 1] per
    name of `OBJECT_MASKS`: the share of each pixel that element covers, drawn in the same
    pass as the pixels (so a mask is exactly where the renderer drew)."""
    rng = np.random.default_rng(int(rec["render_seed"]))
    bg = render_background(str(rec["background"]), size, rng)
    big_size = 2 * size
    bg_img = Image.fromarray(np.round(bg).astype(np.uint8)).resize((big_size, big_size), Image.NEAREST)
    canvas = bg_img.copy()
    want = masks is not None
    layer = {name: Image.new("L", canvas.size, 0) for name in ("object", "companion", "word")} if want else {}
    draw_sprite(canvas, str(rec["sprite"]), COLOURS[str(rec["colour"])],
                float(rec["cx"]) * big_size, float(rec["cy"]) * big_size,
                float(rec["scale"]) * big_size, float(rec["angle"]), background=bg_img, mask=layer.get("object"))
    companion = rec.get("companion") or ""
    if companion:
        draw_sprite(canvas, str(companion), COLOURS["orange"], float(rec["companion_cx"]) * big_size,
                    float(rec["companion_cy"]) * big_size, float(rec["companion_scale"]) * big_size, 0.0,
                    background=bg_img, mask=layer.get("companion"))
        if want:   # the flame is drawn over the object
            layer["object"].paste(0, (0, 0), layer["companion"])
    word = rec.get("text") or ""
    if word:
        px = int(round(float(rec["text_px"]) * big_size))
        draw_word(canvas, str(word), float(rec["text_x"]) * big_size, float(rec["text_y"]) * big_size,
                  px, bool(rec["text_dark"]), mask=layer.get("word"))
        if want:   # the sign is drawn over both
            for name in ("object", "companion"):
                layer[name].paste(0, (0, 0), layer["word"])
    img = _finish(canvas, size)
    stamp = np.zeros((size, size), np.float32)
    if bool(rec.get("watermark", False)):
        img = draw_watermark(img, str(rec["watermark_corner"]), max(6, int(round(size * 0.12))),
                             mask=stamp if want else None)
    tint = float(rec.get("tint", 0.0) or 0.0)
    if tint > 0:
        img = red_tint(img, tint)
    if want:
        cover = {name: _coverage(m, size) for name, m in layer.items()}
        masks.update(cover, watermark=stamp,
                     background=np.clip(1.0 - cover["object"] - cover["companion"] - cover["word"], 0.0, 1.0),
                     tint=np.full((size, size), float(tint > 0), np.float32))
    return img


# --------------------------------------------------------------------------- lesions

def _blob(cx: float, cy: float, radius: float, irregularity: float, rng: np.random.Generator,
          n: int = 48, harmonics: int = 6, squash: float = 1.0) -> list[Point]:
    """A closed outline r(theta) = R (1 + sum_k a_k sin(k theta + phi_k)); `irregularity`
    scales the higher harmonics (border irregularity, the "B" of the ABCD rule)."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, harmonics + 2):
        r += irregularity * rng.uniform(0.3, 1.0) / (k ** 0.7) * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
    r = np.clip(r, 0.35, 1.8) * radius
    rot = rng.uniform(0, math.pi)
    xs, ys = r * np.cos(theta), r * np.sin(theta) * squash
    return [(cx + x * math.cos(rot) - y * math.sin(rot), cy + x * math.sin(rot) + y * math.cos(rot))
            for x, y in zip(xs, ys)]


LESION_PALETTE = {
    "tan": (176, 120, 80),
    "brown": (120, 75, 45),
    "dark brown": (75, 42, 25),
    "black": (35, 25, 22),
    "blue-gray": (95, 100, 125),
}


LESION_MASKS = ("lesion", "skin")
"""What `render_lesion` fills ``masks`` with: the lesion (its halo and pigment patches) and the skin
around it. The planted red hue is applied to the whole image, so its region is both."""


def render_lesion(rec: Mapping, size: int = 64, masks: dict[str, np.ndarray] | None = None) -> Image.Image:
    """Render one lesion-world record (see `world.LESION_FIELDS`); ``masks`` as for
    `render_object`, with the names of `LESION_MASKS`."""
    rng = np.random.default_rng(int(rec["render_seed"]))
    big = 2 * size
    skin = np.asarray(SKIN_TONES[str(rec["skin"])], dtype=np.float32)
    shade = 0.92 + 0.16 * _lowfreq_noise(rng, big, 5)
    bg = skin * shade[..., None] + rng.normal(0, 3.0, (big, big, 3))
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    cx, cy = float(rec["cx"]) * big, float(rec["cy"]) * big
    radius = float(rec["radius"]) * big
    irr = float(rec["irregularity"])
    base = np.asarray(LESION_PALETTE[str(rec["base_colour"])], dtype=np.float32)
    # Halo: a slightly lighter, larger outline so the border fades like real pigment.
    halo = _blob(cx, cy, radius * 1.12, irr, rng, squash=float(rec["squash"]))
    pigment = [halo]   # every polygon of pigment: the lesion's mask
    draw.polygon(halo, fill=tuple(int(c) for c in (0.55 * base + 0.45 * skin)))
    body = _blob(cx, cy, radius, irr, rng, squash=float(rec["squash"]))
    draw.polygon(body, fill=tuple(int(c) for c in base))
    pigment.append(body)
    # Colour variegation: extra patches of other pigment colours, off-centre (asymmetry).
    for name in [c for c in str(rec["patch_colours"]).split("+") if c]:
        off_r = radius * rng.uniform(0.1, 0.5)
        a = rng.uniform(0, 2 * math.pi)
        patch = _blob(cx + off_r * math.cos(a), cy + off_r * math.sin(a), radius * rng.uniform(0.25, 0.5),
                      irr + 0.15, rng)
        draw.polygon(patch, fill=LESION_PALETTE[name])
        pigment.append(patch)
    # Hairs: thin dark curves across the field.
    for _ in range(int(rec["hairs"])):
        x0, y0 = rng.uniform(0, big, 2)
        a = rng.uniform(0, math.pi)
        length = rng.uniform(0.3, 0.8) * big
        bend = rng.uniform(-0.3, 0.3)
        pts = [(x0 + t * length * math.cos(a + bend * t), y0 + t * length * math.sin(a + bend * t))
               for t in np.linspace(0, 1, 8)]
        draw.line(pts, fill=(45, 30, 20), width=2)
    img = _finish(canvas, size)
    tint = float(rec.get("tint", 0.0) or 0.0)
    if tint > 0:
        img = lesion_red_hue(img, tint)
    if masks is not None:
        lesion = Image.new("L", canvas.size, 0)
        for poly in pigment:
            ImageDraw.Draw(lesion).polygon(poly, fill=255)
        masks["lesion"] = _coverage(lesion, size)
        masks["skin"] = 1.0 - masks["lesion"]
    return img
