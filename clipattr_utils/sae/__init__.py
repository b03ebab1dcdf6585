"""Top-k sparse autoencoders: model, sparse training step, training, metrics, save/load.

    from clipattr_utils import sae
    result = sae.train(cache, sae.TrainConfig(d_sae=2048, k=32), val_features=val_cache)
    result.sae.save("runs/sae")                     # sae.safetensors + cfg.json
    print(sae.evaluate(result.sae, val_cache).summary())
    model = sae.TopKSAE.load("runs/sae", d_in=clip.head.d_pre)   # or a SAELens / sparsify / Prisma folder
"""

from .io import check_compatible, load_sae, save_sae, save_saelens
from .metrics import SAEMetrics, evaluate
from .model import EncoderOutput, TopKSAE
from .plots import metrics_table, training_curves
from .sparse import SparseCode, decode, topk_encode
from .train import TrainConfig, TrainResult, epoch_indices, train

__all__ = [
    "EncoderOutput", "TopKSAE", "SparseCode", "topk_encode", "decode", "TrainConfig", "TrainResult", "train",
    "epoch_indices", "SAEMetrics", "evaluate", "save_sae", "load_sae", "save_saelens", "check_compatible", "training_curves", "metrics_table",
]
