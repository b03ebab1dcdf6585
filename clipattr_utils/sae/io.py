"""Save and load top-k SAEs: ``sae.safetensors`` + ``cfg.json`` in one folder.

The layout follows EleutherAI's *sparsify* (one folder per SAE holding ``sae.safetensors``
and ``cfg.json``) with SAELens' tensor names:

    W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,)

``cfg.json`` carries the architecture (``d_in``, ``d_sae``, ``k``, ``relu``), the format
version and :attr:`TopKSAE.meta` (the model / feature-cache identity the SAE was trained
on, the training config, metrics). Folders written by sparsify itself (``encoder.weight``
(d_sae, d_in), ``encoder.bias``, ``W_dec``, ``b_dec``; ``num_latents`` / ``expansion_factor``
in cfg.json) load too: its encoder is ReLU then top-k, our ``relu=True``.

Loading is strict: a missing tensor, a tensor whose shape disagrees with cfg.json, or a
feature width other than the caller's ``d_in`` raises an error naming both shapes. There
is no fallback to random weights.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .model import TopKSAE

WEIGHTS_NAME = "sae.safetensors"
CONFIG_NAME = "cfg.json"
FORMAT = "clipattr-topk-sae"
FORMAT_VERSION = 1
_ARCH_KEYS = ("architecture", "d_in", "d_sae", "k", "relu")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _atomic_write_bytes(path: Path, writer) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(path: Path, obj: Any) -> None:
    """JSON to ``path`` through a temp file and ``os.replace`` (readers never see half a file)."""

    def writer(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write_bytes(Path(path), writer)


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors to ``path`` atomically; tensors are made contiguous CPU copies."""
    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    _atomic_write_bytes(Path(path), lambda tmp: save_file(flat, str(tmp), metadata=metadata))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in cfg.json")


def save_sae(sae: TopKSAE, directory: str | os.PathLike, **meta: Any) -> Path:
    """Write ``directory/sae.safetensors`` and ``directory/cfg.json``; returns the folder.

    ``meta`` entries are merged into ``sae.meta`` (and so into cfg.json). Each file is
    written atomically; the weights go first, so a cfg.json always describes complete
    weights.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sae.meta.update(meta)
    clash = set(sae.meta) & set(_ARCH_KEYS + ("format", "format_version", "dtype"))
    if clash:
        raise ValueError(f"save_sae: meta keys {sorted(clash)} are reserved for the architecture")
    tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec}
    save_tensors_atomic(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt", "d_in": str(sae.d_in),
                                                                     "d_sae": str(sae.d_sae), "k": str(sae.k)})
    cfg = {**sae.config(), "format": FORMAT, "format_version": FORMAT_VERSION,
           "dtype": str(sae.W_dec.dtype).removeprefix("torch."), **sae.meta}
    write_json_atomic(directory / CONFIG_NAME, cfg)
    return directory


def resolve(path_or_repo: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> Path:
    """A local SAE folder for ``path_or_repo``: the folder itself, or a Hugging Face download."""
    local = Path(path_or_repo)
    if local.is_file() and local.name == WEIGHTS_NAME:
        local = local.parent
    if subfolder:
        local = local / subfolder
    if local.is_dir():
        return local
    text = str(path_or_repo)
    if not _REPO_ID.match(text):
        raise FileNotFoundError(f"TopKSAE.load: {local} is not a folder (and {text!r} is not a Hugging Face repo id)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with open_clip
        raise ImportError(f"TopKSAE.load: {text!r} is not a local folder and huggingface_hub is not installed "
                          "to download it") from err
    patterns = [f"{subfolder.strip('/')}/{name}" for name in (WEIGHTS_NAME, CONFIG_NAME)] if subfolder \
        else [WEIGHTS_NAME, CONFIG_NAME]
    try:
        root = Path(snapshot_download(text, revision=revision, allow_patterns=patterns))
    except Exception as err:  # network, auth, missing repo: keep the cause, say what was tried
        raise FileNotFoundError(
            f"TopKSAE.load: {text!r} is not a local folder (looked in {local.resolve()}) and downloading it "
            f"from the Hugging Face Hub failed ({type(err).__name__}: {err})") from err
    folder = root / subfolder if subfolder else root
    if not (folder / WEIGHTS_NAME).is_file():
        missing = folder.relative_to(root) / WEIGHTS_NAME
        raise FileNotFoundError(f"TopKSAE.load: Hugging Face repo {text!r} has no {missing}")
    return folder


def _architecture(cfg: dict, where: Path) -> dict:
    """Normalise our cfg.json and sparsify's to (d_in, d_sae, k, relu)."""
    if "d_in" not in cfg or "k" not in cfg:
        raise ValueError(f"{where}: cfg.json lacks d_in or k, got keys {sorted(cfg)}")
    d_in = int(cfg["d_in"])
    if "d_sae" in cfg:
        d_sae = int(cfg["d_sae"])
    elif cfg.get("num_latents"):  # sparsify
        d_sae = int(cfg["num_latents"])
    elif cfg.get("expansion_factor"):
        d_sae = int(cfg["expansion_factor"]) * d_in
    else:
        raise ValueError(f"{where}: cfg.json gives no width (d_sae, num_latents or expansion_factor)")
    arch = cfg.get("architecture", "topk")
    if arch != "topk":
        raise ValueError(f"{where}: architecture {arch!r} is not a top-k SAE")
    return {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": int(cfg["k"]),
            "relu": bool(cfg.get("relu", True))}


