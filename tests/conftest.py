"""Shared fixtures: the real ImageNet sample beside the checkout, a tiny open_clip ViT."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (make test runs two workers on a 2-core machine) each worker, and every
# notebook kernel or subprocess it starts, computes on one thread: two processes with two
# threads each would fight over the cores and run slower than one. Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny import tiny_clip  # noqa: E402

IMAGENET_SAMPLE = REPO.parent / "shared" / "imagenet-sample" / "val"

# No CLIPATTR_STATIC here: every notebook the tests run through papermill must find out by
# itself that it runs without a frontend (clipattr_utils.widgets.batch_client), as a user's
# plain `papermill` run does.


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


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for every test that runs a notebook, shared by the pytest-xdist workers.

    Notebooks run with the same small parameters by several tests (02 by its own test, the
    plain-papermill test and the browser; 06 by its own test, the browser and the series)
    extract the same image sets; the cache is keyed by content and locks each set while it is
    written (tests/test_features.py), so the second test reads what the first extracted.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    path = root / "shared-feature-cache"
    path.mkdir(exist_ok=True)
    return path


# The modules that take longest (the ten slowest tests `make test` prints at the end say when
# this list is out of date), longest first. `make test` hands whole modules to two
# pytest-xdist workers in collection order (--dist loadscope --no-loadscope-reorder); starting
# the longest first keeps one long module from running alone at the end. Other modules keep
# their order after these; a name not found is ignored.
LONGEST_MODULES_FIRST = (
    "test_series.py", "test_browser.py", "test_scale.py", "test_papermill_static.py", "test_notebook_06.py",
    "test_sandbox_derm.py", "test_notebook_05.py", "test_notebook_04.py", "test_sandbox_model.py",
    "test_challenge.py", "test_features.py", "test_notebook_02.py", "test_extract_distributed.py",
    "test_notebook_03.py", "test_notebook_00.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module stays

