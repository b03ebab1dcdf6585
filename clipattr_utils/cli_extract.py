"""The batch CLI behind ``python -m clipattr_utils.extract``: one feature cache, outside notebooks.

    python -m clipattr_utils.extract --model ViT-B-32 --pretrained datacomp_xl_s13b_b90k \\
        --dataset imagenet --root /data/imagenet/train --cache-dir /data/cache --batch-size 256
    torchrun --nproc_per_node 8 -m clipattr_utils.extract ...   # same arguments, sharded

It calls `features.extract` unchanged. Under torchrun (``WORLD_SIZE`` > 1 in the environment)
it initialises ``torch.distributed`` first (NCCL when the model runs on CUDA, one GPU per local
rank; gloo on CPU), so `features.extract` splits the batches into per-rank shards. Progress goes
to stderr; the finished cache's path to stdout (rank 0 only). A failure prints one line
``clipattr extract: error: ...`` on stderr and exits with status 1 (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

DATASETS = ("imagenet", "isic", "folder", "sandbox")
PROG = "python -m clipattr_utils.extract"


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Extract and cache CLIP class tokens (or labeler "
                                "embeddings) for an image set; run under torchrun to shard it across processes.")
    p.add_argument("--model", required=True, help="open_clip architecture (ViT-B-32, ...) or 'sandbox'")
    p.add_argument("--pretrained", default=None,
                   help="open_clip pretrained tag or checkpoint file (default: none = random weights "
                        "from torch seed 0, the same in every rank; the shipped weights for 'sandbox')")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--root", default=None,
                   help="imagenet: the split folder of <wnid>/ sub-folders; isic: the image folder; "
                        "folder: any folder of images (not used for sandbox)")
    p.add_argument("--csv", default=None, help="isic: the ground-truth CSV; folder: optional labels CSV "
                                              "(filename,label)")
    p.add_argument("--max-per-class", type=int, default=None, help="imagenet: keep at most this many per class")
    p.add_argument("--n", type=int, default=2000, help="sandbox: number of rendered images")
    p.add_argument("--split", default="train", help="sandbox: split to render")
    p.add_argument("--seed", type=int, default=0, help="sandbox: world seed")
    p.add_argument("--cache-dir", required=True, help="folder holding the caches (shared by all ranks)")
    p.add_argument("--layer", type=int, default=-1, help="transformer block whose class token is cached (-1: last)")
    p.add_argument("--what", default="class_token", choices=("class_token", "embedding"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="decoding workers per process")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: each rank takes "
                                                    "cuda:LOCAL_RANK)")
    p.add_argument("--role", default=None, choices=("explain", "labeler"),
                   help="load_clip role (default: labeler for --what embedding, else explain)")
    p.add_argument("--strict", action="store_true", help="fail on the first undecodable image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _require(path: str | None, flag: str, dataset: str, kind: str = "dir") -> Path:
    if path is None:
        raise CLIError(f"--dataset {dataset} needs {flag}")
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{flag} {p} does not exist")
    if kind == "dir" and not p.is_dir():
        raise CLIError(f"{flag} {p} is not a folder")
    if kind == "file" and not p.is_file():
        raise CLIError(f"{flag} {p} is not a file")
    return p


def build_image_set(args: argparse.Namespace):
    """The `data.ImageSet` named by ``--dataset`` and its options."""
    from . import data

    if args.dataset == "imagenet":
        return data.ImageNetFolder(_require(args.root, "--root", "imagenet"), max_per_class=args.max_per_class)
    if args.dataset == "isic":
        root = _require(args.root, "--root", "isic")
        return data.ISIC2019(_require(args.csv, "--csv", "isic", kind="file"), root)
    if args.dataset == "folder":
        root = _require(args.root, "--root", "folder")
        labels = None if args.csv is None else _require(args.csv, "--csv", "folder", kind="file")
        return data.ImageFolder(root, labels_csv=labels)
    from .sandbox import make_dataset

    return make_dataset(args.n, args.split, seed=args.seed)


def _init_distributed(device: str):
    """Join torchrun's process group when launched by it; returns the device this rank uses."""
    import torch
    import torch.distributed as dist

    from .storage import resolve_device

    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dev


def run(args: argparse.Namespace):
    """Load the model and the image set, extract; returns the `FeatureCache`."""
    import torch

    from .features import extract
    from .models import load_clip

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    # Cheap checks before the model loads, so a typo fails in a second, not after a download.
    image_set = build_image_set(args)
    if len(image_set) == 0:
        raise CLIError(f"--dataset {args.dataset}: the image set is empty")
    device = _init_distributed(args.device)
    role = args.role or ("labeler" if args.what == "embedding" else "explain")
    # Random-init weights (no --pretrained) must be the same in every rank and every rerun, or
    # the ranks (and a resumed run) would disagree on the cache key; the caller's RNG is restored.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = load_clip(args.model, args.pretrained, device=device, role=role)
    return extract(clip, image_set, args.cache_dir, batch_size=args.batch_size, layer=args.layer,
                   num_workers=args.num_workers, strict=args.strict, progress=not args.no_progress, what=args.what)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    ours = not (dist.is_available() and dist.is_initialized())  # a caller's own group is left alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            cache = run(args)
    except (CLIError, OSError, ValueError, RuntimeError) as err:
        where = f" (rank {rank})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        message = " ".join(str(err).split())  # one line, whatever the exception carried
        print(f"clipattr extract: error{where}: {type(err).__name__}: {message}", file=sys.stderr, flush=True)
        return 1
    finally:
        if ours and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(cache.path, flush=True)
        print(f"clipattr extract: {cache.n} rows of width {cache.d} in {cache.path}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
