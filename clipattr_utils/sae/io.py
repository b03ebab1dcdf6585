"""Save and load top-k SAEs: our layout, and the published layouts users already have.

Our layout: one folder holding ``sae.safetensors`` + ``cfg.json`` (EleutherAI sparsify's
file names) with SAELens' tensor names:

    W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,)

``cfg.json`` carries the architecture (``d_in``, ``d_sae``, ``k``, ``relu``), ``"format":
"clipattr-topk-sae"`` and its version, and :attr:`TopKSAE.meta` (the model / feature-cache
identity the SAE was trained on, the training config, metrics).

:func:`load_sae` (and ``TopKSAE.load``) also reads, picking the reader from the files present
(:func:`.formats.detect_layout`):

* SAELens folders (``cfg.json`` + ``sae_weights.safetensors``) — :mod:`.formats_saelens`;
* EleutherAI sparsify folders (``cfg.json`` without our ``format`` key + ``sae.safetensors``)
  — :mod:`.formats_sparsify`;
* ViT-Prisma CLIP SAEs (``config.json`` + ``weights.pt``) — :mod:`.published`;
* overcomplete ``TopKSAE`` state dicts (one ``*.pt``, ``k=`` from the caller) — :mod:`.formats_overcomplete`.

Each refuses, naming the file and the config key, every setting this top-k SAE cannot
reproduce. :func:`save_sae` with ``format="saelens"`` (or :func:`save_saelens`) exports to
SAELens. Loading is strict: a missing tensor, a tensor whose shape disagrees with the config,
or a feature width other than the caller's ``d_in`` raises an error naming both shapes.
There is no fallback to random weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import torch

from ..storage import save_tensors_atomic, write_json_atomic  # noqa: F401  (re-exported: sae.train, notebooks)
from .formats import (CFG_JSON, CLIPATTR, LAYOUTS, OUR_FORMAT, OUR_TENSORS, OUR_WEIGHTS, PRISMA, PRISMA_CONFIG,
                      SAELENS, SAELENS_WEIGHTS, SPARSIFY, FormatError, SAEParts, UnknownLayoutError, build_sae,
                      check_shapes, detect_layout, read_json, read_safetensors, require_int, subfolder_hint, warn_unit_norm)
from .formats_overcomplete import OVERCOMPLETE, read_overcomplete
from .formats_saelens import read_saelens, save_saelens
from .formats_sparsify import read_sparsify
from .model import ARCHITECTURES, TopKSAE
from .published import check_compatible, open_clip_identity, read_prisma

WEIGHTS_NAME = OUR_WEIGHTS
CONFIG_NAME = CFG_JSON
FORMAT = OUR_FORMAT
FORMAT_VERSION = 1
_ARCH_KEYS = ("architecture", "d_in", "d_sae", "k", "relu")
_RESERVED = _ARCH_KEYS + ("format", "format_version", "dtype")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# "owner/repo/path/to/weights.pt": a repo id followed by a file inside it.
_REPO_FILE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)/(?P<path>[\w./-]+\.(?:pt|pth|safetensors))$")
# What a hub download fetches, among the files directly in the chosen folder of the repo (never
# its subfolders: a sparsify repo holds one per hookpoint): every layout's config and weight names.
# "*.pt" covers Prisma's weights.pt and n_images_*.pt, "*.safetensors" Prisma's safetensors weights.
HUB_PATTERNS = (OUR_WEIGHTS, CFG_JSON, SAELENS_WEIGHTS, PRISMA_CONFIG, "*.pt", "*.pth", "*.safetensors")
SAVE_FORMATS = ("clipattr", "saelens")

__all__ = ["save_sae", "load_sae", "save_saelens", "check_compatible", "open_clip_identity", "resolve",
           "detect_layout", "hub_files", "FormatError", "UnknownLayoutError", "LAYOUTS", "write_json_atomic",
           "save_tensors_atomic", "WEIGHTS_NAME", "CONFIG_NAME", "FORMAT", "FORMAT_VERSION"]


def save_sae(sae: TopKSAE, directory: str | os.PathLike, *, format: str = "clipattr", **meta: Any) -> Path:
    """Write ``sae`` into ``directory``; returns the folder.

    ``format="clipattr"`` (default): ``sae.safetensors`` + ``cfg.json`` in our layout.
    ``format="saelens"``: an SAELens folder (see :func:`save_saelens`; ``model_name=`` and
    ``hook_name=`` are accepted there).

    ``meta`` entries are merged into ``sae.meta`` (and so into cfg.json). Each file is
    written atomically; the weights go first, so a cfg.json always describes complete
    weights.
    """
    if format == "saelens":
        return save_saelens(sae, directory, **meta)
    if format != "clipattr":
        raise ValueError(f"save_sae: format={format!r}; choose one of {SAVE_FORMATS}")
    directory = Path(directory)
    clash = set(meta) & set(_RESERVED)
    if clash:
        raise ValueError(f"save_sae: meta keys {sorted(clash)} are reserved for the architecture")
    sae.meta.update(meta)
    clash = set(sae.meta) & set(_RESERVED)
    if clash:
        raise ValueError(f"save_sae: meta keys {sorted(clash)} are reserved for the architecture")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: getattr(sae, name) for name in OUR_TENSORS}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    save_tensors_atomic(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt", "d_in": str(sae.d_in),
                                                                     "d_sae": str(sae.d_sae), "k": str(sae.k)})
    cfg = {**sae.config(), "format": FORMAT, "format_version": FORMAT_VERSION,
           "dtype": str(sae.W_dec.dtype).removeprefix("torch."), **sae.meta}
    write_json_atomic(directory / CONFIG_NAME, cfg)
    return directory


def _read_clipattr(folder: Path, weights_path: Path | None = None) -> SAEParts:
    """Our own layout."""
    cfg_path, weights_path = folder / CONFIG_NAME, Path(weights_path or folder / WEIGHTS_NAME)
    cfg = read_json(cfg_path)
    version = cfg.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise FormatError(f"{cfg_path}: format_version={version!r}; this package reads version {FORMAT_VERSION}")
    arch = cfg.get("architecture", "topk")
    if arch not in ARCHITECTURES:
        raise FormatError(f"{cfg_path}: architecture {arch!r} is not one of {ARCHITECTURES}")
    d_in, d_sae, k = (require_int(cfg, key, cfg_path) for key in ("d_in", "d_sae", "k"))
    relu = cfg.get("relu", True)
    if not isinstance(relu, bool):
        raise FormatError(f"{cfg_path}: relu={relu!r} is not true/false")
    tensors = read_safetensors(weights_path)
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if arch == "jumprelu":
        expected["threshold"] = (d_sae,)
    check_shapes(weights_path, cfg_path, d_in, d_sae, tensors, expected)
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise FormatError(f"{weights_path}: holds tensor(s) {extra} besides {list(expected)} "
                          f"(architecture {arch!r})")
    meta = {key: value for key, value in cfg.items() if key not in _RESERVED}
    return SAEParts(CLIPATTR, d_in, d_sae, k, relu, tensors, meta, weights_path)


READERS: dict[str, Callable[[Path, Path | None], SAEParts]] = {
    CLIPATTR: _read_clipattr, SPARSIFY: read_sparsify, SAELENS: read_saelens, PRISMA: read_prisma,
}


def _split_file(path: Path) -> tuple[Path, str | None]:
    """A path to a file -> (its folder, its name as the weights to use)."""
    if path.is_file():
        return path.parent, path.name
    return path, None


def resolve(path_or_repo: str | os.PathLike, subfolder: str | None = None, revision: str | None = None,
            *, with_hint: bool = False) -> Path | tuple[Path, str | None]:
    """A local SAE folder for ``path_or_repo``: the folder itself, or a Hugging Face download.

    A path to a file inside the folder (``.../weights.pt``) selects that file as the weights.
    With ``with_hint`` the return value is ``(folder, file name or None)``.
    """
    local = Path(path_or_repo)
    if subfolder:
        local = local / subfolder
    folder, hint = _split_file(local)
    if folder.is_dir():
        return (folder, hint) if with_hint else folder
    text = str(path_or_repo)
    repo_file = _REPO_FILE.match(text)
    if repo_file:  # owner/repo/[folder/]weights.pt: the file's folder joins the subfolder
        text, inner = repo_file["repo"], Path(repo_file["path"])
        hint = inner.name
        parent = "/".join(p for p in (subfolder, inner.parent.as_posix()) if p and p != ".")
        subfolder = parent or None
    elif _REPO_ID.match(text):
        hint = None
    else:
        raise FileNotFoundError(f"TopKSAE.load: {local} is not a folder (and {text!r} is not a Hugging Face repo id "
                                "'owner/repo' or 'owner/repo/path/to/weights.pt')")
    try:
        import huggingface_hub
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with open_clip
        raise ImportError(f"TopKSAE.load: {text!r} is not a local folder and huggingface_hub is not installed "
                          "to download it") from err
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""

    def failed(err: Exception) -> FileNotFoundError:  # network, auth, missing repo: keep the cause
        return FileNotFoundError(
            f"TopKSAE.load: {text!r} is not a local folder (looked in {local.resolve()}) and downloading it "
            f"from the Hugging Face Hub failed ({type(err).__name__}: {err})")

    try:
        listing = huggingface_hub.list_repo_files(text, revision=revision)
    except Exception as err:
        raise failed(err) from err
    files = hub_files(listing, prefix, hint)
    if not files:
        subs = sorted({f[len(prefix):].split("/")[0] for f in listing
                       if f.startswith(prefix) and "/" in f[len(prefix):]})
        where = f"folder {prefix.rstrip('/')!r} of " if prefix else ""
        raise FileNotFoundError(f"TopKSAE.load: the {where}Hugging Face repo {text!r} holds no SAE config or weights "
                                f"file.{subfolder_hint('Its subfolders', subs, text, prefix)}")
    try:
        root = Path(huggingface_hub.snapshot_download(text, revision=revision, allow_patterns=files))
    except Exception as err:
        raise failed(err) from err
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise FileNotFoundError(f"TopKSAE.load: Hugging Face repo {text!r} has no folder {subfolder!r}")
    return (folder, hint) if with_hint else folder


def hub_files(listing: list[str], prefix: str = "", hint: str | None = None) -> list[str]:
    """The files of a hub repo's ``listing`` to download for the folder ``prefix`` ("" or "sub/"):
    those directly in it whose names a layout uses (:data:`HUB_PATTERNS`); with ``hint`` (the weights
    file asked for), its configs and that file only."""
    from fnmatch import fnmatch

    level = [f for f in listing if f.startswith(prefix) and "/" not in f[len(prefix):]]
    if hint is not None:
        return [f for f in level if f[len(prefix):] in (hint, CFG_JSON, PRISMA_CONFIG)]
    return [f for f in level if any(fnmatch(f[len(prefix):], pattern) for pattern in HUB_PATTERNS)]


def load_sae(path_or_repo: str | os.PathLike, *, d_in: int | None = None, subfolder: str | None = None,
             revision: str | None = None, device: str | torch.device = "cpu", clip: Any = None,
             max_active: int | None = None, k: int | None = None, tokens: str = "class") -> TopKSAE:
    """Load an SAE folder (local, or a Hugging Face repo id with optional ``subfolder``).

    The layout (ours, SAELens, sparsify, Prisma) is picked from the files present; see the
    module docstring. Settings this top-k SAE cannot reproduce are refused (:class:`FormatError`,
    naming the file and key).

    Args:
        path_or_repo: a folder, a weights file inside one (``.../weights.pt``), or
            ``"owner/repo"``.
        d_in: the width of the features it will be applied to (e.g. ``head.d_pre``); a
            mismatch raises, naming both shapes.
        subfolder: folder inside the repo or path (sparsify stores one per hookpoint).
        revision: hub revision (branch, tag or commit).
        device: where the parameters go.
        clip: a ``models.LoadedCLIP`` to check the SAE against (:func:`check_compatible`:
            width, model name / pretrained tag, layer); also supplies ``d_in``.
        max_active: the code width of a JumpReLU SAE (the most latents one sample keeps; see
            :mod:`.model`); an error for a top-k SAE, whose width is its k.
        k: the k of a top-k SAE whose file does not store it (overcomplete's state dicts);
            for any other layout it must equal the file's k.
        tokens: ``"class"`` (default: the SAE will read class tokens) or ``"patch"`` (it will
            read patch tokens: `spatial.patch_activations`, patch-token caches); with "patch",
            Prisma SAEs trained on patch tokens only (``use_patches_only``) load.

    ``sae.meta`` records the provenance: ``source``, and for imported layouts
    ``source_format``, ``source_config``, and where known ``model_name``, ``hook_name``,
    ``layer`` (the ``layer=`` of ``features.extract``) and ``open_clip``.
    """
    if tokens not in ("class", "patch"):
        raise ValueError(f"TopKSAE.load: tokens must be 'class' or 'patch', got {tokens!r}")
    folder, hint = resolve(path_or_repo, subfolder, revision, with_hint=True)
    layout, weights_path = detect_layout(folder, hint)
    if layout == OVERCOMPLETE:
        parts = read_overcomplete(folder, weights_path, k)
    elif layout == PRISMA:
        parts = read_prisma(folder, weights_path, tokens=tokens)
    else:
        parts = READERS[layout](folder, weights_path)
        if k is not None and "threshold" not in parts.tensors and int(k) != parts.k:
            raise ValueError(f"TopKSAE.load: k={k} was passed, but {parts.weights_path} is a top-k SAE with "
                             f"k={parts.k}; leave k out, the file says it")
        if k is not None and "threshold" in parts.tensors:
            raise ValueError(f"TopKSAE.load: {parts.weights_path} is a JumpReLU SAE (no k); its code width is "
                             "max_active=")
    if max_active is not None:
        if "threshold" not in parts.tensors:
            raise ValueError(f"TopKSAE.load: max_active={max_active} applies to JumpReLU SAEs; the SAE in {folder} "
                             f"is top-k with k={parts.k}")
        if not 0 < int(max_active) <= parts.d_sae:
            raise ValueError(f"TopKSAE.load: max_active must be in 1..d_sae={parts.d_sae}, got {max_active}")
        parts.k = int(max_active)
        parts.meta["max_active"] = parts.k
    if d_in is None and clip is not None:
        d_in = int(clip.d_pre)
    if d_in is not None and int(d_in) != parts.d_in:
        raise ValueError(f"TopKSAE.load: the SAE in {folder} was trained on features of width d_in={parts.d_in} "
                         f"(W_dec shape ({parts.d_sae}, {parts.d_in})), but the features here have width "
                         f"d_in={d_in} (shape (N, {d_in}))")
    stored_dtype = parts.tensors["W_dec"].dtype
    sae = build_sae(parts)
    sae.meta.setdefault("source", str(path_or_repo) + (f"/{subfolder}" if subfolder else ""))
    warn_unit_norm(sae, parts.weights_path, stored_dtype)
    if clip is not None:
        check_compatible(sae, clip)
    return sae.to(device)
