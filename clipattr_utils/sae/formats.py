"""Shared plumbing for the SAE file layouts :func:`.io.load_sae` reads.

Each reader (ours in :mod:`.io`, :mod:`.formats_saelens`, :mod:`.formats_sparsify`,
:mod:`.published`) turns one folder into :class:`SAEParts`: the architecture in this
package's terms (``d_in``, ``d_sae``, ``k``, ``relu``), the four tensors in our orientation
and the provenance that goes into :attr:`TopKSAE.meta`. :func:`build_sae` makes the model.

A reader *refuses* (raises :class:`FormatError`, naming the file and the key) every setting
:class:`TopKSAE` cannot reproduce exactly. It never guesses and never drops a tensor.

Which reader runs is decided by the files present (:func:`detect_layout`):

* clipattr: ``cfg.json`` with ``"format": "clipattr-topk-sae"`` + ``sae.safetensors``;
* sparsify: ``cfg.json`` without a ``format`` key + ``sae.safetensors``;
* saelens: ``cfg.json`` + ``sae_weights.safetensors``;
* prisma: ``config.json`` + ``weights.pt`` (or exactly one ``*.pt`` / ``*.pth`` /
  ``*.safetensors``; a path to the file picks it when there are several).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .model import TopKSAE

CLIPATTR = "clipattr"
SPARSIFY = "sparsify"
SAELENS = "saelens"
PRISMA = "prisma"

OUR_WEIGHTS = "sae.safetensors"  # ours and sparsify
CFG_JSON = "cfg.json"  # ours, sparsify and SAELens
SAELENS_WEIGHTS = "sae_weights.safetensors"
PRISMA_CONFIG = "config.json"
PRISMA_WEIGHTS = "weights.pt"
OUR_FORMAT = "clipattr-topk-sae"  # cfg.json "format" of our own layout
# Files other layouts keep beside their weights; never taken for Prisma weights.
_NOT_PRISMA_WEIGHTS = {OUR_WEIGHTS, SAELENS_WEIGHTS, "sparsity.safetensors", "ctx.safetensors"}

LAYOUTS: dict[str, str] = {
    CLIPATTR: f"{CFG_JSON} with \"format\": \"{OUR_FORMAT}\" + {OUR_WEIGHTS} (this package)",
    SPARSIFY: f"{CFG_JSON} without a \"format\" key + {OUR_WEIGHTS} (EleutherAI sparsify)",
    SAELENS: f"{CFG_JSON} + {SAELENS_WEIGHTS} (SAELens)",
    PRISMA: f"{PRISMA_CONFIG} + {PRISMA_WEIGHTS} or one other *.pt / *.pth / *.safetensors (ViT-Prisma)",
    "overcomplete": "one *.pt / *.pth torch.save state dict of overcomplete's TopKSAE, no config (pass k=)",
}
OUR_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")


class FormatError(ValueError):
    """A checkpoint this top-k SAE cannot reproduce, or a malformed one; the message names the file and key."""


class UnknownLayoutError(FileNotFoundError):
    """A folder that holds none of the known layouts; the message lists its files and the layouts."""


@dataclass
class SAEParts:
    """One checkpoint in this package's terms, before it becomes a :class:`TopKSAE`."""

    layout: str
    d_in: int
    d_sae: int
    k: int
    relu: bool
    tensors: dict[str, torch.Tensor]
    """W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,); and ``threshold``
    (d_sae,) for a jumprelu SAE (``k`` is then its code width)."""
    meta: dict[str, Any] = field(default_factory=dict)
    weights_path: Path | None = None


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; a parse error or a non-object names the file."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file on the CPU; a truncated or malformed file raises a
    `FormatError` naming it (safetensors' own error says only "incomplete metadata")."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise  # already names the file
    except (SafetensorError, OSError) as err:
        raise FormatError(f"{path}: not a readable safetensors file ({Path(path).stat().st_size} bytes; truncated "
                          f"or damaged?): {err}") from err


def require_int(cfg: Mapping, key: str, where: Path, *, positive: bool = True) -> int:
    """``cfg[key]`` as an int (bools are not ints here); missing or malformed names the key."""
    if key not in cfg or cfg[key] is None:
        raise FormatError(f"{where}: lacks {key!r} (has keys {sorted(cfg)})")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where}: {key}={value!r} is not an integer")
    if positive and value <= 0:
        raise FormatError(f"{where}: {key}={value} must be positive")
    return value


