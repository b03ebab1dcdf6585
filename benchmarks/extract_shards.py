"""Sharded extraction: wall time of the batch CLI on 1 process vs torchrun on P processes.

Both sides run ``python -m clipattr_utils.extract`` end to end (start-up, model load, key
hashing, extraction, finishing the cache) on the same folder of random PNGs, into fresh cache
folders, interleaved; the 1-process side gets all ``--threads`` threads, each of the P ranks
``threads / P``. Prints both times, the speed-up and whether the caches are byte-identical.

    python benchmarks/extract_shards.py [--model ViT-B-32] [--n 128] [--procs 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def launch(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B-32", help="random-init open_clip model (or 'sandbox')")
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.n):
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
        cli = ["-m", "clipattr_utils.extract", "--model", args.model, "--dataset", "folder", "--root", str(root),
               "--batch-size", str(args.batch_size), "--num-workers", "0", "--no-progress"]
        one, many = [], []
        for r in range(args.repeats):
            one.append(launch([sys.executable, *cli, "--cache-dir", f"{tmp}/one{r}"], args.threads))
            many.append(launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                str(args.procs), *cli, "--cache-dir", f"{tmp}/many{r}"],
                               max(1, args.threads // args.procs)))
        a = next(Path(f"{tmp}/one0").iterdir()) / "features.npy"
        b = next(Path(f"{tmp}/many0").iterdir()) / "features.npy"
        same = a.read_bytes() == b.read_bytes()
    print(f"{args.model}, {args.n} images {args.size}px, batch {args.batch_size}, {args.threads} threads")
    print(f"1 process:            best {min(one):.1f} s  (runs {', '.join(f'{t:.1f}' for t in one)})")
    print(f"torchrun {args.procs} processes: best {min(many):.1f} s  (runs {', '.join(f'{t:.1f}' for t in many)})")
    print(f"speed-up {min(one) / min(many):.2f}x; features byte-identical: {same}")


if __name__ == "__main__":
    main()
