"""Cost of an image folder's fingerprint (part of every feature-cache key), per file token.

The fingerprint is computed on every ``extract`` call, including those that only open an
existing cache, so its cost is paid each time. Compares, on a folder of JPEG photos:

* ``size``: the byte size alone (the earlier token; it missed a same-size replacement);
* ``file_token``: size, modification time and a hash of the first and last 4 KiB (now);
* ``full sha256``: hashing every byte (the alternative the issue names).

Each is timed warm (files in the page cache) and cold (each file evicted with
``posix_fadvise(DONTNEED)`` first, Linux only; a local disk, not a network file system).
Without ``--folder`` a folder of ``--n`` photos is synthesised from the real-photo sample
(crops re-saved as JPEG, quality 90) or, when that is missing, from noise.

    python benchmarks/fingerprint.py [--n 1000] [--folder DIR] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clipattr_utils.data import ImageFolder, file_token

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample" / "val"


def synthesise(folder: Path, n: int) -> None:
    """``n`` JPEGs: random crops of the real sample's photos, or noise when it is missing."""
    photos = sorted(p for p in SAMPLE.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    rng = random.Random(0)
    for i in range(n):
        if photos:
            with Image.open(photos[i % len(photos)]) as img:
                img = img.convert("RGB")
        else:
            img = Image.fromarray(np.random.default_rng(i).integers(0, 255, (375, 500, 3), dtype=np.uint8))
        w, h = img.size
        box = (rng.randint(0, w // 10), rng.randint(0, h // 10), w - rng.randint(0, w // 10), h - rng.randint(0, h // 10))
        img.crop(box).save(folder / f"{i:05d}.jpg", quality=90)


def size_token(path: Path) -> str:
    return str(path.stat().st_size)


def full_token(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def time_token(token, paths: list[Path], cold: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            evict(paths)
        start = time.perf_counter()
        for p in paths:
            token(p)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp)
            synthesise(folder, args.n)
        images = ImageFolder(folder)
        paths = [images.path(i) for i in range(len(images))]
        total = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} files, {total / 2**20:.1f} MiB (mean {total / len(paths) / 1024:.0f} KiB)")
        print("| token | warm (ms) | cold (ms) |")
        print("| --- | ---: | ---: |")
        for name, token in (("size", size_token), ("file_token", file_token), ("full sha256", full_token)):
            warm = time_token(token, paths, False, args.repeats)
            cold = time_token(token, paths, True, args.repeats) if hasattr(os, "posix_fadvise") else float("nan")
            print(f"| {name} | {1e3 * warm:.1f} | {1e3 * cold:.1f} |")
        start = time.perf_counter()
        images.fingerprint()
        print(f"ImageFolder.fingerprint() (file_token, warm): {1e3 * (time.perf_counter() - start):.1f} ms")


if __name__ == "__main__":
    main()
