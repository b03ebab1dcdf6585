"""Run under torchrun by tests/test_extract_distributed.py: the batch CLI, then the three
sharded passes on its cache; every rank saves what it got under argv[1]/rank<r>/.

    torchrun --standalone --nproc_per_node 2 tests/_dist_passes.py OUT -- <CLI arguments>
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from clipattr_utils import cli_extract, distributed, features
from clipattr_utils.data import TensorImageSet
from clipattr_utils.features import FeatureCache
from clipattr_utils.models import load_clip
from clipattr_utils.sae import TopKSAE

out = Path(sys.argv[1])
argv = sys.argv[sys.argv.index("--") + 1:]
cache_dir = Path(argv[argv.index("--cache-dir") + 1])
# Our own group, made before the CLI runs: the CLI then uses it and leaves it up for the passes.
dist.init_process_group("gloo")
if cli_extract.main(argv) != 0:
    sys.exit(1)
rank = dist.get_rank()
cache = FeatureCache(next(p for p in cache_dir.iterdir() if not p.name.endswith(".partial")))
torch.manual_seed(0)
sae = TopKSAE(cache.d, 64, k=4).eval()
head = load_clip("sandbox").head
text = torch.nn.functional.normalize(torch.randn(3, head.d_post, generator=torch.Generator().manual_seed(1)), dim=-1)
top = distributed.top_activating(cache, sae, 6, chunk_rows=8, progress=False)
rel = distributed.expected_relevance(cache.read(), cache.labels, sae, head, text, chunk_n=7)
met = distributed.evaluate_sae(sae, cache, batch_size=8, progress=False)
folder = out / f"rank{rank}"
top.save(folder)
np.savez(folder / "passes.npz", mean=rel.mean.numpy(), std=rel.std.numpy(), count=rel.count,
         output_mean=rel.output_mean, output_std=rel.output_std, active=rel.active.numpy(), counts=met.counts,
         summary=np.array([met.n, met.fvu, met.mse, met.cosine, met.l0], dtype=np.float64))
# Ranks that disagree on the key (here: other images per rank) must fail at once, all of them.
try:
    features.extract(load_clip("sandbox"), TensorImageSet([np.full((8, 8, 3), rank, np.uint8)]), out / "mismatch",
                     num_workers=0, progress=False)
except RuntimeError as err:
    (folder / "mismatch.txt").write_text(str(err))
dist.destroy_process_group()
