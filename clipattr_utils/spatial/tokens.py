"""Live token access inside the image tower: the patch embeddings going in, the class and
patch tokens coming out of a block, for the few images a map is drawn for.

Cached extraction (`features.extract`) keeps the class token only; maps need every token of
the image and gradients back to the patch embeddings, so they run the tower again on the
images shown (20 at 64 px take a fraction of a second with the sandbox CLIP).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image


class Tokens(NamedTuple):
    """What one pass through the tower gives (`forward_tokens`)."""

    class_token: torch.Tensor
    """(N, width) class tokens after block ``layer`` (pre-``ln_post``, what the SAE reads)."""
    patch_tokens: torch.Tensor
    """(N, P, width) patch tokens after the same block, row-major over the patch grid."""
    patch_embeddings: torch.Tensor
    """(N, P, width) the patch embeddings (``conv1`` output, before positional embedding) as
    used in the pass: the leaf that input heatmaps differentiate to."""
    grid: tuple[int, int]
    """(rows, columns) of the patch grid."""


def pixels(clip: Any, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """PIL images -> the CLIP's preprocessed (N, 3, H, W) batch (tensors pass through)."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"pixels: expected a (N, 3, H, W) batch, got shape {tuple(images.shape)}")
        return images.to(clip.device)
    return torch.stack([clip.preprocess(im.convert("RGB")) for im in images]).to(clip.device)


def _tower(clip: Any):
    visual = getattr(clip.model, "visual", None)
    if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
        raise ValueError(f"{getattr(clip, 'name', 'this model')}: patch maps need an open_clip ViT image tower "
                         "(conv1 patch embedding + transformer); this tower has none")
    return visual


@contextmanager
def _patch_embedding_edit(visual: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[dict]:
    """While open, ``conv1``'s output (N, width, gh, gw) is replaced by ``edit`` of its
    (N, P, width) tokens; the used tokens are kept in the yielded dict under "e"."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        n, w, gh, gw = output.shape
        e = edit(output.reshape(n, w, gh * gw).transpose(1, 2))
        store["e"], store["grid"] = e, (gh, gw)
        return e.transpose(1, 2).reshape(n, w, gh, gw)

    handle = visual.conv1.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def _block_output(visual: torch.nn.Module, layer: int) -> Iterator[dict]:
    blocks = visual.transformer.resblocks
    if not -len(blocks) <= int(layer) < len(blocks):
        raise ValueError(f"layer={layer} out of range for a tower with {len(blocks)} blocks")
    batch_first = getattr(visual.transformer, "batch_first", True)
    store: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        tokens = output[0] if isinstance(output, tuple) else output
        store["tokens"] = tokens if batch_first else tokens.transpose(0, 1)

    handle = blocks[int(layer)].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def forward_tokens(clip: Any, batch: torch.Tensor, layer: int = -1,
                   edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Tokens:
    """Run the image tower on a preprocessed ``batch`` and return its tokens after block
    ``layer``. ``edit`` maps the (N, P, width) patch embeddings to the ones used (e.g. a
    leaf that requires grad, or a point on an integrated-gradients path); gradients flow
    when the caller enables them."""
    visual = _tower(clip)
    with _patch_embedding_edit(visual, edit or (lambda e: e)) as emb, _block_output(visual, layer) as out:
        visual(batch)
    tokens = out["tokens"]
    n_prefix = tokens.shape[1] - emb["e"].shape[1]
    if n_prefix < 1:
        raise ValueError("forward_tokens: the tower's token sequence has no class token before the patches")
    return Tokens(tokens[:, 0], tokens[:, n_prefix:], emb["e"], emb["grid"])


__all__ = ["Tokens", "pixels", "forward_tokens"]
