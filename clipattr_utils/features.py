"""The feature cache: CLIP's class token after a block, before ``ln_post``, once per image set.

This is the only place the backbone runs (DESIGN.md, "features first"). Everything after it
— SAE training, labeling, attribution, faithfulness — reads these cached tensors.

``extract(..., what="embedding")`` caches a labeler's L2-normalised FINAL image embeddings
(N, d_post) instead (the labeling step, paper Sec. 3.2 / Eq. 2), with the same keying, resume and
atomic finish; ``what`` is part of the key and of the folder name (``-emb-`` in place of ``-L<layer>-``).

On disk a cache is a folder ``<cache_dir>/<model>-L<layer>-<set>-<key>/`` holding

- ``features.npy``: (N, d_pre) float32, a numpy ``.npy`` read through a memmap (streamable);
- ``labels.npy``: (N,) int64, -1 where unlabeled; ``ids.json``: the N sample ids;
- ``meta.json``: the full key (model + weights hash, layer, preprocessing, image-set
  fingerprint, precision), the skipped files, the byte size and sha256 of each data file
  (``"files"``: `FeatureCache` checks them, `extract` rebuilds a cache that fails) and
  ``"complete": true``.

Extraction writes into ``<name>.partial/`` and renames it when done, so a cache folder without
``.partial`` is always complete. Progress is committed per batch (rows flushed first, then an
atomically replaced ``progress.json``), so a killed run resumes where it stopped and produces
exactly the rows an uninterrupted run would: batch boundaries are fixed by the stored batch size.
While it writes, a single-process extraction holds ``<name>.partial/.lock`` (``flock``): a second
process extracting the same cache waits for it, then returns the finished cache.

Sharded (``torchrun``; see docs/scaling.md): when ``torch.distributed`` is initialised, or
``rank``/``world_size`` are given, the batches are split into ``world_size`` contiguous ranges.
Rank r writes ``<name>.partial/shards/rank-<r>-of-<W>/`` (its rows + its own ``progress.json``,
committed per batch as above; ``shards/layout.json`` fixes the ranges). Once every shard is
complete, one process concatenates them and finishes the cache exactly as a single run would:
same key, same folder name, byte-identical ``features.npy``, ``labels.npy`` and ``ids.json``.

Test hook (documented because it kills the process): ``CLIPATTR_TEST_EXIT_AFTER_BATCHES="<rank>:<k>"``
makes that rank ``os._exit(17)`` right after committing its k-th batch of the current run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data import ImageSet
from .storage import resolve_cache_dir, write_json_atomic
from .transform_key import TransformKeyError, describe_transform  # noqa: F401  (TransformKeyError re-exported)

# 2: preprocessing keyed structurally (`describe_transform`), not by repr().
FORMAT_VERSION = 2
WHATS = ("class_token", "embedding", "patch_tokens")
STORAGE = {"float32": np.float32, "float16": np.float16}
"""How `extract` may store rows on disk (readers always return float32)."""
"""What `extract` caches: the class token after a block (pre-``ln_post``), or the final
L2-normalised image embedding (a labeler's output)."""
# Errors that mean "this file is not a usable image" — anything else is a bug and propagates.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class SkippedImagesWarning(UserWarning):
    """Some images could not be decoded and were left out of the cache."""


class CacheIntegrityError(ValueError):
    """A cache file is unreadable, truncated or altered since it was written; the message
    names the file. `extract` rebuilds a cache that raises this."""


class RebuiltCacheWarning(UserWarning):
    """`extract` found its finished cache damaged and extracted it again."""


DATA_FILES = ("features.npy", "labels.npy", "ids.json")
"""The files whose byte size and sha256 ``meta.json`` records (``"files"``)."""
ALWAYS_HASHED = ("labels.npy", "ids.json")
"""Small enough to re-hash on every open; ``features.npy`` is re-hashed by `FeatureCache.verify`."""


def file_record(path: Path) -> dict:
    """``{"bytes": size, "sha256": hex digest}`` of one file, read in 16 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 * 2**20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


class FeatureCache:
    """A complete, read-only feature cache (see module docstring for the layout).

    Opening checks what is cheap: every data file against the byte size ``meta.json``
    records, and the small ones (labels, ids) against their sha256; `verify` also re-hashes
    ``features.npy``. A file that is unreadable or fails a check raises `CacheIntegrityError`
    naming it. (Caches written before the record existed are only checked for readability.)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if self.path.name.endswith(".partial"):
            raise ValueError(f"{self.path} is an unfinished extraction; rerun features.extract to complete it")
        if not meta_path.is_file():
            raise FileNotFoundError(f"Not a feature cache (no meta.json): {self.path}")
        self.meta: dict = self._read("meta.json", lambda p: json.loads(p.read_text()))
        if not self.meta.get("complete"):
            raise ValueError(f"Feature cache {self.path} is not marked complete")
        for name in self.meta.get("files", {}):
            self._check(name, hashed=name in ALWAYS_HASHED)
        self._x = self._read("features.npy", lambda p: np.load(p, mmap_mode="r"))
        self.labels: np.ndarray = self._read("labels.npy", np.load)
        self.ids: list[str] = self._read("ids.json", lambda p: json.loads(p.read_text()))
        if not (len(self._x) == len(self.labels) == len(self.ids) == self.meta["n"]):
            raise CacheIntegrityError(
                f"Feature cache {self.path} is inconsistent: features {self._x.shape}, labels {self.labels.shape}, "
                f"ids {len(self.ids)}, meta n={self.meta['n']}"
            )

    def _read(self, name: str, reader):
        """``reader(path)``; any failure becomes a `CacheIntegrityError` that names the file."""
        path = self.path / name
        try:
            return reader(path)
        except (OSError, ValueError, EOFError) as err:  # json.JSONDecodeError is a ValueError
            raise CacheIntegrityError(f"Feature cache file {path} is unreadable ({type(err).__name__}: {err}); "
                                      "rerun features.extract to rebuild the cache") from err

    def _check(self, name: str, hashed: bool) -> None:
        want, path = self.meta["files"][name], self.path / name
        size = path.stat().st_size if path.is_file() else None
        if size != want["bytes"]:
            found = "it is missing" if size is None else f"it has {size}"
            raise CacheIntegrityError(f"Feature cache file {path} should have {want['bytes']} bytes, {found} "
                                      "(truncated or replaced); rerun features.extract to rebuild the cache")
        if hashed and file_record(path)["sha256"] != want["sha256"]:
            raise CacheIntegrityError(f"Feature cache file {path} does not match the sha256 in meta.json (altered "
                                      "since it was written); rerun features.extract to rebuild the cache")

    def verify(self) -> "FeatureCache":
        """Re-hash every data file (one full read of ``features.npy``) against ``meta.json``;
        returns the cache, or raises `CacheIntegrityError` naming the first file that differs."""
        for name in self.meta.get("files", {}):
            self._check(name, hashed=True)
        return self

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureCache":
        return cls(path)

    @property
    def n(self) -> int:
        return int(self._x.shape[0])

    @property
    def d(self) -> int:
        return int(self._x.shape[1])

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def storage(self) -> str:
        """How the rows sit on disk: "float32" or "float16" (reads return float32 either way)."""
        return str(self._x.dtype)

    @property
    def what(self) -> str:
        """``"class_token"`` (pre-LayerNorm class tokens) or ``"embedding"`` (unit final embeddings)."""
        return str(self.meta.get("what", "class_token"))

    @property
    def classnames(self) -> list[str]:
        return list(self.meta.get("classnames", []))

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FeatureCache(n={self.n}, d={self.d}, path={str(self.path)!r})"

    def read(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) as a float32 tensor (a copy; the memmap stays untouched)."""
        return torch.from_numpy(np.array(self._x[start:stop], dtype=np.float32))

    def take(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Rows at arbitrary indices, in the given order."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), self.d), dtype=np.float32)
        rows[order] = self._x[idx[order]]  # sorted reads are sequential on disk
        return torch.from_numpy(rows)

    def patches(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(N, P, width) patch tokens of images [start, stop) of a ``what="patch_tokens"`` cache."""
        if self.what != "patch_tokens":
            raise ValueError(f"{self.path.name} caches {self.what} rows, not patch tokens "
                             "(extract(..., what='patch_tokens'))")
        x = self.read(start, stop)
        return x.reshape(x.shape[0], int(self.meta["tokens_per_image"]), int(self.meta["token_width"]))

    def iter_chunks(self, chunk_rows: int = 65536) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.n, chunk_rows):
            yield start, self.read(start, min(start + chunk_rows, self.n))

    def numpy(self) -> np.memmap:
        """The read-only memmap itself, for code that wants numpy slicing."""
        return self._x


