"""Shared fixtures: the real ImageNet sample beside the checkout, a tiny open_clip ViT."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import tiny_clip  # noqa: E402

IMAGENET_SAMPLE = REPO.parent / "shared" / "imagenet-sample" / "val"


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    if not IMAGENET_SAMPLE.is_dir():
        pytest.fail(f"The real-photo sample is expected at ../shared/imagenet-sample/val (looked in {IMAGENET_SAMPLE})")
    return IMAGENET_SAMPLE


@pytest.fixture(scope="session")
def clip_tiny():
    return tiny_clip()