def load_sae(path_or_repo: str | os.PathLike, *, d_in: int | None = None, subfolder: str | None = None,
             revision: str | None = None, device: str | torch.device = "cpu") -> TopKSAE:
    """Load an SAE folder (local, or a Hugging Face repo id with optional ``subfolder``).

    Args:
        path_or_repo: folder with sae.safetensors + cfg.json, or ``"owner/repo"``.
        d_in: the width of the features it will be applied to (e.g. ``head.d_pre``); a
            mismatch raises, naming both shapes.
        subfolder: folder inside the repo or path (sparsify stores one per hookpoint).
        revision: hub revision (branch, tag or commit).
        device: where the parameters go.
    """
    folder = resolve(path_or_repo, subfolder, revision)
    cfg_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"TopKSAE.load: missing {p}")
    cfg = json.loads(cfg_path.read_text())
    arch = _architecture(cfg, cfg_path)
    if d_in is not None and int(d_in) != arch["d_in"]:
        raise ValueError(f"TopKSAE.load: the SAE in {folder} was trained on features of width d_in={arch['d_in']} "
                         f"(W_dec shape ({arch['d_sae']}, {arch['d_in']})), but the features here have width "
                         f"d_in={d_in} (shape (N, {d_in}))")
    tensors = load_file(str(weights_path), device="cpu")
    if "W_enc" not in tensors and "encoder.weight" in tensors:  # sparsify naming
        tensors["W_enc"] = tensors.pop("encoder.weight").t()
        tensors["b_enc"] = tensors.pop("encoder.bias")
    expected = {"W_enc": (arch["d_in"], arch["d_sae"]), "W_dec": (arch["d_sae"], arch["d_in"]),
                "b_enc": (arch["d_sae"],), "b_dec": (arch["d_in"],)}
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise ValueError(f"TopKSAE.load: {weights_path} lacks tensors {missing} (has {sorted(tensors)})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"TopKSAE.load: {weights_path} holds {name} of shape {tuple(tensors[name].shape)}, "
                             f"but cfg.json (d_in={arch['d_in']}, d_sae={arch['d_sae']}) implies {shape}")
    sae = TopKSAE(arch["d_in"], arch["d_sae"], arch["k"], arch["relu"])
    with torch.no_grad():
        for name in expected:
            getattr(sae, name).copy_(tensors[name])  # copy_ keeps the latent-major W_enc layout
    sae.meta = {key: value for key, value in cfg.items()
                if key not in _ARCH_KEYS + ("format", "format_version", "dtype")}
    sae.meta.setdefault("source", str(path_or_repo) + (f"/{subfolder}" if subfolder else ""))
    norms = sae.decoder_norms()
    if (norms - 1).abs().max() > 1e-3:
        warnings.warn(f"TopKSAE.load: decoder rows in {weights_path} are not unit norm (range "
                      f"{norms.min():.4f}..{norms.max():.4f}); the paper's Eq. 9 assumes ||v_j|| = 1")
    return sae.to(device)
