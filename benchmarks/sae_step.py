"""Speed of one SAE training step: sparse-aware (ours) vs a dense masked step vs the encoder GEMM.

Goal: at d_in=768, d_sae=30000, k=64, batch 4096, our full training step
(forward, loss, backward, decoder-gradient projection, AdamW, renormalisation) is
>= 2.5x faster than the same step written with a dense (batch, d_sae) activation matrix,
and <= 1.5x the time of the encoder GEMM alone (the one dense product a top-k SAE cannot avoid).

The three are timed interleaved (A, B, C, A, B, C, ...) so background load hits all alike;
the medians and their ratios are printed, plus a markdown table for benchmarks/RESULTS.md.

    python benchmarks/sae_step.py            # full size (about 2 minutes on a 2-core CPU)
    python benchmarks/sae_step.py --small    # d_in=256, d_sae=4096, k=32, batch 1024
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from clipattr_utils.sae import TopKSAE, TrainConfig
from clipattr_utils.sae.train import _make_optimizer, _State, _step, main_loss


def dense_mask_step(sae: TopKSAE, opt, x: torch.Tensor) -> None:
    """The textbook step: scatter the top-k into a dense (N, d_sae) matrix, multiply by W_dec."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    values, indices = F.relu(pre).topk(sae.k, dim=1)
    acts = torch.zeros_like(pre).scatter(1, indices, values)
    x_hat = acts @ sae.W_dec + sae.b_dec
    loss = main_loss(x, x_hat, "normalized")
    opt.zero_grad()
    loss.backward()
    sae.project_decoder_grad_()
    opt.step()
    sae.normalize_decoder_()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=30000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="d_in=256, d_sae=4096, k=32, batch=1024")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--aux-dead", type=float, default=0.0,
                    help="also time our step with AuxK on and this fraction of latents dead (e.g. 0.1)")
    args = ap.parse_args()
    if args.small:
        args.d_in, args.d_sae, args.k, args.batch = 256, 4096, 32, 1024
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(args.batch, args.d_in, generator=g) + 0.5).to(device)
    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, batch_size=args.batch, auxk=True, device=str(device), autocast=False)

    def build():
        sae = TopKSAE(args.d_in, args.d_sae, args.k, generator=torch.Generator().manual_seed(1)).to(device)
        sae.init_bias_(x.mean(0))
        return sae, _make_optimizer(sae, cfg)

    ours_sae, ours_opt = build()
    ours_state = _State(ours_sae, ours_opt, torch.zeros(args.d_sae, dtype=torch.int64, device=device))
    dense_sae, dense_opt = build()
    gemm_sae, _ = build()

    def ours() -> None:
        # AuxK on as in training; nothing is dead at this point, so it costs only the check
        _step(ours_sae, ours_opt, ours_state, x, cfg, args.d_in // 2, 10**12, None)

    def dense() -> None:
        dense_mask_step(dense_sae, dense_opt, x)

    gemm_out = torch.empty(args.batch, args.d_sae, device=device)

    @torch.no_grad()
    def gemm() -> None:
        # into a preallocated buffer, as in our step: the GEMM's own cost, no page faults
        torch.addmm(gemm_sae.b_enc, x - gemm_sae.b_dec, gemm_sae.W_enc, out=gemm_out)

    runs = {"ours (sparse step)": ours, "dense-mask step": dense, "encoder GEMM alone": gemm}
    if args.aux_dead > 0:
        aux_sae, aux_opt = build()
        aux_state = _State(aux_sae, aux_opt, torch.zeros(args.d_sae, dtype=torch.int64, device=device))
        n_dead = int(args.aux_dead * args.d_sae)

        def ours_aux() -> None:
            aux_state.since_fired.zero_()
            aux_state.since_fired[:n_dead] = 10**12  # these count as dead for this step
            _step(aux_sae, aux_opt, aux_state, x, cfg, args.d_in // 2, 10**12, None)

        runs[f"ours + AuxK, {args.aux_dead:.0%} dead"] = ours_aux
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up: allocator, optimizer state, MKL buffers
        fn()
    sync()
    for _ in range(args.repeats):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    t_ours, t_dense, t_gemm = med["ours (sparse step)"], med["dense-mask step"], med["encoder GEMM alone"]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"d_in={args.d_in} d_sae={args.d_sae} k={args.k} batch={args.batch} on {where}, "
          f"torch {torch.__version__}, median of {args.repeats}")
    for name, ts in times.items():
        print(f"  {name:22s} median {med[name]:.3f} s   (min {min(ts):.3f}, max {max(ts):.3f})")
    speedup, over_gemm = t_dense / t_ours, t_ours / t_gemm
    print(f"  dense-mask / ours   = {speedup:.2f}x  (goal >= 2.5x: {'met' if speedup >= 2.5 else 'MISSED'})")
    print(f"  ours / encoder GEMM = {over_gemm:.2f}x  (goal <= 1.5x: {'met' if over_gemm <= 1.5 else 'MISSED'})")
    print("\n| step | median s |\n|---|---|")
    for name in runs:
        print(f"| {name} | {med[name]:.3f} |")
    print(f"| **dense-mask / ours** | **{speedup:.2f}x** |\n| **ours / encoder GEMM** | **{over_gemm:.2f}x** |")


if __name__ == "__main__":
    main()
