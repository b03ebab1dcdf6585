"""The `imagenet-vitb32` preset end to end on a generated ImageNet-layout folder, with random weights.

    .venv/bin/python benchmarks/imagenet_rehearsal.py [--out runs/imagenet-rehearsal] [--train-per-class 2]

What it checks: the real path of notebooks 01-04 (open_clip ViT-B-32, the MobileCLIP-S2
labeler, the 21,843 ImageNet-21k names, ImageNet folders with all 1000 wnids, the linear probe on
val) runs through ``python -m clipattr_utils.series`` without ImageNet and without downloads, so a
wrong path, a missing class or a shape only ImageNet has shows up here. The labels it produces are
meaningless (random weights, generated images); the plumbing is real.

The preset is the shipped ``notebooks/params/imagenet-vitb32.yaml`` with three kinds of change only,
written to ``<out>/imagenet-vitb32-rehearsal.yaml``: ``pretrained`` / ``labeler_pretrained`` point
at random-init checkpoints written once under ``<out>/weights/`` (no network), the data folders
at the generated ones, and sizes a 2-core CPU finishes in minutes (SAE width and epochs,
faithfulness classes and images, top-n). Every other setting (models, vocabulary, templates,
confidence rule, thresholds) is the preset's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipattr_utils import series  # noqa: E402
from clipattr_utils.data import imagenet_wnids  # noqa: E402

# Sizes for a 2-core CPU; everything else comes from the shipped preset.
SMALL = {
    "01": dict(d_sae=512, k=16, epochs=2, epoch_fraction=1.0, batch_size=256, extract_batch_size=64),
    "02": dict(n_top=20, n_used=5, min_count=2),
    "03": dict(n_classes=10, n_per_class=1, n_random_ref=20, ig_steps=2, steps=5, n_subsets=2),
    "04": dict(pool_every=2),
}


def write_imagenet_folder(root: Path, per_class: int, size: int, seed: int) -> int:
    """``root/<wnid>/<wnid>_<i>.JPEG`` for all 1000 ImageNet-1k wnids: a class-coloured square with
    noise, so images differ by class. Returns the number of files (kept when already there)."""
    rng = np.random.default_rng(seed)
    written = 0
    for c, wnid in enumerate(imagenet_wnids()):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(37 * c) % 256, (91 * c) % 256, (173 * c) % 256], dtype=np.float32)
        for i in range(per_class):
            path = folder / f"{wnid}_{i}.JPEG"
            if not path.is_file():
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(path, quality=85)
            written += 1
    return written


def random_checkpoint(name: str, path: Path, seed: int) -> Path:
    """Random weights for the open_clip model ``name``, saved once as safetensors. Every notebook then
    loads the same model (``pretrained=None`` would draw new weights in each kernel, so notebook 02
    would explain 01's SAE on another model's features), and reruns reuse the feature caches."""
    if not path.is_file():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(seed)
        model = open_clip.create_model(name, pretrained=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def rehearsal_preset(out: Path, train: Path, val: Path, vocabulary: str | None = None) -> Path:
    preset = yaml.safe_load((REPO / "notebooks" / "params" / "imagenet-vitb32.yaml").read_text())
    explained = random_checkpoint(preset["model_name"], out / "weights" / f"{preset['model_name']}-random.safetensors", 0)
    labelers = {s["labeler_name"] for s in preset.values() if isinstance(s, dict) and s.get("labeler_name")}
    labeler_files = {name: random_checkpoint(name, out / "weights" / f"{name}-random.safetensors", 1)
                     for name in labelers}
    if vocabulary:  # e.g. imagenet1k: the 21,843 names take ~10 min through MobileCLIP-S2's text tower on 2 cores
        preset["02"]["vocabulary"] = vocabulary
    preset["pretrained"] = str(explained)
    for number, section in preset.items():
        if not isinstance(section, dict):
            continue
        for key, value in list(section.items()):
            if key == "labeler_pretrained":
                section[key] = str(labeler_files[section["labeler_name"]])
            elif isinstance(value, str) and value.startswith("data/imagenet/"):
                section[key] = str(train if value.endswith("/train") else val)
        section.update(SMALL.get(str(number), {}))
    path = out / "imagenet-vitb32-rehearsal.yaml"
    path.write_text("# Written by benchmarks/imagenet_rehearsal.py from notebooks/params/imagenet-vitb32.yaml\n"
                    + yaml.safe_dump(preset, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "imagenet-rehearsal")
    parser.add_argument("--train-per-class", type=int, default=2)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--vocabulary", default=None,
                        help="override notebook 02's vocabulary (the preset's: imagenet21k), e.g. imagenet1k")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data = out / "imagenet"
    t0 = time.time()
    n_train = write_imagenet_folder(data / "train", args.train_per_class, args.image_size, seed=0)
    n_val = write_imagenet_folder(data / "val", args.val_per_class, args.image_size, seed=1)
    print(f"ImageNet layout: {n_train} train and {n_val} val images, 1000 wnids, in {data} "
          f"({time.time() - t0:.0f} s)")
    preset = rehearsal_preset(out, data / "train", data / "val", args.vocabulary)
    run = series.run_series(preset, out=out / time.strftime("run-%Y%m%d-%H%M%S"), cache_dir=out / "cache")
    records = series.run_status(run)
    summary = {"run": str(run), "train_images": n_train, "val_images": n_val,
               "notebooks": [{"notebook": r.name, "status": r.status, "seconds": r.seconds, "error": r.error[:300]}
                             for r in records]}
    (out / "rehearsal.json").write_text(json.dumps(summary, indent=1))
    for r in records:
        print(f"{r.name}: {r.status} in {r.seconds:.0f} s {r.error[:200]}")
    return 0 if all(r.status == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
