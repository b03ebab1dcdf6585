"""EleutherAI sparsify folders: ``cfg.json`` + ``sae.safetensors``, one folder per hookpoint.

``SparseCoder.save_to_disk`` writes the module's state dict with safetensors and, as
cfg.json, the ``SparseCoderConfig`` (formerly ``SaeConfig``) fields plus ``d_in``. Tensors:
``encoder.weight`` (d_sae, d_in), ``encoder.bias`` (d_sae,), ``W_dec`` (d_sae, d_in),
``b_dec`` (d_in,), and ``W_skip`` (d_in, d_in) when ``skip_connection`` is set.

Its encoder is ``topk(relu(encoder(x - b_dec)))`` with activation "topk": ReLU then
top-k, our ``relu=True``. Transcoders (``transcode``) encode x without subtracting b_dec
and predict another module's output; ``groupmax`` takes one max per group of latents.

cfg.json keys, by what they do to the encoder:

* read: ``d_in``, ``k``, ``num_latents`` (0 = use ``expansion_factor`` x d_in),
  ``expansion_factor``, ``activation`` (must be "topk"; absent in older versions);
* training-only, accepted: ``normalize_decoder``, ``multi_topk``; provenance of a
  switched-off option, accepted: ``lookup_max_order``, ``gram_table_hash``;
* refused unless false: ``skip_connection``, ``transcode``, ``embed_skip``, ``gram_lookup``
  (and, from forks and older versions, ``signed``, ``jumprelu``, ``input_unit_norm``,
  ``batch_topk``, ``sample_topk``, ``shift_back``);
* any other key: accepted when false-like (a switched-off option), refused otherwise,
  naming the key, since this reader cannot vouch that it leaves the encoder unchanged.

Tensors other than the four are refused by name (``W_skip`` included, whatever cfg.json says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .formats import (CFG_JSON, OUR_WEIGHTS, SPARSIFY, FormatError, SAEParts, check_shapes, falsy, read_json,
                      read_safetensors, refuse_extra_tensors, require_int)

_READ = {"d_in", "k", "num_latents", "expansion_factor", "activation"}
_HARMLESS = {"normalize_decoder", "multi_topk", "lookup_max_order", "gram_table_hash"}
_MUST_BE_OFF = {
    "skip_connection": "a linear skip connection W_skip adds W_skip x to the reconstruction",
    "transcode": "a transcoder encodes x without subtracting b_dec and predicts another module's output",
    "embed_skip": "a skip connection from the embedding adds a term TopKSAE does not have",
    "gram_lookup": "an n-gram lookup subtracts a per-context mean from the input",
    "signed": "signed latents are not ReLU top-k",
    "jumprelu": "a JumpReLU threshold is not a top-k",
    "input_unit_norm": "the input is normalised per sample before encoding",
    "batch_topk": "batch top-k selects latents across the batch",
    "sample_topk": "sample top-k selects latents across a whole sample",
    "shift_back": "a shift of the input that TopKSAE does not have",
}
_TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def _check_config(cfg: dict, where: Path) -> None:
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise FormatError(f"{where}: activation={activation!r}; only 'topk' (ReLU then top-k) is reproducible "
                          "by TopKSAE")
    for key, why in _MUST_BE_OFF.items():
        if key in cfg and not falsy(cfg[key]):
            raise FormatError(f"{where}: {key}={cfg[key]!r}; {why}, which TopKSAE cannot reproduce")
    unknown = {key: value for key, value in cfg.items()
               if key not in _READ | _HARMLESS | set(_MUST_BE_OFF) and not falsy(value)}
    if unknown:
        raise FormatError(f"{where}: keys {sorted(unknown)} (values {unknown}) are unknown to this reader and "
                          "switched on; refusing rather than guessing they leave the encoder unchanged")


def read_sparsify(folder: Path, weights_path: Path | None = None) -> SAEParts:
    """A sparsify top-k folder as :class:`SAEParts` (refusing what TopKSAE cannot reproduce)."""
    folder = Path(folder)
    cfg_path, weights_path = folder / CFG_JSON, Path(weights_path or folder / OUR_WEIGHTS)
    cfg = read_json(cfg_path)
    _check_config(cfg, cfg_path)
    d_in, k = require_int(cfg, "d_in", cfg_path), require_int(cfg, "k", cfg_path)
    if cfg.get("num_latents"):
        d_sae = require_int(cfg, "num_latents", cfg_path)
    elif cfg.get("expansion_factor"):
        d_sae = require_int(cfg, "expansion_factor", cfg_path) * d_in
    else:
        raise FormatError(f"{cfg_path}: gives no width (num_latents or expansion_factor), keys {sorted(cfg)}")

    stored = read_safetensors(weights_path)
    refuse_extra_tensors(weights_path, set(stored), set(_TENSORS),
                         "W_skip is a skip connection" if "W_skip" in stored else "")
    check_shapes(weights_path, cfg_path, d_in, d_sae, stored, {
        "encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)})
    tensors = {"W_enc": stored["encoder.weight"].t(), "b_enc": stored["encoder.bias"], "W_dec": stored["W_dec"],
               "b_dec": stored["b_dec"]}
    meta: dict[str, Any] = {"source_format": SPARSIFY, "source_config": cfg, "hookpoint": folder.name,
                            "source_dtype": str(stored["W_dec"].dtype).removeprefix("torch.")}
    return SAEParts(SPARSIFY, d_in, d_sae, k, True, tensors, meta, weights_path)
