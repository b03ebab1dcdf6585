"""SAELens folders: read and write ``cfg.json`` + ``sae_weights.safetensors``.

Tensors (SAELens' own names and shapes, same as ours): ``W_enc`` (d_in, d_sae), ``b_enc``
(d_sae,), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in,).

cfg.json comes in two schemas, both read here:

* SAELens >= 6 (``metadata.sae_lens_version`` >= 6): top-level ``architecture`` ("topk"),
  ``k``, ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
  ``normalize_activations``, ``reshape_activations``, ``rescale_acts_by_decoder_norm`` and a
  nested ``metadata`` {``model_name``, ``hook_name``, ``sae_lens_version``, ...}.
* older versions: ``architecture`` "standard" with ``activation_fn_str`` (or
  ``activation_fn``) "topk" and the k in ``activation_fn_kwargs``; ``model_name`` /
  ``hook_name`` (or ``hook_point``) at top level; ``normalize_activations`` possibly a bool or
  None. SAELens itself migrates exactly this pair to architecture "topk"; so do we.

Encoder semantics: SAELens' ``TopK`` takes the top k pre-activations and then applies ReLU
to them. As a dense code that equals ReLU-then-top-k (a ReLU keeps the order of positive
values, and a selected non-positive value becomes 0 either way), i.e. ``relu=True``; the
reconstruction is identical. Input: ``x - b_dec * apply_b_dec_to_input`` after the optional
normalisation.

JumpReLU (``architecture: "jumprelu"``, tensor ``threshold`` or ``log_threshold``; how SAELens
saves BatchTopK SAEs for inference too): a = ReLU(pre) * [pre > theta], read as a threshold
:class:`TopKSAE` whose code width is ``max_active`` (see :mod:`.model`).
``apply_b_dec_to_input`` false (Gemma Scope's JumpReLU SAEs encode x itself) is folded into
the encoder bias, b_enc + b_dec W_enc, so the encoder that subtracts b_dec gives the same code.

Refused, with the key named: any other architecture (standard ReLU, gated, a BatchTopK training
checkpoint, transcoders, ...), ``normalize_activations`` other than none (per-sample layer norm, constant
norm rescale and the unfolded ``expected_average_only_in`` scaling all change the input),
``reshape_activations`` other than none (hook_z heads), ``finetuning_scaling_factor`` and a
non-unit ``scaling_factor`` tensor, and any tensor beyond the four. Accepted and made exact:
``rescale_acts_by_decoder_norm`` true is folded into the weights the way SAELens'
``fold_W_dec_norm`` does (W_enc and b_enc times ||W_dec_j||, W_dec rows divided by it), which
gives the same codes and reconstruction with unit-norm decoder rows.

Export (:func:`save_saelens`) writes the SAELens 6 schema for ``architecture: "topk"`` (or
``"jumprelu"`` with its ``threshold`` for a threshold SAE);
a ``relu=False`` SAE is refused there because SAELens' TopK always applies the ReLU.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..storage import save_tensors_atomic, write_json_atomic
from .formats import (CFG_JSON, OUR_TENSORS, SAELENS, SAELENS_WEIGHTS, FormatError, SAEParts, check_shapes, falsy,
                      read_json, read_safetensors, refuse_extra_tensors, require_int)
from .model import TopKSAE

# What `save_saelens` declares in metadata.sae_lens_version: the cfg.json *schema* (nested
# metadata, top-level k), so SAELens >= 6 reads it without its pre-6.0 migration. The file is
# written by this package; metadata.exported_by says so.
SAELENS_SCHEMA_VERSION = "6.0.0"
# Keys known to be provenance or training-only. Any other key: refused when it is `true` (an option
# switched on), accepted when false-like (as sparsify's reader does), otherwise a warning
# (provenance of other SAELens versions).
_INFO_KEYS = {
    "d_in", "d_sae", "dtype", "device", "metadata", "model_name", "hook_name", "hook_point", "hook_layer",
    "hook_point_layer", "hook_head_index", "hook_point_head_index", "model_class_name",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "context_size",
    "seqpos_slice", "dataset_path", "dataset_trust_remote_code", "sae_lens_version", "sae_lens_training_version",
    "activation_fn_kwargs", "k", "architecture", "activation_fn_str", "activation_fn", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "finetuning_scaling_factor", "rescale_acts_by_decoder_norm",
    "use_sparse_activations", "aux_loss_coefficient", "decoder_init_norm", "l1_coefficient", "lp_norm",
    "l1_warm_up_steps", "normalize_sae_decoder", "noise_scale", "decoder_orthogonal_init",
    "mse_loss_normalization", "init_encoder_as_decoder_transpose", "scale_sparsity_penalty_by_decoder_norm",
    "decoder_heuristic_init", "decoder_heuristic_init_norm",
}
_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


def _setting(cfg: dict, key: str, default: Any = None) -> Any:
    """A setting from the top level, else from ``metadata`` (schemas moved keys between them)."""
    if key in cfg:
        return cfg[key]
    meta = cfg.get("metadata")
    if isinstance(meta, dict) and key in meta:
        return meta[key]
    return default


def _architecture(cfg: dict, where: Path) -> int | None:
    """The k of a top-k SAELens config, None for a JumpReLU one; anything else is refused
    naming the key."""
    arch = cfg.get("architecture", "standard")
    if arch == "jumprelu":
        activation = cfg.get("activation_fn_str", cfg.get("activation_fn"))
        if activation not in (None, "relu"):
            raise FormatError(f"{where}: architecture 'jumprelu' with activation {activation!r}; only ReLU "
                              "(SAELens' default) is reproducible")
        return None
    activation = cfg.get("activation_fn_str", cfg.get("activation_fn"))
    act_key = "activation_fn_str" if "activation_fn_str" in cfg else "activation_fn"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise FormatError(f"{where}: activation_fn_kwargs={kwargs!r} is not an object")
    if arch == "standard" and activation == "topk":
        arch = "topk"  # the pre-6.0 spelling; SAELens migrates it the same way
    if arch != "topk":
        what = f"architecture={cfg.get('architecture', 'standard')!r}"
        if activation is not None:
            what += f" with {act_key}={activation!r}"
        hint = (" (a BatchTopK training checkpoint: SAELens saves it for inference as 'jumprelu', which loads)"
                if arch == "batchtopk" else "")
        raise FormatError(f"{where}: {what} is not a top-k or JumpReLU SAE{hint}; TopKSAE reproduces architecture "
                          "'topk' (or the older 'standard' + activation_fn_str 'topk') and 'jumprelu'")
    if activation not in (None, "topk"):
        raise FormatError(f"{where}: architecture 'topk' with {act_key}={activation!r}; only a top-k activation "
                          "is reproducible")
    extra = sorted(set(kwargs) - {"k"})
    if extra:
        raise FormatError(f"{where}: activation_fn_kwargs has {extra} besides 'k'; TopKSAE cannot reproduce them")
    if "k" in cfg and cfg["k"] is not None:
        k = require_int(cfg, "k", where)
        if "k" in kwargs and kwargs["k"] != k:
            raise FormatError(f"{where}: k={k} but activation_fn_kwargs.k={kwargs['k']}; which one?")
        return k
    if "k" not in kwargs:
        raise FormatError(f"{where}: a top-k config without a k (neither 'k' nor activation_fn_kwargs.k)")
    return require_int(kwargs, "k", where)


def _refuse_unreproducible(cfg: dict, where: Path) -> None:
    if cfg.get("apply_b_dec_to_input", True) is not True:
        raise FormatError(f"{where}: apply_b_dec_to_input={cfg['apply_b_dec_to_input']!r}; TopKSAE always encodes "
                          "x - b_dec, so an SAE that encodes x itself cannot be reproduced")
    norm = cfg.get("normalize_activations", "none")
    if not falsy(norm):
        detail = ("its scaling factor is not part of the checkpoint (SAELens folds it in from its release "
                  "directory)") if norm in (True, "expected_average_only_in") else \
            "it rescales each input before encoding and each output after decoding"
        raise FormatError(f"{where}: normalize_activations={norm!r}; TopKSAE reproduces only 'none': {detail}")
    reshape = cfg.get("reshape_activations", "none")
    hook = _setting(cfg, "hook_name", _setting(cfg, "hook_point", "")) or ""
    if not falsy(reshape) or ("reshape_activations" not in cfg and str(hook).endswith("hook_z")):
        raise FormatError(f"{where}: reshape_activations={reshape!r} (hook {hook!r}); per-head hook_z SAEs are "
                          "not reproducible")
    if not falsy(cfg.get("finetuning_scaling_factor", False)):
        raise FormatError(f"{where}: finetuning_scaling_factor={cfg['finetuning_scaling_factor']!r}; a learned "
                          "scale on the latents is not reproducible")


DEFAULT_MAX_ACTIVE = 256
"""Code width of a JumpReLU SAE loaded without ``max_active`` (its L0 varies per sample)."""


def read_saelens(folder: Path, weights_path: Path | None = None) -> SAEParts:
    """An SAELens top-k or JumpReLU folder as :class:`SAEParts` (refusing what TopKSAE cannot
    reproduce). A JumpReLU SAE's code width is the one it was exported with by this package,
    else `DEFAULT_MAX_ACTIVE` (at most d_sae; ``load_sae(..., max_active=)`` sets another)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_JSON, Path(weights_path or folder / SAELENS_WEIGHTS)
    cfg = read_json(cfg_path)
    k = _architecture(cfg, cfg_path)
    jumprelu = k is None
    fold_b_dec = cfg.get("apply_b_dec_to_input", True) is False
    _refuse_unreproducible({**cfg, "apply_b_dec_to_input": True} if fold_b_dec else cfg, cfg_path)
    d_in, d_sae = require_int(cfg, "d_in", cfg_path), require_int(cfg, "d_sae", cfg_path)
    unknown = sorted(set(cfg) - _INFO_KEYS)
    switched_on = [key for key in unknown if cfg[key] is True]
    if switched_on:  # an option this reader does not know, switched on: it may change the encoder
        raise FormatError(f"{cfg_path}: {', '.join(f'{key}=true' for key in switched_on)} "
                          f"{'is an option' if len(switched_on) == 1 else 'are options'} this reader does not "
                          "know, switched on; it cannot tell whether TopKSAE reproduces it (set it to false if "
                          "it does not change the encoder or decoder)")
    unknown = [key for key in unknown if not falsy(cfg[key])]  # switched off: nothing to reproduce
    if unknown:  # provenance and training settings of other SAELens versions (strings, numbers)
        shown = unknown[:10] + ([f"... {len(unknown) - 10} more"] if len(unknown) > 10 else [])
        warnings.warn(f"{cfg_path}: keys {shown} are unknown to this reader and were ignored; check they do not "
                      "change the encoder", stacklevel=3)

    tensors = read_safetensors(weights_path)
    scale = tensors.pop("scaling_factor", None)
    if scale is not None and not torch.equal(scale, torch.ones_like(scale)):
        raise FormatError(f"{weights_path}: holds a scaling_factor tensor that is not all ones; a learned scale on "
                          "the latents is not reproducible")
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if jumprelu:
        if "threshold" not in tensors and "log_threshold" in tensors:  # SAELens' training parametrisation
            tensors["threshold"] = tensors.pop("log_threshold").float().exp()
        expected["threshold"] = (d_sae,)
        ours = ((cfg.get("metadata") or {}).get("clipattr_meta") or {}) if isinstance(cfg.get("metadata"), dict) else {}
        k = min(d_sae, int(ours.get("max_active") or DEFAULT_MAX_ACTIVE))
    refuse_extra_tensors(weights_path, set(tensors), set(expected),
                         "gated and transcoder SAEs carry such extra tensors")
    check_shapes(weights_path, cfg_path, d_in, d_sae, tensors, expected)
    if jumprelu and bool((tensors["threshold"] < 0).any()):
        raise FormatError(f"{weights_path}: a JumpReLU threshold is negative; SAELens' JumpReLU gates a ReLU, "
                          "so TopKSAE needs thresholds >= 0")

    meta_cfg = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    meta: dict[str, Any] = dict(meta_cfg.get("clipattr_meta") or {})
    if fold_b_dec:
        # pre = x W_enc + b_enc = (x - b_dec) W_enc + (b_enc + b_dec W_enc): the same code from an
        # encoder that subtracts b_dec, as TopKSAE's does (computed in float64, stored as read).
        dtype = tensors["b_enc"].dtype
        tensors["b_enc"] = (tensors["b_enc"].double() + tensors["b_dec"].double() @ tensors["W_enc"].double()).to(dtype)
        meta["folded_b_dec_into_b_enc"] = True
    if cfg.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norm(tensors)
        meta["folded_decoder_norm"] = True
    hook = _setting(cfg, "hook_name", _setting(cfg, "hook_point"))
    source_cfg = dict(cfg)
    if meta_cfg.get("clipattr_meta") is not None:  # already unpacked into meta; do not nest it twice
        source_cfg["metadata"] = {key: v for key, v in meta_cfg.items() if key != "clipattr_meta"}
    meta.update({"source_format": SAELENS, "source_config": source_cfg, "model_name": _setting(cfg, "model_name"),
                 "hook_name": hook, "source_dtype": cfg.get("dtype")})
    match = _RESID_POST.match(str(hook or ""))
    if match and "layer" not in meta:
        meta["layer"] = int(match.group(1))  # blocks.L.hook_resid_post = output of block L
    if jumprelu:
        meta["max_active"] = k
    return SAEParts(SAELENS, d_in, d_sae, k, True, tensors, meta, weights_path)


