"""Time per training step and peak memory of the SAE families, side by side with top-k.

    python benchmarks/sae_families_step.py            # 768 -> 30,000, k 64, batch 4096 (the paper's sizes)
    python benchmarks/sae_families_step.py --small    # 256 -> 4096, k 32, batch 1024

One training step (`sae.train._step`: encode, loss, backward, AdamW, renormalisation) per
family, timed interleaved (topk, batchtopk, matryoshka, topk, ...) so background load hits all
alike; medians and their ratios to top-k are printed. Peak memory: each family runs a few steps
in a child process of its own (one at a time), which resets its peak RSS after building the SAE
and the batch (Linux ``/proc/self/clear_refs``) and reports the peak over that RSS: what the
steps add.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from clipattr_utils.sae import TopKSAE, TrainConfig
from clipattr_utils.sae.train import FAMILIES, _make_optimizer, _State, _step


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup(family: str, a: argparse.Namespace, x: torch.Tensor):
    cfg = TrainConfig(d_sae=a.d_sae, k=a.k, batch_size=a.batch, family=family, autocast=False)
    sae = TopKSAE(a.d_in, a.d_sae, a.k, generator=torch.Generator().manual_seed(1))
    sae.init_bias_(x.mean(0))
    opt = _make_optimizer(sae, cfg)
    state = _State(sae, opt, torch.zeros(a.d_sae, dtype=torch.int64))

    def step() -> None:
        _step(sae, opt, state, x, cfg, a.d_in // 2, 10**12, None)

    return step


def _batch(a: argparse.Namespace) -> torch.Tensor:
    return torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(0)) + 0.5


def child(a: argparse.Namespace) -> None:
    """One family, a few steps; prints the RSS the steps add (MB) as JSON."""
    x = _batch(a)
    step = _setup(a.only, a, x)
    base = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # resets the peak (VmHWM) to the current RSS
        f.write("5")
    for _ in range(a.memory_steps):
        step()
    print(json.dumps({"family": a.only, "base_mb": base, "peak_mb": _status_mb("VmHWM")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=30000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-steps", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="d_in=256, d_sae=4096, k=32, batch=1024")
    ap.add_argument("--only", choices=FAMILIES, help=argparse.SUPPRESS)  # the memory child
    a = ap.parse_args()
    if a.small:
        a.d_in, a.d_sae, a.k, a.batch = 256, 4096, 32, 1024
    if a.only:
        return child(a)
    x = _batch(a)
    steps = {f: _setup(f, a, x) for f in FAMILIES}
    for fn in steps.values():  # warm-up: allocator, optimizer state, MKL buffers
        fn()
    times: dict[str, list[float]] = {f: [] for f in FAMILIES}
    for _ in range(a.repeats):
        for f, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[f].append(time.perf_counter() - t0)
    del steps
    mem = {}
    for f in FAMILIES:  # one child at a time
        args = [sys.executable, __file__, "--only", f, "--d-in", str(a.d_in), "--d-sae", str(a.d_sae), "--k", str(a.k),
                "--batch", str(a.batch), "--memory-steps", str(a.memory_steps)]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        mem[f] = json.loads(out)
    med = {f: statistics.median(ts) for f, ts in times.items()}
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"d_in={a.d_in} d_sae={a.d_sae} k={a.k} batch={a.batch} on {where}, torch {torch.__version__}, "
          f"median of {a.repeats} interleaved steps\n")
    print("| family | step (s), median | min-max | vs top-k | peak RSS added by the steps (MB) |")
    print("|---|---|---|---|---|")
    for f in FAMILIES:
        m = mem[f]
        print(f"| {f} | {med[f]:.3f} | {min(times[f]):.3f}-{max(times[f]):.3f} | {med[f] / med['topk']:.2f}x | "
              f"{m['peak_mb'] - m['base_mb']:.0f} |")


if __name__ == "__main__":
    main()
