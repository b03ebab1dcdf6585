"""Shared fixtures: the real ImageNet sample beside the checkout, a tiny open_clip ViT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import tiny_clip  # noqa: E402

IMAGENET_SAMPLE = REPO.parent / "shared" / "imagenet-sample" / "val"

# Notebooks executed by the tests (papermill) render widgets statically, as batch runs do.
os.environ.setdefault("CLIPATTR_STATIC", "1")


def in_ci() -> bool:
    """True when the environment variable CI says so (``.ci/run`` exports CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_data(path: Path, what: str) -> Path:
    """``path`` when it is there; otherwise skip the test, or fail it when running in CI.

    Data under ``../shared`` sits beside the CI checkout but not beside a user's fresh clone,
    so a user sees a skip with the reason while CI cannot go green without the data.
    """
    if path.exists():
        return path
    message = f"{what} is expected at {path} (../shared beside the checkout) and is missing"
    if in_ci():
        pytest.fail(f"{message}; CI={os.environ.get('CI')} requires it")
    pytest.skip(f"{message}; skipped outside CI (set CI=true to make this a failure)")


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    return require_shared_data(IMAGENET_SAMPLE, "The real-photo sample ../shared/imagenet-sample/val")


@pytest.fixture(scope="session")
def clip_tiny():
    return tiny_clip()