def _fold_decoder_norm(tensors: dict[str, torch.Tensor]) -> None:
    """SAELens' rescale_acts_by_decoder_norm, folded: same codes and reconstruction, unit decoder rows."""
    norms = tensors["W_dec"].float().norm(dim=-1).clamp(min=1e-8)
    dtype = tensors["W_dec"].dtype
    tensors["W_dec"] = (tensors["W_dec"].float() / norms[:, None]).to(dtype)
    tensors["W_enc"] = (tensors["W_enc"].float() * norms[None, :]).to(dtype)
    tensors["b_enc"] = (tensors["b_enc"].float() * norms).to(dtype)
    if "threshold" in tensors:  # JumpReLU compares the scaled pre-activation with the threshold
        tensors["threshold"] = (tensors["threshold"].float() * norms).to(tensors["threshold"].dtype)


def save_saelens(sae: TopKSAE, directory: str | os.PathLike, *, model_name: str | None = None,
                 hook_name: str | None = None, **meta: Any) -> Path:
    """Write ``sae`` as an SAELens 6 top-k folder (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        sae: a ``relu=True`` TopKSAE (SAELens' TopK always applies the ReLU; ``relu=False``
            is refused).
        directory: the folder to write (created if needed).
        model_name: metadata.model_name (default ``sae.meta["model_name"]``, else the CLIP
            the SAE was trained on as ``"<open_clip name>/<pretrained>"``).
        hook_name: metadata.hook_name (default ``sae.meta["hook_name"]``, else
            ``"blocks.<layer>.hook_resid_post"`` from the training layer). Our features are the
            class token of that hook.
        **meta: merged into ``sae.meta`` first, as :func:`.io.save_sae` does.

    ``sae.meta`` travels in ``metadata.clipattr_meta`` and comes back on import, so
    export -> import gives bitwise identical tensors and the same meta.
    """
    if not sae.relu:
        raise FormatError("save_saelens: relu=False (raw top-k values, possibly negative) cannot be written as "
                          "an SAELens TopK SAE, whose activation always applies a ReLU to the kept values")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sae.meta.update(meta)
    trained_on = sae.meta.get("trained_on") if isinstance(sae.meta.get("trained_on"), dict) else {}
    model = trained_on.get("model") if isinstance(trained_on.get("model"), dict) else {}
    if model_name is None:
        model_name = sae.meta.get("model_name") or (
            f"{model['name']}/{model['pretrained']}" if model.get("name") else None)
    if hook_name is None:
        layer = sae.meta.get("layer", trained_on.get("layer"))
        hook_name = sae.meta.get("hook_name") or (f"blocks.{layer}.hook_resid_post" if layer is not None else None)
    dtype = str(sae.W_dec.dtype).removeprefix("torch.")
    tensors = {name: getattr(sae, name) for name in OUR_TENSORS}
    arch = {"architecture": "topk", "k": sae.k}
    if sae.threshold is not None:  # SAELens' JumpReLU (how it saves BatchTopK SAEs for inference too)
        tensors["threshold"] = sae.threshold.to(sae.W_dec.dtype)
        arch = {"architecture": "jumprelu"}
        sae.meta["max_active"] = sae.k  # the code width comes back on import
    save_tensors_atomic(directory / SAELENS_WEIGHTS, tensors)
    from .. import __version__

    cfg = {
        **arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": dtype, "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": SAELENS_SCHEMA_VERSION, "sae_lens_training_version": None,
                     "model_name": model_name, "hook_name": hook_name,
                     "exported_by": f"clipattr_utils {__version__}", "clipattr_meta": dict(sae.meta)},
    }
    write_json_atomic(directory / CFG_JSON, cfg)
    return directory
