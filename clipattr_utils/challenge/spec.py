"""What a challenge hides: one shortcut (target class, attribute kind and value, strength)
drawn from the seed alone, or none (a control), sealed so that printing a challenge never
shows it.

The attribute kinds are those the sandbox renderer draws independently of the object
(`SHORTCUT_KINDS`); each comes with the counterfactual edit that adds it to any image
(`challenge.images.PublicImages.edit`), so a detective can test a suspect without ever
reading an attribute table.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..sandbox.render import BACKGROUNDS, COLOURS
from ..sandbox.world import CLASSNAMES, COMPOUND_HEAD, NEUTRAL_WORDS

SHORTCUT_KINDS: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "colour": tuple(COLOURS),
    "word": tuple(NEUTRAL_WORDS),
    "watermark": ("present",),
    "tint": ("present",),
    "companion": ("fire",),
}
"""Attribute kind -> the values a hidden shortcut can take (every value renders on any object)."""

ENCODED_AUROC = 0.9
"""A value is drawn only when a linear probe reads it off the sandbox CLIP's image embedding
with held-out AUROC >= this (`encoding.encodability`): a shortcut the model cannot see
cannot be learned, nor found."""

DRAWN_VALUES: dict[str, tuple[str, ...]] = {
    "background": ("grass", "water", "brick"),
    "colour": tuple(COLOURS),
    "word": tuple(NEUTRAL_WORDS),
    "tint": ("present",),
    "companion": ("fire",),
}
"""The values `draw` picks from: `SHORTCUT_KINDS` less what the shipped sandbox CLIP does not
encode (measured by `encoding.encodability`, recorded in benchmarks/RESULTS.md, rechecked by
tests/test_challenge.py): the watermark (AUROC 0.48) and five of eight backgrounds (plain
0.70, stripes 0.66, checker 0.70, noise 0.63, sand 0.85)."""

CONTROL_SHARE = 0.2
"""One challenge in five (decided by the seed) hides no shortcut at all."""

STRENGTH_RANGE = (0.8, 0.98)
"""P(hidden value | target class) in the confounded training set."""

OTHER_RATE_RANGE = (0.01, 0.05)
"""P(hidden value | any other class) in the confounded training set."""

NO_SHORTCUT = "no shortcut"


@dataclass(frozen=True)
class Shortcut:
    """A hidden shortcut: the classifier's training images of ``target`` carry ``value`` (of
    attribute ``kind``) at rate ``strength``, every other class's at ``other_rate``."""

    target: str
    kind: str
    value: str
    strength: float
    other_rate: float

    def __post_init__(self) -> None:
        if self.target not in CLASSNAMES:
            raise ValueError(f"Shortcut.target must be one of {list(CLASSNAMES)}, got {self.target!r}")
        if self.kind not in SHORTCUT_KINDS or self.value not in SHORTCUT_KINDS[self.kind]:
            raise ValueError(f"Shortcut: {self.kind!r}={self.value!r} is not a shortcut the world can draw; "
                             f"kinds and values: {SHORTCUT_KINDS}")
        if self.kind == "companion" and self.target == COMPOUND_HEAD:
            raise ValueError(f"Shortcut: the flame beside '{COMPOUND_HEAD}' is the class itself, not a shortcut")
        if not (0.0 <= self.other_rate < self.strength <= 1.0):
            raise ValueError(f"Shortcut: need 0 <= other_rate < strength <= 1, got {self.other_rate}, {self.strength}")


def check_values(values: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """``values`` (kind -> values) if every one is a shortcut the world can draw, else an error."""
    bad = {k: v for k, v in values.items() if k not in SHORTCUT_KINDS or not v or set(v) - set(SHORTCUT_KINDS[k])}
    if bad or not values:
        raise ValueError(f"shortcut values {bad or values} are not all drawable; kinds and values: {SHORTCUT_KINDS}")
    return {k: tuple(v) for k, v in values.items()}


def draw(seed: int, values: dict[str, tuple[str, ...]] | None = None) -> Shortcut | None:
    """The hidden shortcut of challenge ``seed`` (None: a control), from the seed alone:
    control with probability `CONTROL_SHARE`, else a uniform kind, value, target class and
    strength. ``values``: kind -> values to draw from (default `DRAWN_VALUES`)."""
    values = check_values(DRAWN_VALUES if values is None else values)
    kinds = tuple(values)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5C0C]))
    if rng.random() < CONTROL_SHARE:
        return None
    kind = kinds[int(rng.integers(len(kinds)))]
    value = values[kind][int(rng.integers(len(values[kind])))]
    targets = [c for c in CLASSNAMES if not (kind == "companion" and c == COMPOUND_HEAD)]
    target = targets[int(rng.integers(len(targets)))]
    return Shortcut(target, kind, value, round(float(rng.uniform(*STRENGTH_RANGE)), 3),
                    round(float(rng.uniform(*OTHER_RATE_RANGE)), 3))


def _keystream(seed: int, n: int) -> bytes:
    out, block = b"", 0
    while len(out) < n:
        out += hashlib.sha256(f"clipattr-challenge:{seed}:{block}".encode()).digest()
        block += 1
    return out[:n]


def seal(seed: int, shortcut: Shortcut | None) -> str:
    """The answer as an opaque string (XOR with a seed-derived key, base64): printing a
    challenge shows this, never the class or attribute."""
    raw = json.dumps(None if shortcut is None else asdict(shortcut), sort_keys=True).encode()
    return base64.b64encode(bytes(a ^ b for a, b in zip(raw, _keystream(seed, len(raw))))).decode()


def unseal(seed: int, sealed: str) -> Shortcut | None:
    raw = base64.b64decode(sealed.encode())
    data: Any = json.loads(bytes(a ^ b for a, b in zip(raw, _keystream(seed, len(raw)))).decode())
    return None if data is None else Shortcut(**data)
