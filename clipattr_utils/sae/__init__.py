"""Top-k sparse autoencoders: model, training, metrics, save/load."""

from .model import EncoderOutput, TopKSAE

__all__ = ["EncoderOutput", "TopKSAE"]
