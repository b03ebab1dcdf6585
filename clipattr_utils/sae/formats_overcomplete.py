"""overcomplete ``TopKSAE`` checkpoints: a ``torch.save`` of the model's state dict (one ``*.pt``).

overcomplete (Fel et al., KempnerInstitute/overcomplete) computes, for its top-k SAE with the
linear encoder:

    pre = x W^T + c,   z = TopK(ReLU(pre)),   x_hat = z D,   D = normalize_l2(D_raw) * exp(m)

with tensors ``encoder.final_block.0.weight`` W (d_sae, d_in) and ``.bias`` c (older versions:
``encoder.0.weight`` / ``encoder.0.bias``), ``dictionary._weights`` D_raw (d_sae, d_in) and
``dictionary.multiplier`` m (a scalar, 0 unless trained). In eval mode it decodes with the
row-normalised dictionary times exp(m), and has no decoder bias. As a :class:`TopKSAE`:
b_dec = 0, W_enc = W^T exp(m), b_enc = c exp(m), W_dec = normalize_l2(D_raw): the codes are
overcomplete's times exp(m) (the same latents, the same order) and the reconstruction is the
same, with unit decoder rows (Eq. 9).

The file does not store k: the caller passes it (``TopKSAE.load(path, k=...)``). Nor does it
store the dictionary normalisation; 'l2' (overcomplete's default) keeps the stored rows at unit
norm during training, so rows far from unit norm mean another normalisation and are refused.
Refused by name: other encoders (MLP blocks, batch norm, attention), any other tensor.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .formats import FormatError, SAEParts

OVERCOMPLETE = "overcomplete"
DICTIONARY = "dictionary._weights"
MULTIPLIER = "dictionary.multiplier"
ENCODER_KEYS = (("encoder.final_block.0.weight", "encoder.final_block.0.bias"), ("encoder.0.weight", "encoder.0.bias"))
ROW_NORM_TOLERANCE = 0.05
"""How far from 1 the stored dictionary rows may be (the last optimiser step after the last
in-place normalisation moves them a little)."""


def load_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The state dict in ``path`` when it is an overcomplete SAE's (it holds ``dictionary._weights``), else None."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # not a weights-only torch file: not this layout (other readers say what it is)
        return None
    if isinstance(state, dict) and DICTIONARY in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return state
    return None


def read_overcomplete(folder: Path, weights_path: Path | None = None, k: int | None = None) -> SAEParts:
    """An overcomplete top-k SAE state dict as :class:`SAEParts` (module docstring)."""
    path = Path(weights_path) if weights_path is not None else None
    if path is None:
        raise FormatError(f"{folder}: pass the overcomplete checkpoint file itself (TopKSAE.load('<file>.pt', k=...))")
    state = load_state(path)
    if state is None:
        raise FormatError(f"{path}: not an overcomplete SAE state dict (no {DICTIONARY!r})")
    if k is None:
        raise FormatError(f"{path}: an overcomplete state dict does not store k (its TopKSAE's top_k); pass it: "
                          f"TopKSAE.load('{path}', k=...)")
    enc = next(((w, b) for w, b in ENCODER_KEYS if w in state), None)
    if enc is None:
        encoder_keys = sorted(key for key in state if key.startswith("encoder."))
        raise FormatError(f"{path}: encoder tensors {encoder_keys} are not overcomplete's linear encoder "
                          f"({ENCODER_KEYS[0][0]} / {ENCODER_KEYS[0][1]}); MLP, batch-norm and attention "
                          "encoders are not a top-k SAE on the features themselves")
    allowed = {*enc, DICTIONARY, MULTIPLIER}
    extra = sorted(set(state) - allowed)
    if extra:
        raise FormatError(f"{path}: holds tensor(s) {extra} besides {sorted(allowed)}; batch norm and MLP blocks in "
                          "the encoder change the code, refusing rather than dropping them")
    W, c, D = state[enc[0]].double(), state.get(enc[1]), state[DICTIONARY].double()
    d_sae, d_in = D.shape
    if W.shape != (d_sae, d_in):
        raise FormatError(f"{path}: {enc[0]} has shape {tuple(W.shape)} but {DICTIONARY} {tuple(D.shape)}; "
                          f"expected ({d_sae}, {d_in})")
    c = torch.zeros(d_sae, dtype=torch.float64) if c is None else c.double()
    if c.shape != (d_sae,):
        raise FormatError(f"{path}: {enc[1]} has shape {tuple(c.shape)}, expected ({d_sae},)")
    if not 0 < int(k) <= d_sae:
        raise FormatError(f"{path}: k={k} must be in 1..d_sae={d_sae}")
    norms = D.norm(dim=1)
    off = float((norms - 1).abs().max())
    if off > ROW_NORM_TOLERANCE:
        raise FormatError(f"{path}: the stored dictionary rows have norms {float(norms.min()):.3g}..{float(norms.max()):.3g}; "
                          "overcomplete's default 'l2' normalisation keeps them at 1, so this SAE was trained with "
                          "another dictionary_normalization, which the file does not record")
    m = float(state[MULTIPLIER]) if MULTIPLIER in state else 0.0
    if not math.isfinite(m):
        raise FormatError(f"{path}: {MULTIPLIER}={m} is not finite")
    scale = math.exp(m)
    dtype = state[DICTIONARY].dtype
    tensors = {"W_enc": (W.T * scale).to(dtype), "b_enc": (c * scale).to(dtype),
               "W_dec": (D / (norms[:, None] + 1e-8)).to(dtype), "b_dec": torch.zeros(d_in, dtype=dtype)}
    meta = {"source_format": OVERCOMPLETE, "overcomplete_multiplier": m, "overcomplete_encoder": enc[0],
            "codes_scaled_by": scale}
    return SAEParts(OVERCOMPLETE, int(d_in), int(d_sae), int(k), True, tensors, meta, path)
