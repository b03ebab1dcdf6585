"""clipattr_utils: every computation behind the clipattr notebook series.

The flow, one module per stage::

    image --models (CLIP backbone)--> features (class token, cached) --> sae (top-k)
          --> models.Head (LayerNorm + projection) --> cosine with text --> attribution scores
"""

__version__ = "0.1.0"
