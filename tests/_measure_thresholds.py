"""Measure the shipped sandbox CLIP's planted-mode criteria again and derive their thresholds.

    .venv/bin/python tests/_measure_thresholds.py [--seeds 5 11 23 31 47] [--json out.json]

Not a test: the derivation behind `test_sandbox_model.CRITERIA`, to run after retraining the
sandbox CLIP or its labeler. For every criterion it measures the shipped model at the
test's counts `N` on each image seed, and a random-init sandbox CLIP (torch seeds
`RANDOM_INIT_SEEDS`) on the same image seeds, then prints

    criterion | shipped min-max (SD) | suggested threshold (SE, source) | current | random-init min-max | fails alone

Margin rule: threshold = (min over the seeds) - 3 SE, rounded down to 0.01 (to 1 for
points), where SE is the larger of the seed-to-seed SD and the sampling SE at these counts
(binomial "b"; two binomials "b2", taken at p = 1/2, the widest; Hanley-McNeil "h" at the
mean AUROC; the measurement's own paired SEM "p", largest over seeds; "s": seed SD only).
"fails alone" says whether that criterion on its own fails on every random-init run; each
mode's check as a whole must fail on every one (printed below the table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_sandbox_model as t  # noqa: E402

MODES = ("zero_shot", "spurious", "typography", "polysemy", "compound", "lesion")


def sampling_se(kind: str, counts: tuple[int, ...], mean_value: float, paired_sems: list[float]) -> float:
    if kind == "b":
        p = min(max(mean_value, 0.0), 1.0)
        return math.sqrt(p * (1 - p) / counts[0])
    if kind == "b2":
        return math.sqrt(2 * 0.25 / counts[0])
    if kind == "h":
        a, (n1, n2) = min(max(mean_value, 1e-6), 1 - 1e-6), counts
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        return math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))
    if kind == "p":
        return max(paired_sems)
    return 0.0


def measure(model, mode: str, seed: int, labeler=None):
    """Values of one mode's criteria; for "labeler", `labeler` is measured against `model`."""
    if mode == "labeler":
        r = t.measure_labeler(labeler, model, seed=seed)
        return t.values_labeler(r), None
    r = getattr(t, f"measure_{mode}")(model, seed=seed)
    sem = r[0].sem_melanoma if mode == "lesion" else None
    return getattr(t, f"values_{mode}")(r), sem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 11, 23, 31, 47])
    ap.add_argument("--json", default=None, help="also write every measured value here")
    ap.add_argument("--modes", nargs="+", default=None, help="measure only these modes (e.g. labeler)")
    args = ap.parse_args(argv)
    from clipattr_utils.models import load_clip

    shipped = load_clip("sandbox")
    labeler = load_clip("sandbox-labeler") if t.LABELER.is_file() else None
    randoms = {s: t._load_random("sandbox", s) for s in t.RANDOM_INIT_SEEDS}
    random_labelers = {s: t._load_random("sandbox-labeler", s) for s in t.RANDOM_INIT_SEEDS}
    modes = MODES + (("labeler",) if labeler is not None else ())
    if args.modes:
        modes = tuple(m for m in modes if m in args.modes)
    values: dict = {"shipped": {}, "random": {}}
    sems: dict[str, list[float]] = {}
    for mode in modes:
        for seed in args.seeds:
            v, sem = measure(shipped, mode, seed, labeler)
            values["shipped"].setdefault(mode, []).append(v)
            if sem is not None:
                sems.setdefault(mode, []).append(sem)
            for ts, rc in randoms.items():
                # a random-init labeler is compared with the shipped explained model, as in the test
                rv, _ = (measure(shipped, mode, seed, random_labelers[ts]) if mode == "labeler"
                         else measure(rc, mode, seed))
                values["random"].setdefault(mode, []).append(rv)
            print(f"measured {mode} on image seed {seed}", file=sys.stderr, flush=True)
    print(f"{'criterion':58s} {'shipped min-max (SD)':24s} {'suggested (SE src)':20s} {'current':>8s} "
          f"{'random-init min-max':22s} fails alone")
    for mode, name, current, kind, counts in t.CRITERIA:
        if mode not in modes:
            continue
        xs = np.array([v[name] for v in values["shipped"][mode]], dtype=float)
        rs = np.array([v[name] for v in values["random"][mode]], dtype=float)
        sd = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0
        se_s = sampling_se(kind, counts, float(xs.mean()), sems.get(mode, [0.0]))
        se = max(sd, se_s)
        src = kind if se_s >= sd else "s"
        unit = 1.0 if abs(current) >= 5 else 0.01
        suggested = math.floor((xs.min() - 3 * se) / unit + 1e-9) * unit
        alone = bool(np.all(~(rs >= current)))
        print(f"{mode + ': ' + name:58s} {xs.min():.3f}-{xs.max():.3f} ({sd:.3f}){'':6s} "
              f"{suggested:<7.2f}({se:.3f} {src}){'':3s} {current:8.2f} {rs.min():+.3f}-{rs.max():+.3f}{'':8s} "
              f"{'*' if alone else ''}")
    for mode in modes:
        fails_all = all(t._unmet(mode, v) for v in values["random"][mode])
        passes_all = all(not t._unmet(mode, v) for v in values["shipped"][mode])
        print(f"{mode}: shipped passes on every seed: {passes_all}; random-init fails every run: {fails_all}")
    if args.json:
        Path(args.json).write_text(json.dumps(values, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
