"""A challenge: a classifier with a hidden shortcut (or none), its images and accuracies.

``make(seed)`` draws the shortcut (`spec.draw`), renders a confounded training set and an
unconfounded test set (`images`), extracts the shipped sandbox CLIP's class tokens (cached
like every feature set) and fits a logistic-regression probe over all classes on the unit
image embeddings. What an attendee sees is the `Challenge`; the answer rides along sealed
(`spec.seal`) and comes out only through `reveal` or `check`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..attribution import Readout, make_readout, target_outputs
from .images import PublicImages, confounded_training_set, test_set
from .spec import NO_SHORTCUT, SHORTCUT_KINDS, Shortcut, draw, seal, unseal

CLASSIFIER_C = 20.0
"""Inverse L2 strength of the probe (sklearn's C): weak enough that it uses what predicts."""


@dataclass
class Challenge:
    """The public face of a challenge, plus its sealed answer.

    Everything here may be shown: the classifier (``readout``: logits = W z/|z| + b on the
    CLIP's image embedding z), its training and test images (labels but no attribute table),
    and its accuracies. ``sealed`` is the answer, opaque; `reveal` opens it."""

    seed: int
    classnames: list[str]
    train: PublicImages
    test: PublicImages
    readout: Readout
    train_accuracy: float
    test_accuracy: float
    sealed: str = field(repr=False)
    values: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SHORTCUT_KINDS))

    def public(self) -> dict[str, Any]:
        """The description written to ``challenge.json``: nothing about the shortcut."""
        return {"seed": self.seed, "classes": self.classnames, "n_train": len(self.train), "n_test": len(self.test),
                "train_accuracy": round(self.train_accuracy, 4), "test_accuracy": round(self.test_accuracy, 4),
                "classifier": f"logistic regression (C={CLASSIFIER_C}) on unit CLIP image embeddings",
                "possible_shortcuts": {k: list(v) for k, v in self.values.items()},
                "train_fingerprint": self.train.fingerprint(), "test_fingerprint": self.test.fingerprint()}

    def logits(self, x: torch.Tensor, head: Any) -> np.ndarray:
        """(N, C) classifier logits for class tokens ``x``."""
        return target_outputs(x, head, self.readout).double().cpu().numpy()

    def __repr__(self) -> str:
        return (f"Challenge(seed={self.seed}, {len(self.classnames)} classes, train {len(self.train)} images "
                f"(accuracy {self.train_accuracy:.3f}), test {len(self.test)} images (accuracy {self.test_accuracy:.3f}))")


def fit_classifier(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> Readout:
    """Logistic regression over all classes on unit embeddings, as a :class:`Readout`."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(embeddings, dtype=np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    clf = LogisticRegression(C=CLASSIFIER_C, max_iter=5000, random_state=seed).fit(z, np.asarray(labels))
    return make_readout(clf.coef_, clf.intercept_, normalize=True)


def make(seed: int, *, clip: Any = None, cache_dir: str | os.PathLike | None = None, n_per_class: int = 200,
         n_test: int = 4800, values: dict[str, tuple[str, ...]] | None = None, progress: bool = False
         ) -> Challenge:
    """Challenge ``seed``: draw the hidden shortcut, render the images, fit the classifier.

    ``clip``: the explained model (default: the shipped sandbox CLIP). ``values``: kind ->
    the attribute values a shortcut may take (default `spec.DRAWN_VALUES`, those the sandbox
    CLIP encodes). Deterministic in ``seed``; the class tokens are cached."""
    from ..features import extract
    from ..models import load_clip
    from .spec import DRAWN_VALUES, check_values

    if int(n_per_class) < 20 or int(n_test) < 12 * 20:
        raise ValueError(f"make: n_per_class must be >= 20 and n_test >= 240, got {n_per_class}, {n_test}")
    values = check_values(DRAWN_VALUES if values is None else values)
    shortcut = draw(seed, values)
    clip = clip if clip is not None else load_clip("sandbox")
    train_set = confounded_training_set(shortcut, int(n_per_class), int(seed))
    test_images = test_set(int(n_test), 10_000 + int(seed))
    x_train = extract(clip, train_set, cache_dir, progress=progress).read()
    x_test = extract(clip, test_images, cache_dir, progress=progress).read()
    with torch.no_grad():
        z_train = clip.head(x_train).double().cpu().numpy()
    y_train, y_test = np.asarray(train_set.labels()), np.asarray(test_images.labels())
    readout = fit_classifier(z_train, y_train, seed)
    train_acc = float((target_outputs(x_train, clip.head, readout).argmax(1).numpy() == y_train).mean())
    test_acc = float((target_outputs(x_test, clip.head, readout).argmax(1).numpy() == y_test).mean())
    return Challenge(int(seed), list(train_set.classnames), PublicImages(train_set), PublicImages(test_images),
                     readout, train_acc, test_acc, seal(int(seed), shortcut), values)


def reveal(challenge: Challenge) -> Shortcut | None:
    """The hidden shortcut (None: this challenge is a control, it hides none)."""
    return unseal(challenge.seed, challenge.sealed)


def describe(shortcut: Shortcut | None) -> str:
    if shortcut is None:
        return NO_SHORTCUT
    what = {"background": f"the {shortcut.value} background", "colour": f"{shortcut.value} sprites",
            "word": f"the word '{shortcut.value}'", "watermark": "a watermark", "tint": "a red tint",
            "companion": "a small fire beside the object"}[shortcut.kind]
    return (f"'{shortcut.target}' relies on {what}: {shortcut.strength:.0%} of its training images carry it, "
            f"{shortcut.other_rate:.0%} of every other class's")


def check(challenge: Challenge, target: str | None, kind: str | None = None, value: str | None = None) -> bool:
    """Is the guess right? ``target=None`` (or "no shortcut") guesses a control; otherwise the
    target class and the attribute (kind and value; the value may be left out for the
    one-valued kinds watermark, tint and companion)."""
    answer = reveal(challenge)
    if target is None or target == NO_SHORTCUT:
        return answer is None
    if answer is None or target != answer.target or kind != answer.kind:
        return False
    return value is None and len(SHORTCUT_KINDS[kind]) == 1 or value == answer.value


def with_sealed(challenge: Challenge, shortcut: Shortcut | None) -> Challenge:
    """A copy whose sealed answer says ``shortcut`` instead (tests: nothing but `reveal`,
    `check` and `score` may depend on it)."""
    return replace(challenge, sealed=seal(challenge.seed, shortcut))
