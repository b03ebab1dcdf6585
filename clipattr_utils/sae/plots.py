"""Figures and tables for SAE training (notebook 01)."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from .metrics import SAEMetrics
from .train import TrainResult


def training_curves(result: TrainResult, smooth: int = 5):
    """2 x 2 figure: loss (and AuxK loss), FVU (batch and held-out), L0, dead % against step.

    ``smooth``: width of the centred running mean drawn over the per-step values.
    """
    import matplotlib.pyplot as plt

    steps, epochs = result.steps, result.epochs
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    panels = [("loss", f"loss ({result.config.loss})"), ("fvu", "FVU"), ("l0", "L0 (active latents)"),
              ("dead_frac", "dead latents (%)")]
    for ax, (col, title) in zip(axes.flat, panels):
        if len(steps):
            y = steps[col] * (100 if col == "dead_frac" else 1)
            ax.plot(steps.step, y, color="0.75", lw=0.8, label="per step")
            ax.plot(steps.step, y.rolling(max(1, smooth), center=True, min_periods=1).mean(), color="C0",
                    lw=1.5, label=f"running mean ({smooth})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if len(steps) and (steps.aux_loss > 0).any():
        ax2 = axes[0, 0].twinx()
        ax2.plot(steps.step, steps.aux_loss, color="C3", lw=0.8, alpha=0.7)
        ax2.set_ylabel("AuxK loss", color="C3")
    if "val_fvu" in epochs:
        axes[0, 1].plot(epochs.step, epochs.val_fvu, "o-", color="C1", label="held-out (per epoch)")
    if "val_dead_frac" in epochs:
        axes[1, 1].plot(epochs.step, 100 * epochs.val_dead_frac, "o-", color="C1",
                        label="never active on held-out")
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(f"top-k SAE: d_sae={result.config.d_sae}, k={result.config.k}, "
                 f"AuxK {'on' if result.config.auxk else 'off'}")
    fig.tight_layout()
    return fig


def metrics_table(rows: Mapping[str, SAEMetrics | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per named metrics result (e.g. {"held-out": m}); dead/frequent also as %."""
    records = {}
    for name, m in rows.items():
        d = m.summary() if isinstance(m, SAEMetrics) else dict(m)
        records[name] = {
            "samples": d["n"], "FVU": d["fvu"], "cos(x, x_hat)": d["cosine"], "L0": d["l0"],
            "dead": d["dead"], "dead %": 100 * d["dead_frac"], "alive": d["alive"],
            f">= {d['min_count']} activations": d["frequent"],
        }
    return pd.DataFrame.from_dict(records, orient="index")
