"""Where the heat falls: latent maps scored against the sandbox's planted pixel masks.

    python benchmarks/heatmaps.py --seeds 0 1 [--out section.md]

For each seed: the detective's SAE (`challenge.detective_sae`: the sandbox CLIP's class
tokens of the independent world, every attribute common and none tied to an object) and a pool
of independent-world test images. Latents whose top-20 pool images are >= 90 % pure in one
planted attribute (a written word, the watermark, the flame, a background, an object) are
mapped on those images by every method of `spatial.METHODS` and by the SAE's patch
activations; each map is scored by its energy share inside the attribute's mask, against the
random-map expectation (the mask's area) and the pointing game. Prints one table per seed and
the time for 20 images per method.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import clipattr_utils as ca
from clipattr_utils import spatial
from clipattr_utils.challenge import detective_sae
from clipattr_utils.challenge.detective import _dense
from clipattr_utils.sandbox import render
from clipattr_utils.sandbox.world import ObjectRecipe, make_dataset

KINDS = {
    # kind: (mask name, function of the attribute table -> the value each row carries)
    "word": ("word", lambda a: np.where(a["text"].astype(str) != "", "word:" + a["text"].astype(str), "")),
    "watermark": ("watermark", lambda a: np.where(a["watermark"].astype(bool), "watermark", "")),
    "flame": ("companion", lambda a: np.where(a["companion"].astype(str) != "", "flame", "")),
    "background": ("background", lambda a: "bg:" + a["background"].astype(str)),
    "object": ("object", lambda a: "obj:" + a["object"].astype(str)),
}
METHODS = list(spatial.METHODS) + ["patch_activations"]


def pure_latents(acts: torch.Tensor, attrs: pd.DataFrame, n_top: int = 20, purity: float = 0.9,
                 per_kind: int = 8) -> list[dict]:
    """Latents whose top-``n_top`` images carry one value of a kind at >= ``purity``."""
    out = []
    tops = {}
    for j in torch.nonzero((acts > 0).sum(0) >= n_top).flatten().tolist():
        tops[j] = torch.argsort(acts[:, j], descending=True, stable=True)[:n_top].numpy()
    for kind, (mask, value_of) in KINDS.items():
        values = np.asarray(value_of(attrs))
        found = []
        for j, top in tops.items():
            v, counts = np.unique(values[top], return_counts=True)
            best = int(np.argmax(counts))
            share = counts[best] / len(top)
            if v[best] != "" and share >= purity:
                found.append({"kind": kind, "mask": mask, "latent": j, "value": str(v[best]), "purity": share,
                              "rows": top})
        found.sort(key=lambda r: -r["purity"])
        out += found[:per_kind]
    return out


def score_latent(clip, sae, pool, rec: dict, steps: int, images: list | None = None) -> list[dict]:
    """Every method's map of ``rec``'s latent on its rows (or on ``images``, edits of those rows
    that keep the masks), scored against the mask ``rec["mask"]``."""
    if images is None:
        images = [pool.load_image(int(i)) for i in rec["rows"]]
    masks = np.stack([pool.masks(int(i))[rec["mask"]] for i in rec["rows"]])
    rows = []
    for method in METHODS:
        start = time.perf_counter()
        if method == "patch_activations":
            heat = spatial.patch_activations(clip, sae, images, [rec["latent"]])[:, 0]
        else:
            heat = spatial.latent_heatmap(clip, sae, images, rec["latent"], method, steps=steps).heat
        seconds = time.perf_counter() - start
        cov = spatial.patch_coverage(masks, tuple(heat.shape[1:]))
        share = spatial.energy_share(heat, cov)
        rows.append({"kind": rec["kind"], "latent": rec["latent"], "value": rec["value"], "purity": rec["purity"],
                     "method": method, "energy_share": float(np.nanmean(share.numpy())),
                     "random_share": float(spatial.random_share(cov).mean()),
                     "pointing": float(spatial.pointing_hits(heat, cov).double().mean()), "seconds": seconds})
    return rows


def run_seed(seed: int, n_pool: int, cache: Path, steps: int) -> pd.DataFrame:
    clip = ca.load_clip("sandbox")
    sae = detective_sae(clip, cache, n_train=8000, seed=seed)  # the SAE the recorded results used
    pool = make_dataset(n_pool, "test", 90_000 + seed, recipe=ObjectRecipe.independent())
    x = ca.extract(clip, pool, cache, progress=False).read()
    acts = _dense(sae, x)
    rows = []
    for rec in pure_latents(acts, pool.attributes):
        rows += score_latent(clip, sae, pool, rec, steps)
    frame = pd.DataFrame(rows)
    frame.insert(0, "seed", seed)
    return frame


def lesion_rows(run_dir: Path, cache: Path) -> list[dict]:
    """The red latent of a notebook-05 run (its ``summary.json``, ``pool.json`` and ``sae/``) on
    its top-20 pool images: the heat on the lesion (halo and pigment) against its area. The
    planted hue is applied to the whole image, so the whole image is "tinted"; the question is
    whether the latent reads the hue off the lesion or off the skin."""
    import json

    from clipattr_utils import melanoma as mel

    summary_ = json.loads((run_dir / "summary.json").read_text())
    provenance = json.loads((run_dir / "pool.json").read_text())
    clip = ca.load_clip(summary_.get("model", "sandbox-derm"))
    sae = ca.TopKSAE.load(run_dir / "sae", d_in=clip.head.d_pre)
    pool = mel.make_sets({"pool": provenance["pool"]})["pool"]
    latent = int(summary_["red_latent"])
    acts = _dense(sae, ca.extract(clip, pool, cache, progress=False).read())[:, latent]
    top = torch.argsort(acts, descending=True, stable=True)[:20].numpy()
    rec = {"kind": "red latent (lesion)", "mask": "lesion", "latent": latent, "value": "lesion",
           "purity": float((pool.attributes["tint"].to_numpy()[top] > 0).mean()), "rows": top}
    rows = score_latent(clip, sae, pool, rec, steps=16)
    # The counterfactual the world cannot draw: the same images with the hue confined to the
    # lesion (same strength), so "the tinted region" is the lesion alone.
    plain = pool.replace(tint=0.0)
    strengths = pool.attributes["tint"].to_numpy()
    local = [render.lesion_red_hue(plain.load_image(int(i)), float(strengths[i]), where=plain.masks(int(i))["lesion"])
             for i in top]
    rows += score_latent(clip, sae, pool, dict(rec, kind="red latent, hue on the lesion only"), steps=16,
                         images=local)
    # Where the hue itself moves the latent: integrated gradients from each image without the hue
    # (the same render, tint 0) to the image as the world drew it. The maps sum to the latent's
    # change under the hue, and the hue changes every pixel's red, skin included.
    originals = [pool.load_image(int(i)) for i in top]
    plains = [plain.load_image(int(i)) for i in top]
    masks = np.stack([pool.masks(int(i))["lesion"] for i in top])
    start = time.perf_counter()
    heat = spatial.latent_heatmap(clip, sae, originals, latent, "integrated_gradients", steps=16,
                                  baseline=plains).heat
    seconds = time.perf_counter() - start
    cov = spatial.patch_coverage(masks, tuple(heat.shape[1:]))
    rows.append({"kind": "red latent, the hue's own heat", "latent": latent, "value": "lesion", "purity": rec["purity"],
                 "method": "integrated_gradients from the hue-free image",
                 "energy_share": float(np.nanmean(spatial.energy_share(heat, cov).numpy())),
                 "random_share": float(spatial.random_share(cov).mean()),
                 "pointing": float(spatial.pointing_hits(heat, cov).double().mean()), "seconds": seconds})
    with torch.no_grad():
        def act(images):
            tokens = spatial.forward_tokens(clip, spatial.pixels(clip, images)).class_token
            return float(_dense(sae, tokens)[:, latent].mean())
        acts_by = {"whole image": act(originals), "lesion only": act(local), "none": act(plains)}
    for r in rows:
        r["run"] = str(run_dir)
        r.update({f"act_hue_{k.replace(' ', '_')}": v for k, v in acts_by.items()})
    return rows


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per seed, kind and method: latents, mean energy share, its ratio to a random map's, pointing."""
    g = frame.groupby(["seed", "kind", "method"], sort=False)
    out = g.agg(latents=("latent", "nunique"), energy_share=("energy_share", "mean"),
                random_share=("random_share", "mean"), pointing=("pointing", "mean")).reset_index()
    out["vs_random"] = out["energy_share"] / out["random_share"]
    return out


