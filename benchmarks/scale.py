"""Every stage of the series at ImageNet's shapes, without ImageNet: time and peak memory per stage.

    python benchmarks/scale.py --scale 0.01            # 12,812 training tokens (CI size)
    python benchmarks/scale.py --scale 0.1 --out runs/scale
    python benchmarks/scale.py --scale 1.0 --stages generate train metrics top

``--scale`` changes only N: the training tokens (1,281,167 x 768 at 1.0), the validation tokens
(50,000), the mining pool (every fifth training token) and the labeling pool (all of them).
Everything else has the paper's sizes: 1,000 classes with ImageNet's names, an SAE of 30,000
latents with k = 64 and batch 4096, the 21,843 ImageNet-21k labels, a ViT-B/32-shaped head
(768 -> 512).

Synthetic data (``generate``): a planted dictionary of 4,096 unit atoms; each token is its class
mean plus 16 atoms (8 from a class-specific set of 64, 8 from all) with positive weights, plus
noise; labeler embeddings (512-d) are a fixed random map of the tokens. Both are written through
the package's own cache writer (`features.write_cache`), so every reader sees a real cache.
The class prompts are the head's embeddings of the class means (plus a little noise), so each
class scores highest on its own prompt, as a CLIP's zero-shot classes do; the 21k label
embeddings are random unit vectors (the stages' cost does not depend on what the labels say).

Each stage is the package call the notebooks make (no benchmark-only path): `train_sae`,
`sae.evaluate`, `top_activating`, `label_latents` + `hidden_concepts`, `basis_diversity`,
`faithfulness.evaluate` (100 classes x 50 tokens, all methods), `expected_relevance` + `mine`
(notebook 04), `train_probe` (App. D.2, on the validation tokens), and the latent atlas
(`write_outputs` + `write_atlas`). Per stage: wall time, the process's peak RSS during the stage
(Linux: the peak is reset before each stage through ``/proc/self/clear_refs``; it includes the
pages of memory-mapped caches, which the kernel can drop), the peak of its anonymous memory
(heap and tensors, sampled every 20 ms: what the bound is about) and the bytes it wrote. ``--max-rss-gb G`` makes the run fail when a stage's peak exceeds G x ``--scale`` plus the
stage's N-independent part (`FIXED_GB`), which is how CI checks at scale 0.01 that no stage
holds a dense N x d_sae matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, N_CLASSES, D_PRE, D_POST, D_LABELER = 1_281_167, 50_000, 1000, 768, 512, 512
STAGES = ("generate", "train", "metrics", "top", "labeling", "diversity", "faithfulness", "mining", "probe", "atlas")
FIXED_GB = {"generate": 1.45, "train": 2.2, "metrics": 2.0, "top": 2.05, "labeling": 2.7, "diversity": 2.75,
            "faithfulness": 2.1, "mining": 3.25, "probe": 2.6, "atlas": 2.75}
"""Per stage, the part of the peak RSS that does not grow with N: the interpreter and libraries,
the SAE (30,000 x 768 twice), mining's per-class statistics (1,000 x 30,000), the 21,843-label
vocabulary, and what earlier stages of the same run keep (the top-100 table, the labels): the
peak anonymous RSS measured at scale 0.01 (2026-12-05) plus 0.8 GB; ``--max-rss-gb G`` bounds a
stage's peak by FIXED_GB + G x scale, so at 0.01 a dense N x d_sae float32 matrix (1.5 GB)
fails it."""


def _status_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 2**20 for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class AnonPeak:
    """The peak of the process's anonymous RSS (``RssAnon``: heap and tensors, not the pages of
    memory-mapped cache files, which the kernel can drop), sampled every 20 ms in a thread."""

    def __init__(self) -> None:
        import threading

        self.peak, self._stop = _status_gb("RssAnon"), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _status_gb("RssAnon"))

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_gb("RssAnon"))


def _written(path: Path, since: float) -> int:
    """Bytes in the files under ``path`` modified since ``since`` (what a stage wrote)."""
    if not path.exists():
        return 0
    return sum(st.st_size for p in path.rglob("*") if p.is_file() and (st := p.stat()).st_mtime >= since)


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_embedding_bag", "aten::linear")
"""Ops whose self CPU time counts as matrix products in ``--profile`` (``aten::linear`` and
``aten::matmul`` dispatch to mm/addmm, so their own self time is small)."""

PROFILE = [False]
"""``--profile``: time each stage under torch.profiler and report the share in `GEMM_OPS`."""

STORAGE = ["float32"]
"""How the synthetic caches are stored (``--storage``; the readers return float32 either way)."""


class Synthetic:
    """The generative model (module docstring); deterministic in ``seed``."""

    def __init__(self, seed: int = 0, n_atoms: int = 4096):
        g = torch.Generator().manual_seed(seed)
        self.atoms = F.normalize(torch.randn(n_atoms, D_PRE, generator=g), dim=1)
        self.class_means = 2.0 * torch.randn(N_CLASSES, D_PRE, generator=g) / D_PRE ** 0.5 + 0.5
        self.class_atoms = torch.randint(0, n_atoms, (N_CLASSES, 64), generator=g)
        self.to_labeler = torch.randn(D_PRE, D_LABELER, generator=g) / D_PRE ** 0.5
        self.seed = seed

    def tokens(self, start: int, stop: int, salt: int = 0) -> tuple[torch.Tensor, np.ndarray]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + salt * 7919 + start)
        n = stop - start
        labels = torch.arange(start, stop) % N_CLASSES
        own = self.class_atoms[labels][torch.arange(n)[:, None], torch.randint(0, 64, (n, 8), generator=g)]
        shared = torch.randint(0, len(self.atoms), (n, 8), generator=g)
        idx = torch.cat([own, shared], 1)
        w = 0.5 + torch.rand(n, 16, generator=g)
        # sum_i w_i atom_i without the (n, 16, d) gather
        x = F.embedding_bag(idx, self.atoms, per_sample_weights=w, mode="sum")
        x += self.class_means[labels] + 0.05 * torch.randn(n, D_PRE, generator=g)
        return x, labels.numpy()

    def write(self, path: Path, n: int, salt: int, labeler: bool = False, chunk: int = 65536) -> None:
        """Write n rows through `features.write_cache`, generated in chunks into a memmap."""
        from clipattr_utils.features import write_cache

        d = D_LABELER if labeler else D_PRE
        tmp = path.with_name(path.name + ".gen.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d))
        labels = np.empty(n, dtype=np.int64)
        for s in range(0, n, chunk):
            x, lab = self.tokens(s, min(s + chunk, n), salt)
            arr[s:s + len(x)] = F.normalize(x @ self.to_labeler, dim=1).numpy() if labeler else x.numpy()
            labels[s:s + len(x)] = lab
        arr.flush()
        from clipattr_utils.data import imagenet_wnids

        wnids = imagenet_wnids()
        ids = [f"{wnids[c]}/{wnids[c]}_{i}.JPEG" for i, c in enumerate(labels)]  # ImageNet-shaped sample ids
        meta = {"key": f"synthetic-{salt}-{n}-{self.seed}{'-labeler' if labeler else ''}",
                "what": "embedding" if labeler else "class_token"}
        write_cache(path, np.load(tmp, mmap_mode="r"), labels, ids, meta=meta, storage=STORAGE[0])
        tmp.unlink()


def run(scale: float, out: Path, stages: list[str], max_rss_gb: float | None, seed: int = 0) -> pd.DataFrame:
    import clipattr_utils as ca
    from clipattr_utils import faithfulness, mining as mi
    from clipattr_utils.features import FeatureCache
    from clipattr_utils.head import Head
    from clipattr_utils.labeling import Vocabulary, imagenet21k_names
    from clipattr_utils.mining import evaluate as ev

    n, n_val = max(2000, round(N_TRAIN * scale)), max(1000, round(N_VAL * scale))
    out.mkdir(parents=True, exist_ok=True)
    syn = Synthetic(seed)
    g = torch.Generator().manual_seed(seed + 1)
    head = Head(1 + 0.1 * torch.randn(D_PRE, generator=g), 0.1 * torch.randn(D_PRE, generator=g),
                torch.randn(D_PRE, D_POST, generator=g) / D_PRE ** 0.5, 1e-5)
    # Class prompts that point at their classes (a class's tokens score highest on its own
    # prompt), so that mining's outsiders are the few non-class tokens scoring like the class:
    # with unrelated random prompts most of the pool would be every class's outsider.
    with torch.no_grad():
        text = F.normalize(head(syn.class_means) + 0.02 * torch.randn(N_CLASSES, D_POST, generator=g), dim=1)
    classnames = list(ca.data.imagenet_classnames())
    paths = {"train": out / "train", "val": out / "val", "labeler": out / "labeler"}
    state: dict = {}
    rows = []

    def stage(name: str):
        def wrap(fn):
            if name not in stages:
                return
            since = time.time()
            _reset_peak()
            prof = None
            if PROFILE[0]:
                from torch.profiler import ProfilerActivity, profile

                prof = profile(activities=[ProfilerActivity.CPU])
                prof.__enter__()
            t0 = time.perf_counter()
            with AnonPeak() as anon:
                fn()
            seconds = time.perf_counter() - t0
            rows.append({"scale": scale, "stage": name, "N": n, "seconds": round(seconds, 1),
                         "peak_anon_gb": round(anon.peak, 2), "peak_rss_gb": round(_status_gb("VmHWM"), 2),
                         "written_mb": round(_written(out, since) / 2**20, 1)})
            if prof is not None:
                prof.__exit__(None, None, None)
                # torch ops only: sklearn's and numpy's BLAS calls (the probe) are not seen
                gemm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e6
                rows[-1]["gemm_share"] = round(gemm / max(seconds, 1e-9), 3)
            print(json.dumps(rows[-1]), flush=True)
            bound = FIXED_GB[name] + max_rss_gb * scale if max_rss_gb is not None else None
            if bound is not None and rows[-1]["peak_anon_gb"] > bound:
                raise SystemExit(f"stage {name}: peak RSS {rows[-1]['peak_anon_gb']} GB (anonymous) over the bound "
                                 f"{bound:.2f} GB ({FIXED_GB[name]} + {max_rss_gb} x scale {scale})")
        return wrap

    def need(key: str, make):
        if key not in state:
            state[key] = make()
        return state[key]

    feats = lambda: FeatureCache(paths["train"])  # noqa: E731
    labeler = lambda: FeatureCache(paths["labeler"])  # noqa: E731

    @stage("generate")
    def _():
        for key in paths:
            shutil.rmtree(paths[key], ignore_errors=True)
        syn.write(paths["train"], n, salt=0)
        syn.write(paths["val"], n_val, salt=1)
        syn.write(paths["labeler"], n, salt=0, labeler=True)

    def sae():
        if (out / "sae" / "cfg.json").is_file():
            return ca.TopKSAE.load(out / "sae")
        raise SystemExit("no SAE: run the 'train' stage first")

    @stage("train")
    def _():
        cfg = ca.TrainConfig(d_sae=30000, k=64, batch_size=4096, epochs=1, epoch_fraction=0.1, seed=seed)
        trained = ca.train_sae(feats(), cfg, progress=False)
        trained.sae.save(out / "sae")

    @stage("metrics")
    def _():
        m = ca.sae.evaluate(need("sae", sae), feats(), progress=False)
        state["metrics"] = m.summary()

    @stage("top")
    def _():
        state["top"] = ca.top_activating(feats(), need("sae", sae), n=100, progress=False)

    def vocab():
        names = imagenet21k_names()
        frame = pd.DataFrame({"label": names}).drop_duplicates("label")
        gv = torch.Generator().manual_seed(seed + 2)
        return Vocabulary(ca.labeling.vocabulary.as_frame(frame), F.normalize(torch.randn(len(frame), D_LABELER, generator=gv), dim=1),
                          F.normalize(torch.randn(D_LABELER, generator=gv), dim=0), labeler="synthetic")

    @stage("labeling")
    def _():
        top = need("top", lambda: ca.top_activating(feats(), need("sae", sae), n=100, progress=False))
        table = ca.label_latents(top, None, need("vocab", vocab), labeler_embeddings=labeler(), n_used=20,
                                 min_count=20, top_m=5, progress=False)
        state["table"] = table
        state["hidden"] = ca.hidden_concepts(table, tau_act=3.0, tau_align=0.0)

    @stage("diversity")
    def _():
        top = need("top", lambda: ca.top_activating(feats(), need("sae", sae), n=100, progress=False))
        ca.basis_diversity(feats(), need("sae", sae), labeler(), need("vocab", vocab), top_samples=top, progress=False)

    @stage("faithfulness")
    def _():
        labels = np.asarray(feats().labels)
        rows_ = np.concatenate([np.flatnonzero(labels == c)[:50] for c in range(100)])
        x = feats().take(rows_)
        faithfulness.evaluate(x, labels[rows_], need("sae", sae), head, text[:100], progress=False)

    @stage("mining")
    def _():
        cache = feats()
        every = np.arange(0, cache.n, 5)  # App. D.1: every fifth training image
        x = cache.take(every)
        labels = np.asarray(cache.labels)[every]
        expected = mi.expected_relevance(x, labels, need("sae", sae), head, text, progress=False)
        ids = np.asarray(cache.ids)[every]
        mi.mine(x, labels, ids, need("sae", sae), head, text, expected, classnames, progress=False)

    @stage("probe")
    def _():
        val = FeatureCache(paths["val"])
        with torch.no_grad():
            emb = head(val.read()).numpy()
        ev.train_probe(emb, np.asarray(val.labels), N_CLASSES, require_all_classes=False)

    @stage("atlas")
    def _():
        from clipattr_utils.atlas import write_atlas
        from clipattr_utils.labeling.outputs import write_outputs

        top = need("top", lambda: ca.top_activating(feats(), need("sae", sae), n=100, progress=False))
        table = need("table", lambda: ca.label_latents(top, None, need("vocab", vocab), labeler_embeddings=labeler(),
                                                        n_used=20, min_count=20, top_m=5, progress=False))
        run_dir = out / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        write_outputs(run_dir / "02_labeling", table=table, top=top, vocabulary=need("vocab", vocab),
                      pool={"kind": "synthetic", "n": n}, hidden=state.get("hidden"))
        write_atlas(run_dir)

    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/scale-<scale>)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--max-rss-gb", type=float, default=None,
                   help="fail when a stage's peak RSS exceeds BASE + this x scale (e.g. 16 for the issue's bound)")
    p.add_argument("--keep", action="store_true", help="keep the generated caches (default: remove at the end)")
    p.add_argument("--storage", default="float32", choices=["float32", "float16"],
                   help="rows on disk in float32 (default) or float16 (features.write_cache(storage=))")
    p.add_argument("--profile", action="store_true",
                   help="time each stage under torch.profiler: the share of its wall time in matrix products "
                        "(gemm_share; profiling slows Python-heavy stages, so run it apart from the timing runs)")
    p.add_argument("--isolate", action="store_true",
                   help="run each stage in a fresh process (its peak then holds nothing an earlier stage left; "
                        "stages recompute the top-100 table and the labels they need)")
    a = p.parse_args(argv)
    STORAGE[0] = a.storage
    PROFILE[0] = a.profile
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("scale.py measures peak RSS through Linux's /proc/self/clear_refs")
    out = a.out or ROOT / "runs" / f"scale-{a.scale:g}"
    try:
        if a.isolate:
            import subprocess

            frames = []
            for name in a.stages:  # one child at a time
                cmd = [sys.executable, __file__, "--scale", str(a.scale), "--out", str(out), "--stages", name, "--keep",
                       "--storage", a.storage] + (["--profile"] if a.profile else [])
                if a.max_rss_gb is not None:
                    cmd += ["--max-rss-gb", str(a.max_rss_gb)]
                subprocess.run(cmd, check=True)
                frames.append(pd.read_csv(out / "stages.csv"))
            frame = pd.concat(frames, ignore_index=True)
        else:
            frame = run(a.scale, out, a.stages, a.max_rss_gb)
    finally:
        if not a.keep:
            for name in ("train", "val", "labeler"):
                shutil.rmtree(out / name, ignore_errors=True)
    frame.to_csv(out / "stages.csv", index=False)
    gemm = "gemm_share" in frame.columns
    print("\n| stage | N | seconds | peak anonymous RSS (GB) | peak RSS incl. mapped files (GB) | written (MB) |"
          + (" time in GEMMs |" if gemm else "") + "\n|---|---|---|---|---|---|" + ("---|" if gemm else ""))
    for r in frame.to_dict(orient="records"):
        print(f"| {r['stage']} | {r['N']} | {r['seconds']} | {r['peak_anon_gb']} | {r['peak_rss_gb']} | {r['written_mb']} |"
              + (f" {r['gemm_share']:.0%} |" if gemm else ""))


if __name__ == "__main__":
    main()
