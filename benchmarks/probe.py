"""The App. D.2 linear probe: sklearn's LogisticRegression vs `mining.evaluate.TorchProbe`, side by side.

    python benchmarks/probe.py                         # 1,000 samples, 1,000 classes, 512-d (the rehearsal's size)
    python benchmarks/probe.py --n 5000 --classes 1000 # closer to ImageNet val (50,000)

Both fit the same objective (C * cross-entropy + ||W||^2 / 2) on the same unit embeddings
(class means plus noise, ill-conditioned like a CLIP's: see the comment in `main`); printed: wall time of each, their ratio, the objective each reached and
the largest difference of their predicted probabilities.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from clipattr_utils.mining import evaluate as ev


def objective(probe, z: np.ndarray, y: np.ndarray, C: float) -> float:
    logits = torch.as_tensor(probe.decision_function(z), dtype=torch.float64)
    index = {c: i for i, c in enumerate(probe.classes_)}
    t = torch.as_tensor([index[v] for v in y])
    return float(C * F.cross_entropy(logits, t, reduction="sum") + 0.5 * np.square(probe.coef_).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    y = np.arange(a.n) % a.classes
    # Like a CLIP's image embeddings: one large common direction and a fast-decaying spectrum
    # (the sklearn probe of the ImageNet-layout rehearsal took 248 s at this size on a random-init
    # ViT-B-32's embeddings; isotropic Gaussian classes converge in a second).
    spectrum = np.geomspace(1.0, 1e-3, a.dim)
    x = (rng.normal(size=(a.classes, a.dim))[y] + rng.normal(size=(a.n, a.dim))) * spectrum + 5.0
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    fits = {}
    for solver in ("torch", "sklearn"):
        t0 = time.perf_counter()
        probe = ev.train_probe(x, y, a.classes, solver=solver, device=a.device)
        fits[solver] = (time.perf_counter() - t0, probe)
    p = {s: torch.softmax(torch.as_tensor(f[1].decision_function(z)), 1).numpy() for s, f in fits.items()}
    print(f"n={a.n} classes={a.classes} dim={a.dim}, {torch.get_num_threads()} torch threads, device {a.device}")
    print("| solver | seconds | objective |")
    print("|---|---|---|")
    for s, (sec, probe) in fits.items():
        print(f"| {s} | {sec:.1f} | {objective(probe, z, y, 1.0):.2f} |")
    print(f"sklearn / torch time: {fits['sklearn'][0] / fits['torch'][0]:.1f}x; "
          f"max |P_sklearn - P_torch| = {np.abs(p['sklearn'] - p['torch']).max():.2e}")


if __name__ == "__main__":
    main()