def refuse_extra_tensors(path: Path, names: set[str] | list[str], allowed: set[str] | tuple[str, ...],
                         why: str = "") -> None:
    """Refuse tensors a plain top-k SAE has no place for (dropping them would change the model)."""
    extra = sorted(set(names) - set(allowed))
    if extra:
        raise FormatError(f"{path}: holds tensor(s) {extra} that a plain top-k SAE has no place for "
                          f"(expected only {sorted(allowed)}){'; ' + why if why else ''}. Refusing rather than "
                          "dropping them")


def check_shapes(path: Path, cfg_path: Path, d_in: int, d_sae: int, tensors: Mapping[str, torch.Tensor],
                 expected: Mapping[str, tuple[int, ...]]) -> None:
    """Missing tensors and shapes that disagree with the config, each named with both shapes."""
    missing = [name for name in expected if name not in tensors]
    if missing:
        raise FormatError(f"TopKSAE.load: {path} lacks tensors {missing} (has {sorted(tensors)})")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise FormatError(f"TopKSAE.load: {path} holds {name} of shape {tuple(tensors[name].shape)}, but "
                              f"{cfg_path.name} (d_in={d_in}, d_sae={d_sae}) implies {tuple(shape)}")
    for name in expected:
        if not tensors[name].is_floating_point():
            raise FormatError(f"TopKSAE.load: {path} holds {name} of dtype {tensors[name].dtype}, not a float")


def build_sae(parts: SAEParts) -> TopKSAE:
    """A :class:`TopKSAE` holding ``parts.tensors`` exactly (values cast to the model's float32).

    ``copy_`` keeps the latent-major layout of ``W_enc`` (see :mod:`.model`).
    """
    if not 0 < parts.k <= parts.d_sae:
        raise FormatError(f"{parts.weights_path}: k={parts.k} must be in 1..d_sae={parts.d_sae}")
    theta = parts.tensors.get("threshold")
    sae = TopKSAE(parts.d_in, parts.d_sae, parts.k, parts.relu,
                  threshold=None if theta is None else theta.float())
    with torch.no_grad():
        for name in OUR_TENSORS:
            getattr(sae, name).copy_(parts.tensors[name])
    sae.meta = dict(parts.meta)
    return sae


def _prisma_weight_candidates(folder: Path, files: set[str]) -> list[str]:
    if PRISMA_WEIGHTS in files:
        return [PRISMA_WEIGHTS]
    pickles = sorted(f for f in files if f.endswith((".pt", ".pth")))
    if pickles:
        return pickles
    return sorted(f for f in files if f.endswith(".safetensors") and f not in _NOT_PRISMA_WEIGHTS)


def detect_layout(folder: Path, weights_hint: str | None = None) -> tuple[str, Path]:
    """(layout, weights file) for ``folder``, from the files it holds.

    ``weights_hint`` is a file name the caller pointed at (``TopKSAE.load("dir/weights.pt")``).
    A folder matching no layout, or more than one, is an error listing its files.
    """
    folder = Path(folder)
    if weights_hint in (CFG_JSON, PRISMA_CONFIG):  # pointed at the config: the folder decides
        weights_hint = None
    files = {p.name for p in folder.iterdir() if p.is_file()}
    found: list[tuple[str, Path]] = []
    if CFG_JSON in files and OUR_WEIGHTS in files and weights_hint in (None, OUR_WEIGHTS):
        fmt = read_json(folder / CFG_JSON).get("format")
        if fmt == OUR_FORMAT:
            found.append((CLIPATTR, folder / OUR_WEIGHTS))
        elif fmt is None:
            found.append((SPARSIFY, folder / OUR_WEIGHTS))
        else:
            raise FormatError(f"{folder / CFG_JSON}: format={fmt!r} is not {OUR_FORMAT!r}, and a sparsify "
                              "cfg.json has no 'format' key; cannot tell what this folder holds")
    if CFG_JSON in files and SAELENS_WEIGHTS in files and weights_hint in (None, SAELENS_WEIGHTS):
        found.append((SAELENS, folder / SAELENS_WEIGHTS))
    if PRISMA_CONFIG in files:
        if weights_hint is not None and weights_hint not in (OUR_WEIGHTS, SAELENS_WEIGHTS):
            found.append((PRISMA, folder / weights_hint))
        elif weights_hint is None:
            candidates = _prisma_weight_candidates(folder, files)
            if len(candidates) > 1:
                raise FormatError(f"{folder}: {PRISMA_CONFIG} sits beside several possible weight files "
                                  f"{candidates}; pass the one to load, e.g. TopKSAE.load('{folder / candidates[0]}')")
            if candidates:
                found.append((PRISMA, folder / candidates[0]))
    if not found and CFG_JSON not in files and PRISMA_CONFIG not in files:
        # overcomplete: one torch.save state dict and nothing else to say what it is
        from .formats_overcomplete import OVERCOMPLETE, load_state

        pickles = [weights_hint] if weights_hint in files else sorted(f for f in files if f.endswith((".pt", ".pth")))
        hits = [f for f in pickles if load_state(folder / f) is not None]
        if len(hits) > 1:
            raise FormatError(f"{folder}: several overcomplete checkpoints {hits}; pass the one to load, e.g. "
                              f"TopKSAE.load('{folder / hits[0]}', k=...)")
        if hits:
            found.append((OVERCOMPLETE, folder / hits[0]))
    if len(found) == 1:
        return found[0]
    listing = "\n".join(f"  - {name}: {desc}" for name, desc in LAYOUTS.items())
    if not found:
        _refuse_saev(folder, [weights_hint] if weights_hint in files else sorted(files))
        raise UnknownLayoutError(
            f"TopKSAE.load: {folder} holds no SAE layout this package reads. Files found: "
            f"{sorted(files) or 'none'}{f' (asked for {weights_hint})' if weights_hint else ''}."
            f"{_subfolder_hint(folder)} Known layouts:\n{listing}")
    raise FormatError(f"TopKSAE.load: {folder} matches several layouts {[name for name, _ in found]} "
                      f"(files {sorted(files)}); pass the weights file to load, e.g. "
                      f"TopKSAE.load('{found[0][1]}')")