def write_cache(path: str | os.PathLike, x: torch.Tensor | np.ndarray, labels: Sequence[int] | None = None,
                ids: Sequence[str] | None = None, meta: dict | None = None, storage: str = "float32") -> FeatureCache:
    """Store in-memory features as a cache folder (atomically); returns it opened.

    For features that did not come from `extract` (synthetic data, tests, augmented sets).
    Refuses to overwrite an existing folder. ``storage="float16"`` keeps the rows in half
    precision on disk (readers return float32).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"write_cache: {path} already exists")
    if storage not in STORAGE:
        raise ValueError(f"write_cache: storage must be one of {list(STORAGE)}, got {storage!r}")
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=STORAGE[storage])
    if x.ndim != 2:
        raise ValueError(f"write_cache: features must be (N, d), got shape {x.shape}")
    n = len(x)
    labels = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    ids = [f"{i:08d}" for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(labels) != n or len(ids) != n:
        raise ValueError(f"write_cache: {n} feature rows but {len(labels)} labels and {len(ids)} ids")
    body = dict(meta or {})
    key = body.pop("key", None) or hashlib.sha256(x.tobytes()).hexdigest()[:16]
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "features.npy", x)
    np.save(tmp / "labels.npy", labels)
    (tmp / "ids.json").write_text(json.dumps(ids))
    write_json_atomic(tmp / "meta.json", {**body, "key": key, "n": n, "d": int(x.shape[1]),
                                          "format": FORMAT_VERSION, "skipped": body.get("skipped", []),
                                          "files": {f: file_record(tmp / f) for f in DATA_FILES}, "complete": True})
    os.replace(tmp, path)
    return FeatureCache(path)


# --------------------------------------------------------------------------------------------
# extraction


def cache_key(clip, image_set: ImageSet, layer: int, precision: str, what: str = "class_token",
              storage: str = "float32") -> dict:
    """Everything that determines the cached rows. Two runs share a cache only if all match.

    Every part is stable across processes (no memory addresses, no hash randomisation), so a
    later session finds the cache an earlier one wrote. ``what`` enters the key only when it is
    not the class token, so class-token caches keep the keys they always had.
    """
    key = {
        "format": FORMAT_VERSION,
        "model": clip.identity,
        "layer": int(layer),
        "preprocess": describe_transform(clip.preprocess),
        "image_set": {"describe": image_set.describe(), "fingerprint": image_set.fingerprint()},
        "precision": precision,
    }
    if what != "class_token":
        key["what"] = what
    if storage != "float32":   # (float32 caches keep the keys they always had)
        key["storage"] = storage
    return key


def key_hash(key: dict) -> str:
    """The short hash of a `cache_key` that names the cache folder."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:40] or "x"