def timing(seed: int, n_pool: int, cache: Path, steps: int, reps: int) -> pd.DataFrame:
    """Seconds for one latent's maps on its 20 top images, per method: the first pure latent of
    each kind, each method ``reps`` times in turn (so a burst of other work hits every method
    alike); run it on an otherwise idle machine."""
    clip = ca.load_clip("sandbox")
    sae = detective_sae(clip, cache, n_train=8000, seed=seed)
    pool = make_dataset(n_pool, "test", 90_000 + seed, recipe=ObjectRecipe.independent())
    acts = _dense(sae, ca.extract(clip, pool, cache, progress=False).read())
    first = {}
    for rec in pure_latents(acts, pool.attributes):
        first.setdefault(rec["kind"], rec)
    rows = []
    for rec in first.values():
        for _ in range(reps):
            rows += score_latent(clip, sae, pool, rec, steps)
    frame = pd.DataFrame(rows)
    return frame.groupby("method")["seconds"].agg(["median", "min", "max", "count"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    p.add_argument("--n-pool", type=int, default=2400)
    p.add_argument("--steps", type=int, default=16, help="integrated-gradients steps")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/heatmaps-cache"))
    p.add_argument("--out", type=Path, default=None, help="also write the per-latent rows as CSV")
    p.add_argument("--lesion-runs", type=Path, nargs="*", default=[],
                   help="notebook-05 output folders whose red latent is also mapped (sandbox lesion world)")
    p.add_argument("--timing", type=int, default=0, metavar="REPS",
                   help="only time the methods: the first seed's first pure latent of each kind, REPS times")
    args = p.parse_args(argv)
    if args.timing:
        print(f"torch threads {torch.get_num_threads()}")
        print(timing(args.seeds[0], args.n_pool, args.cache_dir, args.steps, args.timing).round(2).to_string())
        return 0
    frames = [run_seed(s, args.n_pool, args.cache_dir, args.steps) for s in args.seeds]
    for i, run in enumerate(args.lesion_runs):
        frame = pd.DataFrame(lesion_rows(run, args.cache_dir))
        frame.insert(0, "seed", f"05:{run.name if run.name != '05_melanoma_case' else run.parent.name}")
        acts = frame.filter(like="act_hue_").iloc[0].round(3).to_dict()
        print(f"{run}: red latent {frame['latent'].iloc[0]}, mean activation on its top-20 by hue: {acts}")
        frames.append(frame)
    if not frames:
        raise SystemExit("nothing to measure: give --seeds or --lesion-runs")
    frame = pd.concat(frames, ignore_index=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.out, index=False)
    table = summary(frame)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    t = frame.groupby("method")["seconds"].median()
    print("\nseconds per latent (20 images), median:", {k: round(v, 2) for k, v in t.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