def _refuse_saev(folder: Path, names: list[str]) -> None:
    """saev (``saev.nn.dump``) writes one ``*.pt`` file: a JSON line with its config, then a
    ``torch.save`` state dict. Its SAE is a ReLU SAE with an L1 penalty: every latent with a
    positive pre-activation is active, no fixed k. Say that, instead of "unknown layout"."""
    for name in names:
        if not name.endswith((".pt", ".pth")):
            continue
        with open(folder / name, "rb") as fd:
            first = fd.readline(1 << 16)
        try:
            cfg = json.loads(first.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(cfg, dict):
            raise FormatError(
                f"{folder / name}: a saev checkpoint (a JSON config line {sorted(cfg)} before a torch state "
                f"dict). saev trains ReLU SAEs with an L1 penalty (d_sae = d_vit x exp_factor = "
                f"{cfg.get('d_vit', '?')} x {cfg.get('exp_factor', '?')}): any number of latents is active, so "
                "this package's top-k SAE, and the exact top-k attribution built on it, does not reproduce it")


def subfolder_hint(where: str, subs: list[str], load_arg: str, prefix: str = "", shown: int = 8) -> str:
    """How to pick one of the subfolders ``subs`` of a checkpoint root (sparsify keeps one per
    hookpoint, ``layers.N/``), local or on the hub; "" when there are none."""
    if not subs:
        return ""
    listed = subs[:shown] + ([f"... {len(subs) - shown} more"] if len(subs) > shown else [])
    return (f" {where}: {listed}; pick one with subfolder=, e.g. "
            f"TopKSAE.load({load_arg!r}, subfolder={prefix + subs[0]!r}).")


def _subfolder_hint(folder: Path) -> str:
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / CFG_JSON).is_file())
    return subfolder_hint(f"Its subfolders with a {CFG_JSON}", subs, str(folder))


def unit_norm_tolerance(stored_dtype: torch.dtype | None = None) -> float:
    """How far ||v_j|| may be from 1 before `warn_unit_norm` speaks: 1e-3, or four machine epsilons
    of the dtype the checkpoint stored W_dec in when that is coarser (bf16 rounds a unit row to a
    norm up to 2^-8 away from 1, fp16 2^-11; rows normalised in half precision drift a few more)."""
    if stored_dtype is None or not stored_dtype.is_floating_point:
        return 1e-3
    return max(1e-3, 4 * torch.finfo(stored_dtype).eps)


def warn_unit_norm(sae: TopKSAE, where: Path | None, stored_dtype: torch.dtype | None = None) -> None:
    """The paper's Eq. 9 assumes ||v_j|| = 1; say so when a checkpoint's decoder rows are not (beyond
    the rounding of ``stored_dtype``, the dtype W_dec had in the file)."""
    norms = sae.decoder_norms()
    if (norms - 1).abs().max() > unit_norm_tolerance(stored_dtype):
        warnings.warn(f"TopKSAE.load: decoder rows in {where} are not unit norm (range "
                      f"{norms.min():.4f}..{norms.max():.4f}); the paper's Eq. 9 assumes ||v_j|| = 1", stacklevel=3)


def falsy(value: Any) -> bool:
    """A config value that leaves a feature switched off (False, None, 0, "", "none", empty)."""
    if isinstance(value, str):
        return value.strip().lower() in ("", "none", "false")
    return not value
