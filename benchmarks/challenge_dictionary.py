"""Can the detective's SAE name the hidden value at all? Brute force with the answer in hand.

For each challenge seed, the best purity in the hidden value (share of a latent's top-20 test
images that carry it, `challenge.scoring.latent_purity`'s measure) over every latent of several
SAEs trained on independent-world images: the bar the scoring sets (0.8) can only be passed when
some latent reaches it.

    python benchmarks/challenge_dictionary.py --seeds 24 33 37 38

Variants: ``1536x8000`` (the detective's SAE in rounds 1-2), ``3072x8000`` (twice as wide),
``1536x24000`` (three times the images; the detective's SAE since). Prints a markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

VARIANTS = {"1536x8000": (1536, 8000), "3072x8000": (3072, 8000), "1536x24000": (1536, 24000)}


def best_purity(sae, x: torch.Tensor, has: np.ndarray, n: int = 20) -> tuple[float, int]:
    """(best purity, its latent) over every latent: the share of its top-``n`` rows (by activation,
    active rows only) where ``has`` is true."""
    with torch.no_grad():
        enc = sae.encode(x)
    dense = torch.zeros(x.shape[0], sae.d_sae).scatter_add_(1, enc.indices, enc.values.float())
    top = torch.topk(dense, n, dim=0)
    active = top.values > 0
    hits = torch.from_numpy(np.array(has, dtype=np.float32))[top.indices] * active  # a copy: `has` may be read-only
    purity = hits.sum(0) / active.sum(0).clamp_min(1)
    j = int(purity.argmax())
    return float(purity[j]), j


def main(argv: list[str] | None = None) -> None:
    import clipattr_utils as ca
    from clipattr_utils.challenge import game
    from clipattr_utils.challenge.images import carries
    from clipattr_utils.sae.train import TrainConfig, train
    from clipattr_utils.sandbox.world import ObjectRecipe, make_dataset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    a = p.parse_args(argv)
    variants = {name: VARIANTS[name] for name in a.variants}
    cache = ca.storage.resolve_cache_dir(a.cache_dir)
    clip = ca.load_clip("sandbox")
    saes = {}
    for name, (d_sae, n_train) in variants.items():
        # the images and seed detective_sae uses, so "1536x24000" is the detective's own SAE
        feats = ca.extract(clip, make_dataset(n_train, "train", 50_000, recipe=ObjectRecipe.independent()), cache,
                           progress=False)
        saes[name] = train(feats, TrainConfig.sandbox(seed=0, d_sae=d_sae, device="cpu"), progress=False).sae.eval()
    print("| seed | hidden value | " + " | ".join(variants) + " |\n|---|---|" + "---|" * len(variants))
    for seed in a.seeds:
        c = game.make(seed, clip=clip, cache_dir=cache)
        answer = game.reveal(c)
        if answer is None:
            print(f"| {seed} | control | " + " | ".join("–" for _ in variants) + " |")
            continue
        x = ca.extract(clip, c.test._images, cache, progress=False).read()
        has = carries(c.test._images.attributes, answer.kind, answer.value)
        cells = [f"{best_purity(sae, x, has)[0]:.2f}" for sae in saes.values()]
        print(f"| {seed} | {answer.kind} {answer.value} ({answer.target}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