class _Decoded(Dataset):
    """(index, preprocessed tensor | None, error | None) per image in [start, stop); decoding runs in workers."""

    def __init__(self, image_set: ImageSet, preprocess, start: int, stop: int | None = None):
        self.image_set, self.preprocess, self.start = image_set, preprocess, start
        self.stop = len(image_set) if stop is None else stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, j: int):
        i = self.start + j
        try:
            image = self.image_set.load_image(i)
        except DECODE_ERRORS as err:
            return i, None, f"{type(err).__name__}: {err}"
        return i, self.preprocess(image), None


def _collate(items):
    ok = [(i, t) for i, t, e in items if e is None]
    bad = [(i, e) for i, _, e in items if e is not None]
    idx = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([t for _, t in ok]) if ok else None
    return idx, images, bad


@contextlib.contextmanager
def class_token_hook(model: torch.nn.Module, layer: int = -1):
    """Capture the class token after block ``layer`` during ``model.encode_image``.

    Yields a dict whose ``"x"`` holds the (N, width) class tokens of the last call.
    """
    visual = getattr(model, "visual", model)
    blocks = visual.transformer.resblocks
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer={layer} out of range for a tower with {len(blocks)} blocks")
    batch_first = getattr(visual.transformer, "batch_first", True)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        tokens = output[0] if isinstance(output, tuple) else output
        store["x"] = tokens[:, 0] if batch_first else tokens[0]

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def patch_count(clip) -> int:
    """Patch tokens per image of ``clip``'s ViT (its patch grid's rows x columns)."""
    grid = getattr(clip.model.visual, "grid_size", None)
    if grid is None:
        raise ValueError(f"{clip.name}: its image tower has no patch grid (open_clip ViT grid_size)")
    return int(np.prod(grid))


