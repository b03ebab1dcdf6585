"""ViT-Prisma CLIP SAEs, and checking a loaded SAE against the CLIP it will be applied to.

**Prisma layout** (e.g. Hugging Face ``Prisma-Multimodal/sae-top_k-64-cls_only-layer_11-hook_resid_post``):
a folder with ``config.json`` (``VisionModelSAERunnerConfig.save_config``: the dataclass
fields as JSON, ``dtype`` / ``device`` as ``{"__type__": ..., "value": ...}``) and
``weights.pt``, a ``torch.save`` of the SAE's state dict: ``W_enc`` (d_in, d_sae), ``W_dec``
(d_sae, d_in), ``b_enc`` (d_sae,), ``b_dec`` (d_in,). The weights are read with
``torch.load(weights_only=True)`` only; a pickle that needs more than tensors (Prisma's
older single-file checkpoints pickle the config object) is refused, never unpickled.

Prisma's encoder: ``hidden_pre = (norm_in(x) - b_dec) @ W_enc + b_enc`` and, for
``activation_fn_str: "topk"`` with ``activation_fn_kwargs: {"k": k}``, its ``TopK`` keeps the
k largest pre-activations and applies a ReLU to them (``postact_fn``): as a dense code this
is ReLU-then-top-k, our ``relu=True``.

config.json keys read or checked:

* ``activation_fn_str`` must be "topk", ``activation_fn_kwargs`` exactly ``{"k": int}``;
* ``architecture`` "standard" (or absent); gated / jumprelu refused;
* ``normalize_activations`` must be none/null: "layer_norm" and "constant_norm_rescale"
  rescale each input and output per sample, which TopKSAE cannot reproduce;
* ``is_transcoder`` refused; ``hook_point_head_index`` refused (a per-head SAE);
* ``d_in``; ``d_sae`` (else ``expansion_factor`` x d_in), checked against the tensors;
* ``hook_point_layer`` + ``layer_subtype``: "hook_resid_post" of block L is the output of
  ``visual.transformer.resblocks[L]``, exactly what ``features.class_token_hook(layer=L)``
  captures, so ``meta["layer"] = L`` (pass it to ``features.extract(layer=...)``);
  "hook_resid_pre" of block L >= 1 is the output of block L - 1. Other hooks (hook_mlp_out,
  attention) are refused: ``features.extract`` cannot produce their input;
* ``cls_token_only``: **false is accepted with a warning** (``meta["cls_token_only"] =
  False``): such an SAE was trained on all 50 tokens, so its encoder still applies to the
  class token, but its latents and statistics are not class-token ones. ``use_patches_only``
  true (trained on patch tokens only, never on the class token) is refused, unless the caller
  loads it for patch tokens (``TopKSAE.load(..., tokens="patch")``: ``meta["tokens"]``);
* ``model_name``: kept in ``meta["model_name"]`` and mapped to an open_clip (name, pretrained
  tag) in ``meta["open_clip"]`` (see :func:`open_clip_identity`).

Everything else in config.json (training hyper-parameters, paths, wandb settings) is
provenance and is kept in ``meta["source_config"]``.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .formats import (PRISMA, PRISMA_CONFIG, FormatError, SAEParts, check_shapes, falsy, read_json,
                      read_safetensors, refuse_extra_tensors, require_int)
from .model import TopKSAE

_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec")
_HUB_PREFIXES = ("open-clip:", "open_clip:", "hf-hub:")


# ---------------------------------------------------------------------------------------------- model names

def open_clip_identity(model_name: str | None) -> dict[str, str | None] | None:
    """Map a model name written in a published SAE config to open_clip's ``(name, pretrained)``.

    * ``"open-clip:<org>/<repo>"`` (Prisma's spelling), ``"hf-hub:<org>/<repo>"`` or a bare
      ``"<org>/<repo>"``: the open_clip (architecture, tag) whose registered ``hf_hub`` is that
      repo, read from open_clip's own registry (``open_clip.list_pretrained`` /
      ``get_pretrained_cfg``), not from a table kept here. So
      ``"open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"`` -> ``{"name": "ViT-B-32",
      "pretrained": "datacomp_xl_s13b_b90k"}``.
    * ``"<architecture>/<tag>"`` or ``"<architecture>"`` with an open_clip architecture name
      (what :func:`.formats_saelens.save_saelens` writes): taken as is.
    * anything else (e.g. Hugging Face transformers ids like ``"openai/clip-vit-base-patch32"``,
      which open_clip does not register): None, "cannot tell".
    """
    if not model_name or not isinstance(model_name, str):
        return None
    import open_clip

    text = model_name.strip()
    for prefix in _HUB_PREFIXES:
        if text.lower().startswith(prefix):
            text = text[len(prefix):]
            break
    archs = set(open_clip.list_models())
    head, _, tail = text.partition("/")
    if head in archs:
        return {"name": head, "pretrained": tail or None}
    wanted = text.rstrip("/").lower()
    for arch, tag in open_clip.list_pretrained():
        hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub") or ""
        if hub and hub.rstrip("/").lower() == wanted:
            return {"name": arch, "pretrained": tag}
    return None


# ---------------------------------------------------------------------------------------------- reading

def _unpickler_reason(err: Exception) -> str:
    """The informative part of torch's weights-only refusal (it is preceded by generic advice)."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", text, flags=re.DOTALL)
    reason = (match.group(1) if match else text.strip().splitlines()[0]).strip()
    return " ".join(reason.split())[:300]


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a Prisma weights file: safetensors, or a weights-only torch pickle."""
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise FormatError(
            f"{path}: cannot be read safely: torch.load(weights_only=True) refused it ({_unpickler_reason(err)}). "
            "A full unpickle could run arbitrary code, so it is not attempted. If the file holds pickled objects "
            "(e.g. Prisma's older checkpoints pickle their config object), re-save just the state dict "
            "(torch.save(state_dict, 'weights.pt')) or convert it to safetensors in an environment you trust") from err
    except Exception as err:  # truncated / not a torch file: say which file
        raise FormatError(f"{path}: could not be read as a torch checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # {"cfg": ..., "state_dict": ...} with a plain-dict cfg
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kinds = sorted({type(v).__name__ for v in obj.values()}) if isinstance(obj, Mapping) else type(obj).__name__
        raise FormatError(f"{path}: expected a state dict of tensors, got {kinds}")
    return dict(obj)


def _layer(cfg: dict, where: Path) -> int:
    layer = cfg.get("hook_point_layer")
    if isinstance(layer, list):
        if len(layer) != 1:
            raise FormatError(f"{where}: hook_point_layer={layer} names several layers; one SAE reads one layer")
        layer = layer[0]
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise FormatError(f"{where}: hook_point_layer={layer!r} is not a block index")
    subtype = cfg.get("layer_subtype", "hook_resid_post")
    if subtype == "hook_resid_post":
        return layer  # output of resblocks[layer]: features.class_token_hook(layer=layer)
    if subtype == "hook_resid_pre" and layer >= 1:
        return layer - 1  # input of block L = output of block L - 1
    raise FormatError(f"{where}: layer_subtype={subtype!r} (hook_point_layer={layer}); features.extract captures "
                      "the residual stream after a block (hook_resid_post), so this SAE's input cannot be produced")


def _check_config(cfg: dict, where: Path, tokens: str = "class") -> int:
    """Refuse what TopKSAE cannot reproduce; return k."""
    arch = cfg.get("architecture", "standard")
    if arch not in (None, "standard"):
        raise FormatError(f"{where}: architecture={arch!r}; only Prisma's 'standard' SAE with a top-k activation "
                          "is reproducible")
    activation = cfg.get("activation_fn_str")
    if activation != "topk":
        raise FormatError(f"{where}: activation_fn_str={activation!r}; TopKSAE reproduces only 'topk'")
    kwargs = cfg.get("activation_fn_kwargs")
    if not isinstance(kwargs, dict) or "k" not in kwargs:
        raise FormatError(f"{where}: activation_fn_kwargs={kwargs!r} lacks 'k'")
    extra = sorted(set(kwargs) - {"k"})
    if extra:
        raise FormatError(f"{where}: activation_fn_kwargs has {extra} besides 'k' (e.g. a post-activation other "
                          "than the default ReLU); TopKSAE cannot reproduce it")
    norm = cfg.get("normalize_activations")
    if not falsy(norm):
        raise FormatError(f"{where}: normalize_activations={norm!r}; Prisma then rescales each input before "
                          "encoding and each output after decoding, which TopKSAE cannot reproduce (only "
                          "none/null is accepted)")
    refused = [("is_transcoder", "a transcoder predicts another hook's output")]
    if tokens != "patch":
        refused.append(("use_patches_only", "it was trained on patch tokens only, never on the class token (for "
                                            "patch-token maps and caches, load it with tokens='patch')"))
    for key, why in refused:
        if not falsy(cfg.get(key)):
            raise FormatError(f"{where}: {key}={cfg[key]!r}; {why}")
    if cfg.get("hook_point_head_index") is not None:
        raise FormatError(f"{where}: hook_point_head_index={cfg['hook_point_head_index']!r}; a per-head SAE does "
                          "not read the residual stream")
    return require_int(kwargs, "k", where)


def read_prisma(folder: Path, weights_path: Path | None = None, tokens: str = "class") -> SAEParts:
    """A Prisma top-k SAE folder as :class:`SAEParts` (refusing what TopKSAE cannot reproduce).
    ``tokens="patch"``: the caller will apply it to patch tokens (`spatial.patch_activations`,
    a ``what="patch_tokens"`` cache), so an SAE trained on patch tokens only is accepted."""
    folder = Path(folder)
    cfg_path = folder / PRISMA_CONFIG
    weights_path = Path(weights_path) if weights_path is not None else folder / "weights.pt"
    cfg = read_json(cfg_path)
    k = _check_config(cfg, cfg_path, tokens)
    layer = _layer(cfg, cfg_path)
    d_in = require_int(cfg, "d_in", cfg_path)
    if cfg.get("d_sae") is not None:
        d_sae = require_int(cfg, "d_sae", cfg_path)
    elif cfg.get("expansion_factor"):
        d_sae = require_int(cfg, "expansion_factor", cfg_path) * d_in
    else:
        raise FormatError(f"{cfg_path}: gives no width (d_sae or expansion_factor)")
    if cfg.get("cls_token_only") is not True and tokens != "patch":
        warnings.warn(f"{cfg_path}: cls_token_only={cfg.get('cls_token_only')!r}: this SAE was trained on every "
                      "token, not the class token alone; it encodes class tokens, but its latents and statistics "
                      "are not the class-token SAE the paper assumes", stacklevel=3)

    tensors = _load_weights(weights_path)
    refuse_extra_tensors(weights_path, set(tensors), set(_TENSORS),
                         "gated SAEs carry b_gate / r_mag / b_mag" if {"b_gate", "r_mag"} & set(tensors) else "")
    check_shapes(weights_path, cfg_path, d_in, d_sae, tensors, {
        "W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)})
    model_name = cfg.get("model_name")
    meta: dict[str, Any] = {
        "source_format": PRISMA, "source_config": cfg, "model_name": model_name,
        "open_clip": open_clip_identity(model_name), "layer": layer,
        "hook_name": f"blocks.{cfg.get('hook_point_layer')}.{cfg.get('layer_subtype', 'hook_resid_post')}",
        "cls_token_only": bool(cfg.get("cls_token_only")),
        "tokens": "class" if cfg.get("cls_token_only") is True else
                  "patch" if not falsy(cfg.get("use_patches_only")) else "all",
        "source_dtype": str(tensors["W_dec"].dtype).removeprefix("torch."),
    }
    return SAEParts(PRISMA, d_in, d_sae, k, True, tensors, meta, weights_path)


# ---------------------------------------------------------------------------------------------- compatibility

def _expected_model(sae: TopKSAE) -> tuple[dict | None, str]:
    """(expected {name, pretrained[, visual_sha256]}, which key said so) from the SAE's meta."""
    meta = sae.meta
    trained_on = meta.get("trained_on") if isinstance(meta.get("trained_on"), dict) else {}
    model = trained_on.get("model") if isinstance(trained_on.get("model"), dict) else None
    if model and model.get("name"):
        return model, "cfg.json trained_on.model"
    if isinstance(meta.get("open_clip"), dict):
        key = "config.json model_name" if meta.get("source_format") == PRISMA else "model_name"
        return meta["open_clip"], f"{key} {meta.get('model_name')!r}"
    if meta.get("model_name"):
        mapped = open_clip_identity(meta["model_name"])
        if mapped:
            return mapped, f"model_name {meta['model_name']!r}"
    return None, f"model_name {meta.get('model_name')!r}"


