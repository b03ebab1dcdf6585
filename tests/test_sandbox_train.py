"""CI smoke test of the training script: a few steps on a tiny dataset into a tmp folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipattr_utils.sandbox import train as tr

REPO = Path(__file__).resolve().parent.parent

TINY_ARGS = ["--n-objects", "32", "--n-lesions", "8", "--max-steps", "2", "--batch-size", "16",
             "--eval", "none", "--threads", "1", "--seed", "3", "--storage-dtype", "float32"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sandbox_train") / "cli"
    proc = subprocess.run([sys.executable, "-m", "clipattr_utils.sandbox.train", "--out-dir", str(out), *TINY_ARGS],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "train sandbox" in proc.stderr  # the progress bar
    return out


def test_cli_smoke_run_writes_loadable_model(cli_run):
    out = cli_run
    for suffix in (".json", ".safetensors", ".record.json"):
        assert (out / f"sandbox{suffix}").is_file()
    rec = json.loads((out / "sandbox.record.json").read_text())
    assert rec["steps"] == 2 and rec["seed"] == 3
    assert "--max-steps 2" in rec["command"]
    losses = rec["loss_curve_every_50"]
    assert losses and all(isinstance(l, (int, float)) and math.isfinite(l) and l > 0 for l in losses), losses
    assert rec["data"]["objects"]["n"] == 32 and rec["data"]["lesions"]["n"] == 8
    assert not list(out.glob("*.tmp"))

    from clipattr_utils.sandbox.clip import load_sandbox

    clip = load_sandbox("sandbox", out)
    assert clip.model.visual.image_size == (64, 64)
    assert json.loads((out / "sandbox.json").read_text()) == tr.TrainConfig().model_config


def test_training_is_seeded_and_moves_the_weights(cli_run, tmp_path):
    # Same seed in another process: identical weights. Zero steps: the seeded init.
    for name, steps in {"b": 2, "init": 0}.items():
        tr.train(tr.parse_args(["--out-dir", str(tmp_path / name), *TINY_ARGS, "--max-steps", str(steps)]),
                 command="test")
    a = load_file(str(cli_run / "sandbox.safetensors"))
    b, init = (load_file(str(tmp_path / n / "sandbox.safetensors")) for n in ("b", "init"))
    assert a.keys() == b.keys() == init.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same weights
    changed = [k for k in a if not torch.equal(a[k], init[k])]
    assert len(changed) > 0.8 * len(a)  # two optimiser steps moved (nearly) every tensor
    rec = json.loads((tmp_path / "init" / "sandbox.record.json").read_text())
    assert rec["steps"] == 0 and rec["storage_dtype"] in ("float32", "float16")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="captions"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), captions="long"))
    with pytest.raises(ValueError, match="batch_size"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), batch_size=1))
    with pytest.raises(SystemExit):
        tr.parse_args(["--model-config", str(tmp_path / "missing.json")])


def test_lesion_only_run_with_an_uncorrelated_tint(tmp_path):
    """The dermatology CLIP's recipe: no object images, the tint on the same share of both
    diagnoses (the record's data says so), dermatology captions naming it."""
    cfg = tr.parse_args(["--out-dir", str(tmp_path), "--name", "derm", "--n-objects", "0", "--n-lesions", "40",
                         "--lesion-tint-rate", "0.5", "--captions", "derm", "--max-steps", "1", "--batch-size", "8",
                         "--eval", "none", "--threads", "1"])
    rec = tr.train(cfg, command="test")
    assert rec["data"]["objects"] is None and rec["data"]["lesions"]["n"] == 40
    assert rec["data"]["lesions"]["recipe"]["tint_rate_nevus"] == rec["data"]["lesions"]["recipe"]["tint_rate_melanoma"] == 0.5
    from clipattr_utils.sandbox.world import LesionRecipe, make_lesion_dataset

    seen = make_lesion_dataset(40, "train", 0, recipe=LesionRecipe(tint_rate_nevus=0.5, tint_rate_melanoma=0.5))
    assert rec["data"]["lesions_fingerprint"] == seen.fingerprint()
    assert (tmp_path / "derm.safetensors").is_file()


def test_lesion_only_runs_refuse_object_measurements(tmp_path):
    with pytest.raises(ValueError, match="lesion-only.*eval='lesion'"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), n_objects=0, n_lesions=8, eval="full"))
    with pytest.raises(ValueError, match="lesion_tint_rate"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), lesion_tint_rate=1.5))
    with pytest.raises(ValueError, match="not both 0"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), n_objects=0, n_lesions=0))
    with pytest.raises(ValueError, match="n_objects=0"):
        tr.train(tr.TrainConfig(out_dir=str(tmp_path), captions="derm"))
