"""The batch CLI (``python -m clipattr_utils.extract``): it runs, it equals `features.extract`,
its failures are one clear line and a non-zero exit, and the flat API keeps ``ca.extract``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipattr_utils as ca
from clipattr_utils import cli_extract, features
from clipattr_utils.data import ImageFolder
from clipattr_utils.features import FeatureCache
from clipattr_utils.sandbox import make_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pics")
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(root / f"p{i}.png")
    return root


def test_flat_api_keeps_extract_the_function():
    importlib.import_module("clipattr_utils.extract")  # what -m and any `import clipattr_utils.extract` do
    assert ca.extract is features.extract
    from clipattr_utils import extract

    assert extract is features.extract
    assert sys.modules["clipattr_utils.extract"].__name__ == "clipattr_utils.extract"


def test_dash_m_runs_the_cli_like_features_extract(folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "clipattr_utils.extract", "--model", "sandbox", "--dataset", "folder",
                           "--root", str(folder), "--cache-dir", str(tmp_path / "cli"), "--batch-size", "3",
                           "--num-workers", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "img/s" in done.stderr  # the progress bar goes to stderr ...
    path = Path(done.stdout.strip())  # ... and only the cache's path to stdout
    cli = FeatureCache(path)
    ref = features.extract(ca.load_clip("sandbox"), ImageFolder(folder), tmp_path / "api", batch_size=3,
                           num_workers=0, progress=False)
    assert path.name == ref.path.name and cli.ids == ref.ids and cli.meta["batch_size"] == 3
    torch.testing.assert_close(cli.read(), ref.read(), rtol=1e-5, atol=1e-5)  # thread counts may differ


def test_dash_m_failure_exits_non_zero_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    done = subprocess.run([sys.executable, "-m", "clipattr_utils.extract", "--model", "sandbox", "--dataset",
                           "imagenet", "--root", str(missing), "--cache-dir", str(tmp_path / "c")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == f"clipattr extract: error: CLIError: --root {missing} does not exist"
    assert not (tmp_path / "c").exists()


def _fails(capsys, argv: list[str]) -> str:
    assert cli_extract.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("clipattr extract: error: ")
    return err[-1]


def test_cli_errors_are_clear(capsys, folder, tmp_path):
    base = ["--cache-dir", str(tmp_path / "c"), "--no-progress"]
    assert "--root" in _fails(capsys, ["--model", "sandbox", "--dataset", "folder", "--root", str(tmp_path / "x"),
                                       *base])
    assert "--dataset imagenet needs --root" in _fails(capsys, ["--model", "sandbox", "--dataset", "imagenet", *base])
    assert "--dataset isic needs --csv" in _fails(capsys, ["--model", "sandbox", "--dataset", "isic", "--root",
                                                           str(folder), *base])
    line = _fails(capsys, ["--model", "ViT-Nope-99", "--dataset", "folder", "--root", str(folder), *base])
    assert "Unknown model name 'ViT-Nope-99'" in line
    line = _fails(capsys, ["--model", "sandbox", "--dataset", "folder", "--root", str(folder), "--layer", "7", *base])
    assert "layer=7 out of range for sandbox's 4 blocks" in line
    assert "--batch-size must be >= 1" in _fails(capsys, ["--model", "sandbox", "--dataset", "folder", "--root",
                                                          str(folder), "--batch-size", "0", *base])
    assert not (tmp_path / "c").exists()  # nothing half-made
    with pytest.raises(SystemExit) as usage:  # argparse's own errors: status 2
        cli_extract.main(["--model", "sandbox", "--dataset", "cifar", *base])
    assert usage.value.code == 2 and "invalid choice: 'cifar'" in capsys.readouterr().err


def test_cli_sandbox_dataset_and_layer(capsys, tmp_path):
    argv = ["--model", "sandbox", "--dataset", "sandbox", "--n", "5", "--split", "test", "--seed", "3",
            "--layer", "1", "--cache-dir", str(tmp_path), "--batch-size", "2", "--num-workers", "0", "--no-progress"]
    assert cli_extract.main(argv) == 0
    cache = FeatureCache(capsys.readouterr().out.strip())
    ref = features.extract(ca.load_clip("sandbox"), make_dataset(5, "test", seed=3), tmp_path, batch_size=2, layer=1,
                           num_workers=0, progress=False)
    assert ref.path == cache.path and cache.meta["layer"] == 1 and cache.n == 5  # found, not recomputed
