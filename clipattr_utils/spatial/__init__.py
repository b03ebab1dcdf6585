"""Where in the image: patch-level latent maps and input heatmaps.

    maps = spatial.latent_heatmap(clip, sae, images, latent, "integrated_gradients")
    acts = spatial.patch_activations(clip, sae, images, [latent])
    share = spatial.energy_share(maps.heat, spatial.patch_coverage(masks, grid))
"""

from .maps import METHODS, LatentMaps, heat_source, latent_heatmap, output_gradient, overlay, patch_activations
from .score import POINT_COVER, energy_share, patch_coverage, pointing_hits, random_share
from .tokens import Tokens, forward_tokens, pixels

__all__ = ["METHODS", "LatentMaps", "heat_source", "overlay", "latent_heatmap", "output_gradient", "patch_activations", "POINT_COVER",
           "energy_share", "patch_coverage", "pointing_hits", "random_share", "Tokens", "forward_tokens", "pixels"]
