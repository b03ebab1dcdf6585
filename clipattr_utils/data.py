"""Image sets: the images whose class tokens `features.extract` caches.

Every image set answers the same small protocol (`ImageSet`): its length, a stable sample id,
an integer label (-1 when unlabeled), the decoded RGB image, and a fingerprint of everything
that determines its images and labels, so the feature cache can tell two sets apart.

Three on-disk layouts are built in, plus the rendered sandbox world
(`clipattr_utils.sandbox`):

- `ImageNetFolder`: ``root/<wnid>/*.JPEG``; the label is the position of the wnid among the
  sorted 1000 ImageNet-1k wnids, names are open_clip's ImageNet class names.
- `ISIC2019`: the ISIC 2019 ground-truth CSV (one-hot diagnosis columns) plus its image folder,
  with a binary melanoma-vs-rest option.
- `ImageFolder`: any folder of images, labels from an optional CSV (``filename,label``).

Decoding failures (corrupt, truncated or non-image files) are not decided here: `load_image`
raises, and the extractor skips and lists the file (or raises with ``strict=True``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
"""PIL modes of unsigned 16-bit grey pixels (a 16-bit grayscale PNG or TIFF opens as one)."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale (8- or 16-bit), CMYK, palette (with or without transparency) and RGBA -> RGB.

    Transparent pixels are composited on white so a palette/alpha icon does not come out black.
    16-bit grey keeps its high byte (v >> 8), as Pillow itself reads a 16-bit RGB PNG: PIL's
    own ``convert("RGB")`` clips every value above 255, which turns a 16-bit photo white.
    Modes without a fixed range (32-bit integers "I" other than a PNG's, float "F") are
    refused with the mode named rather than guessed.
    """
    if img.mode == "RGB":
        return img
    if img.mode in SIXTEEN_BIT_MODES or (img.mode == "I" and img.format == "PNG"):  # a PNG's "I" is 16-bit
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        raise ValueError(f"image mode {img.mode!r} ({'float' if img.mode == 'F' else 'integer'} pixels with no fixed "
                         "range) cannot be mapped to 8-bit RGB without a guess; convert it to 'L', 'RGB' or 16-bit "
                         "'I;16' first")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file fully (so truncation surfaces here, not later) and make it RGB."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


class ImageSet(Dataset):
    """Protocol of every image set. Subclasses implement the five methods below.

    Indexing (``image_set[i]``) returns ``(PIL.Image, label)``.
    """

    classnames: list[str] = []

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, i: int) -> str:
        """A stable id: the path relative to the set's root, or a rendered sample's name."""
        raise NotImplementedError

    def label(self, i: int) -> int:
        """Class index, -1 when the set has no label for this sample."""
        raise NotImplementedError

    def load_image(self, i: int) -> Image.Image:
        """The decoded RGB image; raises (OSError, ValueError, ...) when the file is unusable."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-able description stored in the feature cache's metadata."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 over the description, every sample id, its label and (for files) its size,
        modification time and a hash of its first and last bytes (`file_token`)."""
        h = hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode())
        for i in range(len(self)):
            h.update(f"{self.sample_id(i)}\t{self.label(i)}\t{self._content_token(i)}\n".encode())
        return h.hexdigest()

    def _content_token(self, i: int) -> str:
        # Files: `file_token`; rendered sets override nothing (their recipe is in describe()).
        return ""

    def labels(self) -> list[int]:
        return [self.label(i) for i in range(len(self))]

    def __getitem__(self, i: int):
        return self.load_image(i), self.label(i)


class _FileImageSet(ImageSet):
    """Shared by the on-disk layouts: a root, relative paths and labels."""

    def __init__(self, root: Path, relpaths: Sequence[str], labels: Sequence[int], classnames: list[str]):
        self.root = Path(root)
        self.relpaths = list(relpaths)
        self._labels = [int(v) for v in labels]
        self.classnames = list(classnames)
        if len(self.relpaths) == 0:
            raise ValueError(f"{type(self).__name__}: no images found under {self.root}")

    def __len__(self) -> int:
        return len(self.relpaths)

    def sample_id(self, i: int) -> str:
        return self.relpaths[i]

    def label(self, i: int) -> int:
        return self._labels[i]

    def path(self, i: int) -> Path:
        return self.root / self.relpaths[i]

    def load_image(self, i: int) -> Image.Image:
        return open_rgb(self.path(i))

    def _content_token(self, i: int) -> str:
        return file_token(self.path(i))


SAMPLE_BYTES = 4096
"""Bytes hashed at each end of an image file for its fingerprint (`file_token`)."""


def file_token(path: str | os.PathLike) -> str:
    """"size:mtime_ns:hash" of one image file, for the image set's fingerprint.

    The size alone let a replaced photo of the same byte size reuse the stale feature cache.
    The modification time catches every ordinary replacement; a hash of the first and last
    ``SAMPLE_BYTES`` bytes catches one that kept the old time (``cp -p``, ``rsync -a``, a
    clock with 1-2 s resolution): two encoded images that differ differ in their headers or
    in the end of their entropy-coded data. Hashing whole files would read the whole data
    set on every ``extract`` call, including the ones that only open an existing cache
    (ImageNet train: 140 GB); this reads at most 8 KiB per file (on 1000 photos: see
    benchmarks/fingerprint.py). Copying a folder without its times (``cp`` without ``-p``)
    changes its key: that costs one re-extraction, never a stale cache.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            h = hashlib.sha256(f.read(SAMPLE_BYTES))
            if st.st_size > SAMPLE_BYTES:
                f.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
                h.update(f.read(SAMPLE_BYTES))
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()[:16]}"