def patch_token_rows(cache: "FeatureCache", max_rows: int, seed: int = 0, chunk_images: int = 4096) -> torch.Tensor:
    """(M, width) patch tokens of a patch-token cache as rows, M <= ``max_rows``: every token
    of every image when they fit, else every token of ``max_rows // P`` images drawn at random
    (``seed``), read in order in chunks."""
    if cache.what != "patch_tokens":
        raise ValueError(f"patch_token_rows: {cache.path.name} caches {cache.what} rows, not patch tokens")
    per = int(cache.meta["tokens_per_image"])
    n_images = min(cache.n, max(1, int(max_rows) // per))
    rows = np.arange(cache.n) if n_images == cache.n else \
        np.sort(np.random.default_rng([int(seed), 0x9A7C]).choice(cache.n, n_images, replace=False))
    parts = [cache.take(rows[s:s + chunk_images]).reshape(-1, int(cache.meta["token_width"]))
             for s in range(0, len(rows), chunk_images)]
    return torch.cat(parts)


@contextlib.contextmanager
def patch_token_hook(model: torch.nn.Module, layer: int = -1):
    """Capture every patch token after block ``layer`` during ``model.encode_image``, as (N,
    P x width) rows (the P tokens of an image side by side, row-major over the patch grid)."""
    visual = getattr(model, "visual", model)
    blocks = visual.transformer.resblocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    n_patches = int(np.prod(visual.grid_size))
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        tokens = output[0] if isinstance(output, tuple) else output
        tokens = tokens if batch_first else tokens.transpose(0, 1)
        store["x"] = tokens[:, tokens.shape[1] - n_patches:].reshape(tokens.shape[0], -1)

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _default_workers(device: torch.device) -> int:
    cpus = os.cpu_count() or 1
    return min(8, cpus) if device.type == "cuda" else max(0, min(4, cpus - 1))


def extract(clip, image_set: ImageSet, cache_dir: str | os.PathLike | None = None, batch_size: int = 64, layer: int = -1,
            num_workers: int | None = None, strict: bool = False, progress: bool = True,
            autocast: bool | None = None, what: str = "class_token", *, rank: int | None = None,
            world_size: int | None = None, verify: bool = False, storage: str = "float32") -> FeatureCache | None:
    """Class tokens (pre-``ln_post``) after block ``layer`` for every image; cached and resumable.

    With ``what="embedding"``: the model's final image embedding (``model.encode_image``),
    L2-normalised, (N, d_post) — what a labeler contributes to Eq. 2. Works for any open_clip
    tower (``load_clip(..., role="labeler")``), class token or not; ``layer`` must stay -1.

    Args:
        clip: a `models.LoadedCLIP`.
        image_set: any `data.ImageSet`.
        cache_dir: folder holding caches; the subfolder name carries a hash of the full key.
            None: the series' shared cache, :func:`clipattr_utils.storage.default_cache_dir`.
        batch_size: images per forward pass (fixed for a cache: a resumed run keeps the first).
        layer: transformer block whose output is cached (-1: the last, the paper's setting);
            negative indices count from the end and key the cache like their positive twin.
        num_workers: DataLoader decoding workers (default: cores - 1 on CPU, up to 8 on GPU).
        strict: raise on the first undecodable image instead of skipping and listing it.
        autocast: mixed precision on CUDA (default True there; part of the key).
        what: ``"class_token"`` (default) or ``"embedding"`` (see above; part of the key).
        rank, world_size: this process's shard (module docstring). Default: taken from an
            initialised ``torch.distributed`` process group, else a single process. Not part of the key.
        storage: ``"float32"`` (default) or ``"float16"``: the rows on disk in half precision
            (half the disk and page cache; every reader still returns float32; part of the key).
            A patch-token cache of ImageNet train is 193 GB in float32 for ViT-B/32.
        verify: also re-hash an existing cache's ``features.npy`` (`FeatureCache.verify`, one
            full read); without it, sizes and the small files' hashes are checked. A cache that
            fails is extracted again (`RebuiltCacheWarning`).
    Returns:
        the `FeatureCache` (existing one when the key matches exactly). Only with an explicit
        ``rank``/``world_size`` and no process group: None while other shards are still missing
        (the call that completes the last shard finishes the cache).
    """
    if what not in WHATS:
        raise ValueError(f"extract: what must be one of {WHATS}, got {what!r}")
    if storage not in STORAGE:
        raise ValueError(f"extract: storage must be one of {list(STORAGE)}, got {storage!r}")
    if what == "embedding" and layer != -1:
        raise ValueError(f"extract(what='embedding'): the final embedding has no layer; leave layer=-1 (got {layer})")
    if what in ("class_token", "patch_tokens") and not getattr(clip, "has_head", True):
        raise ValueError(f"extract: {clip.name} has no class token (loaded with role={getattr(clip, 'role', None)!r}); "
                         "a labeler's final embeddings are extract(..., what='embedding')")
    if what in ("class_token", "patch_tokens"):
        n_blocks = len(clip.model.visual.transformer.resblocks)
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(f"extract: layer={layer} out of range for {clip.name}'s {n_blocks} blocks")
        layer = layer % n_blocks  # -1 and n_blocks - 1 are the same block: one cache, one key
    device = clip.device
    use_amp = (device.type == "cuda") if autocast is None else bool(autocast and device.type == "cuda")
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    precision = f"amp-{str(amp_dtype).split('.')[-1]}" if use_amp else "fp32"
    n = len(image_set)
    if n == 0:
        raise ValueError(f"extract: image set {image_set.describe()} is empty")
    key_dict = cache_key(clip, image_set, layer, precision, what, storage)
    key = key_hash(key_dict)
    where = {"class_token": f"L{layer}", "patch_tokens": f"P{layer}"}.get(what, "emb")
    name = f"{_slug(clip.name)}-{where}-{_slug(image_set.describe().get('kind', 'images'))}-{key}"
    cache_dir = resolve_cache_dir(cache_dir)
    final, work = cache_dir / name, cache_dir / (name + ".partial")

    rank, world_size, group = _shard_context(rank, world_size)
    if group is not None:
        _same_key_everywhere(key, group)
    if final.exists():
        cache = _open_or_discard(final, verify)
        if cache is not None:
            if cache.meta.get("key_full") != json.loads(json.dumps(key_dict)):
                raise RuntimeError(f"Feature cache {final} has the same key hash but a different key; remove it")
            return cache

    # A patch-token cache keeps one row per image too, its P tokens side by side (P x width
    # values): resuming, sharding, labels and ids work as for class tokens; `patches` reshapes.
    if what == "embedding":
        d = int(clip.d_post)
    else:
        width = int(clip.model.visual.transformer.width)
        d = width * patch_count(clip) if what == "patch_tokens" else width
    if num_workers is None:
        num_workers = _default_workers(device)
    run = _Run(clip, image_set, layer, what, d, strict, progress, use_amp, amp_dtype, num_workers, rank)
    run.dtype = STORAGE[storage]
    if what == "patch_tokens" and progress and not final.exists():
        print(f"extract: patch tokens of {clip.name} (block {layer}): {d // width} per image, "
              f"{_size(np.dtype(run.dtype).itemsize * d * n)} for "
              f"{n} images ({d // width}x a class-token cache)", file=sys.stderr)
    if world_size > 1:
        return _extract_sharded(run, work, final, key, key_dict, batch_size, world_size, group)

    lock = _lock_work(work, final)
    if lock is None:  # another process finished this cache while we waited for it
        return FeatureCache(final)
    try:
        cache = _extract_single(run, work, final, key, key_dict, batch_size, n, d, where)
        (final / LOCK_NAME).unlink(missing_ok=True)  # moved along with the folder; a waiter re-checks final
        return cache
    finally:
        os.close(lock)


LOCK_NAME = ".lock"
"""In ``<name>.partial/``: the file a single-process extraction holds (``flock``) while it writes."""


def _lock_work(work: Path, final: Path) -> int | None:
    """A descriptor holding an exclusive lock on ``work/.lock``, or None once ``final`` exists.

    Two processes extracting the same cache used to both write ``work``; the first to finish
    renamed it, and the other died on a missing temp file. Now the second waits (saying for
    whom), then finds the finished cache. The lock is the kernel's (``flock``), so a killed
    holder releases it; the lock file moves with the folder when it is finished, so a lock
    won on a file no longer at ``work/.lock`` is retried. Without ``fcntl`` (Windows) there
    is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        work.mkdir(parents=True, exist_ok=True)
        return os.open(os.devnull, os.O_RDONLY)
    path, warned = work / LOCK_NAME, False
    while True:
        if final.exists():
            return None
        work.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not warned:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                warnings.warn(f"another process ({holder}) is extracting into {work}; waiting for it to finish",
                              stacklevel=3)
                warned = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
            return fd
        os.close(fd)


def _extract_single(run: _Run, work: Path, final: Path, key: str, key_dict: dict, batch_size: int, n: int,
                    d: int, where: str) -> FeatureCache:
    """One process extracts every row into ``work`` (holding its lock), then finishes the cache."""
    clip, image_set = run.clip, run.image_set
    progress_path = work / "progress.json"
    if (work / "shards").is_dir() and not progress_path.is_file():
        layout = _read_json(work / "shards" / "layout.json") or {}
        raise RuntimeError(f"{work} holds a sharded extraction (world_size={layout.get('world_size', '?')}); "
                           f"finish it with that many processes (torchrun --nproc_per_node ...) or remove the folder")
    if progress_path.is_file():
        state = json.loads(progress_path.read_text())
        if state["key_full"] != json.loads(json.dumps(key_dict)):
            raise RuntimeError(f"{work} belongs to another extraction key; remove it")
        if state["batch_size"] != batch_size:
            warnings.warn(f"Resuming {work.name} with its original batch_size={state['batch_size']} "
                          f"(asked {batch_size}) so rows match an uninterrupted run")
            batch_size = state["batch_size"]
        features = rows_file(work / "features.npy")
    else:
        features = rows_file(work / "features.npy", (n, d), run.dtype)
        state = {"key_full": key_dict, "batch_size": batch_size, "next_row": 0, "skipped": []}
        write_json_atomic(progress_path, state)

    _run_rows(run, features, 0, state["next_row"], n, batch_size, state, progress_path,
              desc=f"features {clip.name} {where}")
    del features
    return _finalize(work, final, image_set, key, key_dict, state, clip, run.layer, d, run.what)


def _open_or_discard(final: Path, verify: bool) -> FeatureCache | None:
    """The finished cache, or None after moving a damaged one out of the way (to be rebuilt).

    The folder is renamed before it is removed, so a reader never sees it half deleted, and
    of several processes finding the same damage only one moves it.
    """
    try:
        cache = FeatureCache(final)
        return cache.verify() if verify else cache
    except CacheIntegrityError as err:
        warnings.warn(f"{err}: extracting it again", RebuiltCacheWarning, stacklevel=3)
    trash = final.with_name(f"{final.name}.damaged-{os.getpid()}")
    try:
        os.replace(final, trash)
    except FileNotFoundError:  # another process moved it first
        return None
    shutil.rmtree(trash, ignore_errors=True)
    return None


def rows_file(path: Path, shape: tuple[int, int] | None = None, dtype: Any = np.float32) -> np.memmap:
    """A float32 (or ``dtype``) ``.npy`` memmap to write rows into: created with ``shape``, or (None) reopened
    to resume; either way with all of its bytes reserved on disk first.

    A memmap's file is sparse: a block is allocated when a row is first written to it, and
    one that finds the disk full is not an error numpy can raise but a SIGBUS that kills the
    process (exit 135, no message). So the space is checked (`shutil.disk_usage`) and
    reserved (``posix_fallocate``) here, where running out is an OSError (ENOSPC) that says
    how much is needed. Rows already written stay, so a rerun after freeing space resumes.
    """
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape) if shape is not None else \
        np.load(path, mmap_mode="r+")
    st = path.stat()
    missing = max(0, st.st_size - 512 * st.st_blocks)  # bytes not yet backed by a block
    if missing > shutil.disk_usage(path.parent).free:
        raise _no_space(path, missing)
    if hasattr(os, "posix_fallocate") and missing:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, st.st_size)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise _no_space(path, missing) from err
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # no reservation on this filesystem
                raise
        finally:
            os.close(fd)
    return out


def _no_space(path: Path, missing: int) -> OSError:
    free = shutil.disk_usage(path.parent).free
    return OSError(errno.ENOSPC, f"extract: {path} needs {_size(missing)} more on disk ({path.stat().st_size} bytes "
                                 f"in all), {_size(free)} is free in {path.parent}; free space or use another "
                                 "cache_dir, then rerun (rows already written are kept)")


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class _Run:
    """What every batch of one extraction needs, whichever rows a process owns."""

    def __init__(self, clip, image_set, layer, what, d, strict, progress, use_amp, amp_dtype, num_workers, rank):
        self.clip, self.image_set, self.layer, self.what, self.d = clip, image_set, layer, what, d
        self.strict, self.progress, self.use_amp, self.amp_dtype = strict, progress, use_amp, amp_dtype
        self.num_workers, self.rank = num_workers, rank
        self.dtype: Any = np.float32   # rows on disk (extract's ``storage``)


def _exit_hook(rank: int) -> int | None:
    spec = os.environ.get(EXIT_HOOK_ENV, "")
    if not spec:
        return None
    who, _, k = spec.partition(":")
    return int(k) if int(who) == rank else None


def _run_rows(run: _Run, out: np.ndarray, base: int, start: int, stop: int, batch_size: int, state: dict,
              progress_path: Path, desc: str) -> None:
    """Fill ``out[i - base]`` for images [start, stop) batch by batch, committing progress after each.

    Batches start at ``start``; callers keep ``start`` on the global batch grid (a multiple of
    ``batch_size`` from the set's first row, or of a shard's first row), so every image meets
    the same batch companions as in a single uninterrupted run.
    """
    clip, image_set, device = run.clip, run.image_set, run.clip.device
    exit_after = _exit_hook(run.rank)
    loader = DataLoader(_Decoded(image_set, clip.preprocess, start, stop), batch_size=batch_size, shuffle=False,
                        num_workers=run.num_workers, collate_fn=_collate, pin_memory=device.type == "cuda")
    from tqdm.auto import tqdm

    bar = tqdm(total=stop - base, initial=start - base, unit="img",
               desc=desc, disable=not run.progress, smoothing=0.1)
    model = clip.model.eval()
    hook = {"class_token": lambda: class_token_hook(model, run.layer),
            "patch_tokens": lambda: patch_token_hook(model, run.layer)}.get(run.what, lambda: contextlib.nullcontext({}))()
    with hook as captured, torch.no_grad():
        for batch_no, (idx, images, bad) in enumerate(loader):
            if bad:
                if run.strict:
                    i, err = bad[0]
                    raise ValueError(f"extract(strict=True): cannot decode {image_set.sample_id(i)}: {err}")
                state["skipped"] += [{"index": int(i), "id": image_set.sample_id(i), "error": e} for i, e in bad]
            if images is not None:
                with torch.autocast("cuda", dtype=run.amp_dtype, enabled=run.use_amp):
                    out_ = model.encode_image(images.to(device, non_blocking=True))
                rows = captured["x"] if run.what != "embedding" else torch.nn.functional.normalize(out_.float(), dim=-1)
                if rows.shape[-1] != run.d:
                    raise RuntimeError(f"extract: {clip.name} produced {run.what} rows of width {rows.shape[-1]}, "
                                       f"expected {run.d}")
                out[idx.numpy() - base] = rows.float().cpu().numpy()
            row = min(start + (batch_no + 1) * batch_size, stop)
            out.flush()  # rows reach the file before progress says they exist
            state["next_row"] = row
            write_json_atomic(progress_path, state)
            bar.update(row - base - bar.n)
            if exit_after is not None and batch_no + 1 >= exit_after:
                os._exit(17)  # the test hook: die like a killed rank, no cleanup
    bar.close()


# --------------------------------------------------------------------------------------------
# sharded extraction (torchrun)

EXIT_HOOK_ENV = "CLIPATTR_TEST_EXIT_AFTER_BATCHES"
BARRIER_TIMEOUT_H = 48
"""Ranks whose shards are done wait for the slowest one (after a resume: possibly hours), so the
barriers run on a gloo group with this timeout instead of the default group's (NCCL: 10 min)."""
_BARRIER: list = [None, None]  # [the default process group it was made for, the gloo group]


def _shard_context(rank: int | None, world_size: int | None) -> tuple[int, int, object | None]:
    """(rank, world_size, barrier group or None) from the arguments or torch.distributed."""
    import torch.distributed as dist

    live = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        if not live:
            return 0, 1, None
        rank, world_size = dist.get_rank(), dist.get_world_size()
    elif rank is None or world_size is None:
        raise ValueError(f"extract: give both rank and world_size or neither (got rank={rank}, world_size={world_size})")
    rank, world_size = int(rank), int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"extract: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if live and (rank, world_size) != (dist.get_rank(), dist.get_world_size()):
        raise ValueError(f"extract: rank={rank}, world_size={world_size} contradict the initialised process group "
                         f"(rank {dist.get_rank()} of {dist.get_world_size()})")
    if not live or world_size == 1:
        return rank, world_size, None
    if _BARRIER[0] is not dist.group.WORLD:  # identity, not id(): a re-initialised group may reuse an id
        from datetime import timedelta

        _BARRIER[:] = [dist.group.WORLD, dist.new_group(backend="gloo", timeout=timedelta(hours=BARRIER_TIMEOUT_H))]
    return rank, world_size, _BARRIER[1]


def _same_key_everywhere(key: str, group) -> None:
    """Ranks that disagree on the key would each wait for shards of a cache nobody else writes."""
    import torch.distributed as dist

    keys: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(keys, key, group=group)
    if len(set(keys)) > 1:
        raise RuntimeError(f"extract: the ranks computed different cache keys ({', '.join(map(str, keys))}): the "
                           "model weights, preprocessing or image set differ between them (random-init weights: "
                           "seed torch before building the model in every rank; a copy of the images per node: "
                           "copy them with their modification times, cp -p or rsync -a)")


def _barrier(group) -> None:
    if group is not None:
        import torch.distributed as dist

        dist.barrier(group=group)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def shard_layout(n: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) per rank: contiguous runs of whole batches, as even as batches allow."""
    n_batches = -(-n // batch_size)
    cuts = [n_batches * r // world_size for r in range(world_size + 1)]
    return [(min(cuts[r] * batch_size, n), min(cuts[r + 1] * batch_size, n)) for r in range(world_size)]


def _extract_sharded(run: _Run, work: Path, final: Path, key: str, key_dict: dict, batch_size: int,
                     world_size: int, group) -> FeatureCache | None:
    rank, n = run.rank, len(run.image_set)
    key_json = json.loads(json.dumps(key_dict))
    shards, root_progress = work / "shards", work / "progress.json"
    assembled = _read_json(root_progress)
    if assembled is not None and not assembled.get("assembled"):
        raise RuntimeError(f"{work} holds a single-process extraction (row {assembled.get('next_row')} of {n}); "
                           "finish it with one process or remove the folder")
    shards.mkdir(parents=True, exist_ok=True)
    layout = _read_json(shards / "layout.json")
    if layout is not None:
        if layout["key_full"] != key_json:
            raise RuntimeError(f"{shards / 'layout.json'} belongs to another extraction key; remove {work}")
        if layout["world_size"] != world_size:
            raise RuntimeError(f"{work} was started with world_size={layout['world_size']}, this launch has "
                               f"{world_size}; relaunch with {layout['world_size']} processes or remove the folder")
        if layout["batch_size"] != batch_size:
            warnings.warn(f"Resuming {work.name} with its original batch_size={layout['batch_size']} "
                          f"(asked {batch_size}) so rows match an uninterrupted run")
            batch_size = layout["batch_size"]
    else:
        layout = {"key_full": key_dict, "n": n, "batch_size": batch_size, "world_size": world_size,
                  "ranges": shard_layout(n, batch_size, world_size)}
        if rank == 0 or group is None:  # without a group every rank writes the same file
            write_json_atomic(shards / "layout.json", layout)
    _barrier(group)

    if assembled is None:
        _extract_shard(run, shards, layout, rank, key_dict)
    _barrier(group)
    if group is not None:
        if rank == 0:
            _finish_shards(run, work, final, key, key_dict, layout)
        _barrier(group)
        return FeatureCache(final)
    # No process group: whoever sees every shard complete finishes, one at a time.
    if not all(_shard_done(shards, layout, r) for r in range(world_size)) and not root_progress.is_file():
        return None
    lock = final.with_name(final.name + ".finishing")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if final.exists():
            return FeatureCache(final)
        warnings.warn(f"another process is finishing {work.name} (lock {lock}); if none is, remove the lock")
        return None
    try:
        os.close(fd)
        if final.exists():
            return FeatureCache(final)
        return _finish_shards(run, work, final, key, key_dict, layout)
    finally:
        lock.unlink(missing_ok=True)


def _shard_dir(shards: Path, layout: dict, r: int) -> Path:
    return shards / f"rank-{r:05d}-of-{layout['world_size']:05d}"


def _shard_done(shards: Path, layout: dict, r: int) -> bool:
    state = _read_json(_shard_dir(shards, layout, r) / "progress.json")
    return state is not None and state["next_row"] >= layout["ranges"][r][1]


def _extract_shard(run: _Run, shards: Path, layout: dict, rank: int, key_dict: dict) -> None:
    start, stop = layout["ranges"][rank]
    folder = _shard_dir(shards, layout, rank)
    folder.mkdir(parents=True, exist_ok=True)
    progress_path = folder / "progress.json"
    state = _read_json(progress_path)
    if state is None:
        state = {"key_full": key_dict, "batch_size": layout["batch_size"], "start": start, "stop": stop,
                 "next_row": start, "skipped": []}
        if stop > start:  # numpy cannot map an empty file: an empty shard has no rows file
            rows_file(folder / "features.npy", (stop - start, run.d), run.dtype).flush()
        write_json_atomic(progress_path, state)
    elif state["next_row"] < stop and run.progress:
        import sys

        print(f"extract: rank {rank} resumes its shard at row {state['next_row']} of [{start}, {stop})",
              file=sys.stderr, flush=True)
    if state["next_row"] >= stop:
        return
    out = rows_file(folder / "features.npy")
    _run_rows(run, out, start, state["next_row"], stop, layout["batch_size"], state, progress_path,
              desc=f"features {run.clip.name} rank {rank}/{layout['world_size']}")
    del out


def _finish_shards(run: _Run, work: Path, final: Path, key: str, key_dict: dict, layout: dict) -> FeatureCache:
    """Concatenate the shards into ``work/features.npy``, then finish like a single run."""
    shards, n, d = work / "shards", layout["n"], run.d
    state = _read_json(work / "progress.json")
    if state is None:
        tmp = work / "features.assembling.npy"
        out = rows_file(tmp, (n, d), run.dtype)
        skipped: list = []
        for r, (start, stop) in enumerate(layout["ranges"]):
            folder = _shard_dir(shards, layout, r)
            shard_state = _read_json(folder / "progress.json")
            if shard_state is None or shard_state["next_row"] < stop:
                raise RuntimeError(f"extract: shard {folder} is not complete; relaunch every rank to finish it")
            skipped += shard_state["skipped"]
            if stop > start:
                src = np.load(folder / "features.npy", mmap_mode="r")
                for s in range(0, stop - start, 65536):
                    out[start + s:start + min(s + 65536, stop - start)] = src[s:s + 65536]
                del src
        out.flush()
        del out
        os.replace(tmp, work / "features.npy")
        # Written after the rows and before the shards go, so a crash here resumes at _finalize.
        state = {"key_full": key_dict, "batch_size": layout["batch_size"], "next_row": n, "skipped": skipped,
                 "world_size": layout["world_size"], "assembled": True}
        write_json_atomic(work / "progress.json", state)
    return _finalize(work, final, run.image_set, key, key_dict, state, run.clip, run.layer, d, run.what)


def _finalize(work: Path, final: Path, image_set: ImageSet, key: str, key_dict: dict, state: dict, clip,
              layer: int, d: int, what: str = "class_token") -> FeatureCache:
    n = len(image_set)
    skipped = sorted({s["index"] for s in state["skipped"]})
    keep = np.setdiff1d(np.arange(n), np.asarray(skipped, dtype=np.int64))
    if len(keep) == 0:
        # An empty cache would pass for a result (and be reused) while every later step fails
        # or, worse, finds nothing; nothing in the folder is worth keeping for a rerun.
        shutil.rmtree(work, ignore_errors=True)
        first = state["skipped"][0]
        raise ValueError(f"extract: none of the {n} images of {image_set.describe()} could be decoded "
                         f"(e.g. {first['id']}: {first['error']}); nothing was cached")
    if skipped:
        # Compact once at the end so readers never see placeholder rows.
        full = np.load(work / "features.npy", mmap_mode="r")
        compact = rows_file(work / "features.compact.npy", (len(keep), full.shape[1]), full.dtype)
        for s in range(0, len(keep), 65536):
            compact[s:s + 65536] = full[keep[s:s + 65536]]
        compact.flush()
        del compact, full
        os.replace(work / "features.compact.npy", work / "features.npy")
        warnings.warn(
            f"{len(skipped)} of {n} images could not be decoded and were skipped "
            f"(e.g. {state['skipped'][0]['id']}: {state['skipped'][0]['error']}); "
            f"the list is in {final.name}/meta.json", SkippedImagesWarning, stacklevel=3)
    np.save(work / "labels.npy", np.asarray([image_set.label(int(i)) for i in keep], dtype=np.int64))
    (work / "ids.json").write_text(json.dumps([image_set.sample_id(int(i)) for i in keep]))
    meta = {
        "format": FORMAT_VERSION, "key": key, "key_full": key_dict, "n": int(len(keep)),
        "d": int(d), "layer": layer, "what": what, "model": clip.identity,
        "storage": str(np.load(work / "features.npy", mmap_mode="r").dtype),
        **({"tokens_per_image": int(d) // int(clip.model.visual.transformer.width),
            "token_width": int(clip.model.visual.transformer.width),
            "grid": list(map(int, clip.model.visual.grid_size))} if what == "patch_tokens" else {}),
        "image_set": image_set.describe(), "classnames": list(getattr(image_set, "classnames", [])),
        "skipped": state["skipped"], "batch_size": state["batch_size"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "complete": True,
        "files": {f: file_record(work / f) for f in DATA_FILES},  # one more read of the rows, once
    }
    write_json_atomic(work / "meta.json", meta)
    shutil.rmtree(work / "shards", ignore_errors=True)  # a sharded run's pieces, now in features.npy
    (work / "progress.json").unlink()
    os.replace(work, final)
    return FeatureCache(final)
