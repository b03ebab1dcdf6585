"""Where in the image a latent fires and where its contribution comes from.

Two kinds of map per (latent, image), both on the tower's patch grid:

- **Patch activations** (`patch_activations`): the class-token SAE's encoder applied to each
  patch token of the same block, as the authors' spatial mode does. Cheap, but the SAE never
  saw patch tokens (notebook 01 reports what that costs in reconstruction).
- **Input heatmaps** (`latent_heatmap`): the latent's class-token activation a_j, or its
  Act x Grad relevance R_j = a_j * dy/da_j for an output y (Eq. 5), propagated back to the
  patch embeddings (the ``conv1`` output) by one of `METHODS`:

  - ``"grad_x_input"``: e_p . df/de_p, summed over channels (one backward pass);
  - ``"integrated_gradients"``: e_p . mean over alpha of df/de_p at alpha * e (zero baseline,
    ``steps`` midpoints); its maps sum to f(e) - f(0) up to the quadrature (completeness).
    With ``baseline`` images b (the same images without one element, e.g. without the red
    hue), the path runs from b's patch embeddings e_b to e and the maps, (e_p - e_b,p) . mean
    df/de_p, sum to f(e) - f(e_b): where that element's pixels change the latent;
  - ``"gradient"``: |df/dpixels| summed over channels and pooled over each patch's pixels,
    the plain-gradient baseline.

f is the latent's *pre*-activation on the class token: equal to a_j where the latent is
active (its top-k or threshold gate only decides whether it is), so the maps of an active
latent are maps of a_j, with no zero gradient where the gate is flat.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .tokens import forward_tokens, pixels

METHODS = ("grad_x_input", "integrated_gradients", "gradient")
"""Input-heatmap methods of `latent_heatmap`."""


class LatentMaps(NamedTuple):
    """Maps of one latent on a batch of images."""

    heat: torch.Tensor
    """(N, rows, columns) on the patch grid: positive where the region raises the latent (or
    its relevance for the output)."""
    value: torch.Tensor
    """(N,) what the maps explain: the latent's class-token pre-activation, times dy/da_j when
    an output was given (then the Act x Grad relevance of active latents)."""
    method: str
    """The method of `METHODS` (or "patch_activations")."""


def _pre_activation(sae: Any, x: torch.Tensor, latent: int) -> torch.Tensor:
    """(N,) latent ``latent``'s encoder pre-activation on class tokens ``x`` (differentiable)."""
    if not 0 <= int(latent) < sae.d_sae:
        raise ValueError(f"latent {latent} out of range for an SAE with d_sae={sae.d_sae}")
    w = sae.W_enc[:, int(latent)]
    # (the SAE may sit on another device than the tower, e.g. notebook 05 keeps it on the CPU)
    return ((x.to(device=w.device, dtype=w.dtype) - sae.b_dec) @ w + sae.b_enc[int(latent)]).cpu()


def output_gradient(sae: Any, head: Any, x: torch.Tensor, latent: int, target: Any, output: int) -> torch.Tensor:
    """(N,) dy_output/da_latent at class tokens ``x``: the decoder direction of the latent
    dotted with the gradient of the output (text embeddings or a `Readout`) at x. This is the
    "Grad" of Act x Grad (Eq. 5); the error term and the other latents do not change it."""
    from ..attribution.core import as_target

    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = head(x)
        y = as_target(target, z.shape[-1], z.dtype, z.device).output(z)
        if not 0 <= int(output) < y.shape[1]:
            raise ValueError(f"output {output} out of range for {y.shape[1]} outputs")
        (g,) = torch.autograd.grad(y[:, int(output)].sum(), x)
    return (g.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype) @ sae.W_dec[int(latent)]).cpu()