def _require_dir(root: str | os.PathLike, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what}: path does not exist: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"{what}: not a folder: {root}")
    return root


def _list_files(folder: Path, extensions: tuple[str, ...] | None) -> list[Path]:
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    if extensions is not None:
        files = [p for p in files if p.suffix.lower() in extensions]
    return sorted(files)


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in sorted order (class index = position), via timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = tuple(info.index_to_label_name(i) for i in range(info.num_classes()))
    if list(wnids) != sorted(wnids) or len(wnids) != 1000:
        raise RuntimeError("timm's ImageNet-1k synset list is not the sorted 1000 wnids")
    return wnids


@lru_cache(maxsize=1)
def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's cleaned ImageNet-1k class names, index-aligned with `imagenet_wnids`."""
    from open_clip import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)


class ImageNetFolder(_FileImageSet):
    """``root/<wnid>/*.JPEG`` (train or val after the usual preparation).

    Args:
        root: the split folder holding one sub-folder per wnid.
        classes: optional subset of class indices to keep (e.g. ``range(100)``).
        max_per_class: keep at most this many images per class (first in sorted order).
        every: keep every n-th image of each class in sorted order (the paper mines "every
            fifth image" of ImageNet train: ``every=5``), before ``max_per_class``.
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[int] | None = None,
                 max_per_class: int | None = None, every: int = 1):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"ImageNetFolder: every must be a positive integer, got {every!r}")
        root = _require_dir(root, "ImageNetFolder root")
        wnid_index = {w: i for i, w in enumerate(imagenet_wnids())}
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = [p.name for p in folders if p.name not in wnid_index]
        if unknown:
            raise ValueError(
                f"ImageNetFolder {root}: {len(unknown)} sub-folders are not ImageNet-1k wnids "
                f"(e.g. {unknown[:3]}); expected root/<wnid>/*.JPEG"
            )
        keep = None if classes is None else {int(c) for c in classes}
        relpaths, labels = [], []
        for folder in folders:
            label = wnid_index[folder.name]
            if keep is not None and label not in keep:
                continue
            files = _list_files(folder, IMAGE_EXTENSIONS)[::every]
            if max_per_class is not None:
                files = files[:max_per_class]
            relpaths += [str(f.relative_to(root).as_posix()) for f in files]
            labels += [label] * len(files)
        self.max_per_class = max_per_class
        self.every = every
        self.class_subset = None if keep is None else sorted(keep)
        super().__init__(root, relpaths, labels, list(imagenet_classnames()))

    def describe(self) -> dict:
        d = {"kind": "imagenet-folder", "root_name": self.root.name, "n": len(self),
             "classes": self.class_subset, "max_per_class": self.max_per_class}
        if self.every != 1:  # only when used, so caches keyed before it existed stay valid
            d["every"] = self.every
        return d


ISIC2019_DIAGNOSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


class ISIC2019(_FileImageSet):
    """ISIC 2019: ground-truth CSV (``image`` + one-hot diagnosis columns) and an image folder.

    Args:
        csv_path: e.g. ``ISIC_2019_Training_GroundTruth.csv``.
        image_dir: folder with ``<image>.jpg``.
        binary_melanoma: labels 1 = melanoma (MEL), 0 = anything else; classnames
            ``["non-melanoma", "melanoma"]``. Otherwise the label is the diagnosis column index.
    """

    def __init__(self, csv_path: str | os.PathLike, image_dir: str | os.PathLike,
                 binary_melanoma: bool = True, extension: str = ".jpg"):
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"ISIC2019: ground-truth CSV not found: {csv_path}")
        image_dir = _require_dir(image_dir, "ISIC2019 image_dir")
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "image" not in header:
                raise ValueError(f"ISIC2019 {csv_path}: no 'image' column (columns: {header})")
            diagnoses = [c for c in header if c != "image"]
            if not diagnoses:
                raise ValueError(f"ISIC2019 {csv_path}: no diagnosis columns after 'image'")
            if binary_melanoma and "MEL" not in diagnoses:
                raise ValueError(f"ISIC2019 {csv_path}: binary_melanoma needs a 'MEL' column (columns: {header})")
            rows = list(reader)
        relpaths, labels = [], []
        for line, row in enumerate(rows, start=2):
            onehot = [float(row[c]) for c in diagnoses]
            if sum(v > 0.5 for v in onehot) != 1:
                raise ValueError(f"ISIC2019 {csv_path}, line {line} ({row['image']}): diagnosis columns are not one-hot")
            label = onehot.index(max(onehot))
            relpaths.append(row["image"] + extension)
            labels.append(int(diagnoses[label] == "MEL") if binary_melanoma else label)
        missing = [p for p in relpaths if not (image_dir / p).is_file()]
        if missing:
            raise FileNotFoundError(
                f"ISIC2019 {csv_path}: {len(missing)} images named in the CSV are not in {image_dir} "
                f"(e.g. {missing[:3]})"
            )
        self.binary_melanoma = binary_melanoma
        self.csv_name = csv_path.name
        classnames = ["non-melanoma", "melanoma"] if binary_melanoma else diagnoses
        super().__init__(image_dir, relpaths, labels, classnames)

    def describe(self) -> dict:
        return {"kind": "isic2019", "csv": self.csv_name, "n": len(self), "binary_melanoma": self.binary_melanoma}


class ImageFolder(_FileImageSet):
    """Any folder of images (searched recursively), with an optional labels CSV.

    The CSV has a header with ``filename`` (path relative to ``root``) and ``label`` columns;
    labels may be integers or names (names are indexed in sorted order). With a CSV, exactly
    the files it names are used; without one, every image file under ``root``, label -1.
    """

    def __init__(self, root: str | os.PathLike, labels_csv: str | os.PathLike | None = None,
                 classnames: Sequence[str] | None = None):
        root = _require_dir(root, "ImageFolder root")
        if labels_csv is None:
            files = _list_files(root, IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"ImageFolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
            relpaths = [f.relative_to(root).as_posix() for f in files]
            labels = [-1] * len(relpaths)
            names = list(classnames or [])
        else:
            relpaths, labels, names = self._read_labels(root, Path(labels_csv), classnames)
        self.labels_csv_name = None if labels_csv is None else Path(labels_csv).name
        super().__init__(root, relpaths, labels, names)

    @staticmethod
    def _read_labels(root: Path, labels_csv: Path, classnames):
        if not labels_csv.is_file():
            raise FileNotFoundError(f"ImageFolder: labels CSV not found: {labels_csv}")
        with open(labels_csv, newline="") as f:
            reader = csv.DictReader(f)
            if not {"filename", "label"} <= set(reader.fieldnames or []):
                raise ValueError(f"ImageFolder {labels_csv}: needs 'filename' and 'label' columns, has {reader.fieldnames}")
            rows = [(r["filename"], (r["label"] or "").strip()) for r in reader]
        if not rows:
            raise ValueError(f"ImageFolder {labels_csv}: no rows")
        blank = [f"line {line} ({name})" for line, (name, v) in enumerate(rows, start=2) if not v]
        if blank:  # would otherwise become a class named ""
            raise ValueError(f"ImageFolder {labels_csv}: {len(blank)} rows have a blank label: "
                             f"{', '.join(blank[:5])}{', ...' if len(blank) > 5 else ''}; label every row "
                             "or leave unlabeled images out of the CSV")
        missing = [name for name, _ in rows if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"ImageFolder {labels_csv}: {len(missing)} files named in the CSV are not under {root} (e.g. {missing[:3]})"
            )
        raw = [v for _, v in rows]
        if all(v.lstrip("-").isdigit() for v in raw):
            labels = [int(v) for v in raw]
            names = list(classnames or [])
        else:
            names = list(classnames) if classnames else sorted(set(raw))
            unknown = sorted(set(raw) - set(names))
            if unknown:
                raise ValueError(f"ImageFolder {labels_csv}: labels {unknown[:5]} are not in classnames")
            labels = [names.index(v) for v in raw]
        return [name for name, _ in rows], labels, names

    def describe(self) -> dict:
        return {"kind": "image-folder", "root_name": self.root.name, "n": len(self), "labels_csv": self.labels_csv_name}


def array_to_image(array, what: str = "image") -> Image.Image:
    """An (H, W), (H, W, 3) or (H, W, 4) array as a PIL image, by the range its dtype implies.

    uint8 as is; uint16 by its high byte (as `to_rgb` reads 16-bit files); floats must lie in
    [0, 1] (x 255, rounded); other integers must lie in 0..255. A plain uint8 cast, as before,
    turned float images in [0, 1] black and wrapped uint16 values around; anything else is
    refused, naming ``what``, the dtype and the range found.
    """
    arr = np.asarray(array)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))):
        raise ValueError(f"{what}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return Image.fromarray(arr)
    if arr.dtype == np.uint16:
        return Image.fromarray((arr >> 8).astype(np.uint8))
    if arr.size == 0:
        raise ValueError(f"{what}: empty image of shape {arr.shape}")
    lo, hi = arr.min(), arr.max()
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo and hi <= 1):
            raise ValueError(f"{what}: float pixels must lie in [0, 1], found [{lo}, {hi}] ({arr.dtype}); for "
                             "0..255 values cast to uint8 first")
        return Image.fromarray(np.round(arr.astype(np.float64) * 255).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer) and 0 <= lo and hi <= 255:
        return Image.fromarray(arr.astype(np.uint8))
    raise ValueError(f"{what}: pixels of dtype {arr.dtype} in [{lo}, {hi}] have no known range; give uint8, uint16, "
                     "floats in [0, 1] or integers in 0..255")


class TensorImageSet(ImageSet):
    """Images already in memory (PIL images or arrays, see `array_to_image`) — for tests and benchmarks."""

    def __init__(self, images: Sequence, labels: Sequence[int] | None = None, name: str = "in-memory",
                 classnames: Sequence[str] = ()):
        self.images = [img if isinstance(img, Image.Image) else array_to_image(img, f"TensorImageSet image {i}")
                       for i, img in enumerate(images)]
        self._labels = [-1] * len(self.images) if labels is None else [int(v) for v in labels]
        if len(self._labels) != len(self.images):
            raise ValueError(f"TensorImageSet: {len(self.images)} images but {len(self._labels)} labels")
        self.name = name
        self.classnames = list(classnames)

    def __len__(self) -> int:
        return len(self.images)

    def sample_id(self, i: int) -> str:
        return f"{self.name}/{i:06d}"

    def label(self, i: int) -> int:
        return self._labels[i]

    def load_image(self, i: int) -> Image.Image:
        return to_rgb(self.images[i])

    def describe(self) -> dict:
        return {"kind": "in-memory", "name": self.name, "n": len(self)}

    def _content_token(self, i: int) -> str:
        return hashlib.sha256(self.images[i].tobytes()).hexdigest()[:16]
