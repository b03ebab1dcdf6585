"""Overhead of `features.extract` over bare `model.encode_image` on the same batches.

Both sides decode and preprocess the same images through the same DataLoader settings; the
difference is what extraction adds: the class-token hook, memmap writes, per-batch progress
commits and key hashing. Prints both times and the ratio (goal: overhead <= 10 %).

    python benchmarks/features.py [--model ViT-B-32] [--n 256] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from clipattr_utils import features
from clipattr_utils.data import TensorImageSet
from clipattr_utils.models import load_clip


def bare_encode(clip, image_set, batch_size, num_workers):
    loader = DataLoader(features._Decoded(image_set, clip.preprocess, 0), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=features._collate)
    out = []
    with torch.no_grad():
        for _, images, _ in loader:
            with torch.autocast("cuda", enabled=clip.device.type == "cuda"):
                out.append(clip.model.encode_image(images.to(clip.device)).float().cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = load_clip(args.model, device=device)
    rng = np.random.default_rng(0)
    images = TensorImageSet([rng.integers(0, 255, (256, 256, 3), dtype=np.uint8) for _ in range(args.n)])
    workers = features._default_workers(clip.device)
    clip.identity  # weights hash is computed once per loaded model; keep it out of both timings
    bare_encode(clip, images, args.batch_size, workers)  # warm-up
    bare_times, extract_times = [], []
    for _ in range(args.repeats):  # interleaved so machine noise hits both sides alike
        start = time.perf_counter()
        bare_encode(clip, images, args.batch_size, workers)
        bare_times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            features.extract(clip, images, tmp, batch_size=args.batch_size, num_workers=workers, progress=False)
            extract_times.append(time.perf_counter() - start)
    bare, ext = min(bare_times), min(extract_times)
    print(f"device={device} model={args.model} n={args.n} batch={args.batch_size} workers={workers}")
    print(f"bare encode_image: {bare:.2f} s ({args.n / bare:.1f} img/s)")
    print(f"features.extract : {ext:.2f} s ({args.n / ext:.1f} img/s)")
    print(f"overhead ratio extract/bare = {ext / bare:.3f} (goal <= 1.10)")


if __name__ == "__main__":
    main()