def _training_layer(sae: TopKSAE) -> int | None:
    if sae.meta.get("layer") is not None:
        return int(sae.meta["layer"])
    trained_on = sae.meta.get("trained_on")
    if isinstance(trained_on, dict) and trained_on.get("layer") is not None:
        return int(trained_on["layer"])
    return None


def check_compatible(sae: TopKSAE, clip: Any, *, strict: bool = True) -> None:
    """Raise if ``sae`` was not trained on features of ``clip`` (a ``models.LoadedCLIP``).

    Checks, each error naming the config key that disagrees:

    * ``d_in`` against ``clip.d_pre`` (the class-token width);
    * the model the SAE was trained on against ``clip.name`` / ``clip.pretrained``: for
      published SAEs the open_clip mapping of their ``model_name`` (:func:`open_clip_identity`),
      for this package's SAEs ``trained_on.model`` (including the vision-weights hash when both
      sides have one);
    * the training layer (``meta["layer"]``) against the number of blocks of ``clip``.

    When the SAE's model cannot be mapped to an open_clip name (no or an unknown
    ``model_name``), ``strict=True`` raises and ``strict=False`` warns.
    """
    source = sae.meta.get("source", "this SAE")
    d_pre = int(clip.d_pre)
    if sae.d_in != d_pre:
        raise ValueError(f"check_compatible: {source} has d_in={sae.d_in}, but {clip.name} class tokens have "
                         f"d_pre={d_pre}")
    expected, key = _expected_model(sae)
    have = f"{clip.name} / pretrained={clip.pretrained!r}"
    if expected is None:
        msg = (f"check_compatible: cannot tell which CLIP {source} was trained on ({key} does not map to an "
               f"open_clip model); the loaded CLIP is {have}")
        if strict:
            raise ValueError(msg + ". Pass strict=False to go on after checking it yourself")
        warnings.warn(msg, stacklevel=2)
    else:
        if expected.get("name") != clip.name:
            raise ValueError(f"check_compatible: {source}: {key} means open_clip {expected.get('name')} / "
                             f"{expected.get('pretrained')}, but the loaded CLIP is {have}")
        tag = expected.get("pretrained")
        if tag is not None and str(tag).lower() != str(clip.pretrained).lower():
            raise ValueError(f"check_compatible: {source}: {key} means open_clip {expected.get('name')} / "
                             f"pretrained={tag!r}, but the loaded CLIP is {have}")
        sha = expected.get("visual_sha256")
        if sha and clip.identity.get("visual_sha256") != sha:
            raise ValueError(f"check_compatible: {source}: {key}.visual_sha256 differs from the loaded CLIP's vision "
                             "weights (same name and tag, different weights)")
    layer = _training_layer(sae)
    blocks = getattr(getattr(getattr(clip.model, "visual", clip.model), "transformer", None), "resblocks", None)
    if layer is not None and blocks is not None and not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"check_compatible: {source} reads block {layer} (hook_point_layer / layer), but "
                         f"{clip.name} has {len(blocks)} blocks")