def latent_heatmap(clip: Any, sae: Any, images: Sequence[Image.Image] | torch.Tensor, latent: int,
                   method: str = "integrated_gradients", *, target: Any = None, output: int | None = None,
                   layer: int = -1, steps: int = 16, batch_size: int = 256,
                   baseline: Sequence[Image.Image] | torch.Tensor | None = None) -> LatentMaps:
    """Input heatmaps of ``latent`` on ``images`` (PIL images or a preprocessed batch).

    Without ``target``, the maps explain the latent's activation; with ``target`` (text
    embeddings or a `Readout`) and ``output`` (its row), they explain its relevance for that
    output, R_j = a_j * dy/da_j: the activation maps times dy/da_j per image (the gradient of
    y with respect to a_j does not depend on the pixels' path to a_j).

    ``baseline`` (integrated gradients only): one reference image per image, the path's start
    instead of the zero patch embedding."""
    if method not in METHODS:
        raise ValueError(f"latent_heatmap: unknown method {method!r}; choose from {list(METHODS)}")
    if baseline is not None and method != "integrated_gradients":
        raise ValueError(f"latent_heatmap: a baseline is a start of the integrated-gradients path; "
                         f"method {method!r} takes none")
    if (target is None) != (output is None):
        raise ValueError("latent_heatmap: give both target and output (the relevance of one output), or neither")
    batch = pixels(clip, images)
    base = None if baseline is None else pixels(clip, baseline)
    if base is not None and base.shape != batch.shape:
        raise ValueError(f"latent_heatmap: baseline must be one image per image, got {tuple(base.shape)} "
                         f"for images {tuple(batch.shape)}")
    # ``batch_size`` counts forward rows: integrated gradients runs ``steps`` rows per image.
    per = max(1, int(batch_size) // int(steps)) if method == "integrated_gradients" else int(batch_size)
    heats, values, tokens = [], [], []
    for s in range(0, batch.shape[0], per):
        h, v, x = _heat(clip, sae, batch[s:s + per], int(latent), method, layer, int(steps),
                        None if base is None else base[s:s + per])
        heats.append(h)
        values.append(v)
        tokens.append(x)
    heat, value = torch.cat(heats), torch.cat(values)
    if target is not None:
        # the class tokens of the pass that drew the maps: no second pass through the tower
        scale = output_gradient(sae, clip.head, torch.cat(tokens), latent, target, int(output)).detach()
        heat, value = heat * scale[:, None, None], value * scale
    return LatentMaps(heat, value, method)


def _heat(clip: Any, sae: Any, batch: torch.Tensor, latent: int, method: str, layer: int, steps: int,
          base: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps, the latent's pre-activation, the class tokens) of one batch."""
    with torch.enable_grad():
        if method == "gradient":
            leaf = batch.detach().clone().requires_grad_(True)
            tok = forward_tokens(clip, leaf, layer)
            f = _pre_activation(sae, tok.class_token, latent)
            (g,) = torch.autograd.grad(f.sum(), leaf)
            rows, cols = tok.grid
            heat = g.abs().sum(1, keepdim=True)
            heat = F.adaptive_avg_pool2d(heat, (rows, cols))[:, 0] * (heat.shape[-2] * heat.shape[-1] / (rows * cols))
            return heat.detach().cpu(), f.detach(), tok.class_token.detach()
        if method == "grad_x_input":
            leaves: dict[str, torch.Tensor] = {}

            def as_leaf(e: torch.Tensor) -> torch.Tensor:
                leaves["e"] = e.detach().clone().requires_grad_(True)
                return leaves["e"]

            tok = forward_tokens(clip, batch, layer, edit=as_leaf)
            f = _pre_activation(sae, tok.class_token, latent)
            (g,) = torch.autograd.grad(f.sum(), leaves["e"])
            heat = (g * leaves["e"]).sum(-1)
            return heat.detach().cpu().reshape(-1, *tok.grid), f.detach(), tok.class_token.detach()
        # Integrated gradients from the zero patch embedding or a baseline image's (positional
        # and class embeddings kept): midpoints alpha = (i + 0.5) / steps, every alpha of an
        # image in one batch.
        n = batch.shape[0]
        with torch.no_grad():
            ref = forward_tokens(clip, batch, layer)
            e_base = (torch.zeros_like(ref.patch_embeddings) if base is None
                      else forward_tokens(clip, base, layer).patch_embeddings)
        e_full = ref.patch_embeddings.detach()
        delta = e_full - e_base
        alphas = (torch.arange(steps, dtype=e_full.dtype, device=e_full.device) + 0.5) / steps
        leaf = (e_base[None] + alphas[:, None, None, None] * delta[None]).reshape(steps * n, *e_full.shape[1:])
        leaf = leaf.detach().requires_grad_(True)
        tok = forward_tokens(clip, batch.repeat(steps, 1, 1, 1), layer, edit=lambda e: leaf)
        f = _pre_activation(sae, tok.class_token, latent)
        (g,) = torch.autograd.grad(f.sum(), leaf)
        mean_grad = g.reshape(steps, n, *e_full.shape[1:]).mean(0)
        heat = (mean_grad * delta).sum(-1)
        return (heat.detach().cpu().reshape(-1, *ref.grid), _pre_activation(sae, ref.class_token, latent).detach(),
                ref.class_token.detach())


@torch.no_grad()
def patch_activations(clip: Any, sae: Any, images: Sequence[Image.Image] | torch.Tensor, latents: Sequence[int],
                      layer: int = -1) -> torch.Tensor:
    """(N, len(latents), rows, columns): each latent's activation when the SAE encodes each
    patch token of block ``layer`` (its top-k or threshold code, as for class tokens)."""
    tok = forward_tokens(clip, pixels(clip, images), layer)
    n, p, d = tok.patch_tokens.shape
    enc = sae.encode(tok.patch_tokens.reshape(n * p, d).to(sae.W_enc.device))
    enc = type(enc)(enc.indices.cpu(), enc.values.cpu())
    want = torch.as_tensor([int(j) for j in latents])
    hit = enc.indices[:, :, None] == want[None, None, :]
    acts = (enc.values[:, :, None] * hit).sum(1)          # (N*P, L)
    return acts.reshape(n, p, len(want)).permute(0, 2, 1).reshape(n, len(want), *tok.grid)




def overlay(image: Image.Image | Any, heat: torch.Tensor | Any, alpha: float = 0.55, cmap: str = "inferno"
            ) -> Image.Image:
    """``image`` (PIL or an (H, W, 3) uint8 array) with the positive part of a patch-grid ``heat`` map drawn over it (scaled to
    its own maximum, upsampled bilinearly to the image; transparent where the heat is 0)."""
    import matplotlib
    import numpy as np

    if not isinstance(image, Image.Image):   # image sets may hand out (H, W, 3) uint8 arrays
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    h = torch.as_tensor(np.asarray(heat), dtype=torch.float32).clamp_min(0)
    if h.ndim != 2:
        raise ValueError(f"overlay: expected a (rows, columns) map, got shape {tuple(h.shape)}")
    top = float(h.max())
    h = h / top if top > 0 else h
    w, hgt = image.size
    up = F.interpolate(h[None, None], size=(hgt, w), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = matplotlib.colormaps[cmap](up)[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    a = float(alpha) * up[..., None]
    out = (1 - a) * base + a * colours
    return Image.fromarray(np.round(out * 255).astype(np.uint8))


def heat_source(clip: Any, sae: Any, image_set: Any, method: str = "integrated_gradients",
                baseline_set: Any = None, **options: Any):
    """A function ``(latent, rows) -> (len(rows), rows, columns)`` maps of ``method`` (a name
    of `METHODS` or "patch_activations") on ``image_set``'s images: what
    `gallery.latent_grid(..., heat=)` draws over each image.

    ``baseline_set`` (integrated gradients only): an image set with the same rows, each row's
    image the path's start, e.g. the pool as ``image_set`` edited by Eq. 32's red hue and the pool
    itself as the baseline: where adding red moves the latent."""
    if method not in METHODS and method != "patch_activations":
        raise ValueError(f"heat_source: unknown method {method!r}; choose from {list(METHODS) + ['patch_activations']}")
    if baseline_set is not None:
        if method != "integrated_gradients":
            raise ValueError(f"heat_source: a baseline_set needs method='integrated_gradients', got {method!r}")
        if len(baseline_set) != len(image_set):
            raise ValueError(f"heat_source: baseline_set has {len(baseline_set)} images for image_set's "
                             f"{len(image_set)}; they must share rows")

    def source(latent: int, rows: Sequence[int]) -> torch.Tensor:
        images = [image_set.load_image(int(i)) for i in rows]
        if method == "patch_activations":
            return patch_activations(clip, sae, images, [int(latent)], **options)[:, 0]
        base = None if baseline_set is None else [baseline_set.load_image(int(i)) for i in rows]
        return latent_heatmap(clip, sae, images, int(latent), method, baseline=base, **options).heat

    return source


__all__ = ["METHODS", "LatentMaps", "latent_heatmap", "patch_activations", "output_gradient", "overlay", "heat_source"]
