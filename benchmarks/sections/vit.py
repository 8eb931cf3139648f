"""ViT speed: a uniform forward against the APT-packed forward of the same images' tokens (random weights),
beside the cost model's prediction; and the figure of measured speedup against retention."""

from __future__ import annotations

from pathlib import Path

import torch

from apt_research import PatchTokenizer

from ..common import MEAN, STD, normalised, progress, real_batch, timed
from ..report import Column, Result, Table

NAME, TITLE = "vit", "ViT speed, uniform vs APT-packed (CPU)"
GPU_TITLE = "ViT speed on CUDA (bf16, batch 64)"
PAPER_TITLE = "ViT speed on CUDA at the paper's retention (bf16, batch 64; paper: ViT-L +40%, ViT-H +50%)"


def run(models=("vit_s", "vit_b"), sizes=(224,), batch=8, device="cpu", dtype=torch.float32, repeats=2,
        targets: dict | None = None, title: str = TITLE) -> Result:
    """Uniform vs packed ViT forward. ``targets`` ({size: retention}) calibrates a shared threshold to that
    retention instead of using the paper's thresholds [5.75, 4.0]."""
    from apt_research.models.costmodel import predicted_speedup
    from apt_research.models.vit import ViTEncoder, attention_kernel

    records = []
    for size in sizes:
        images = normalised(real_batch(size, batch, device))
        thresholds = [5.75, 4.0]
        if targets and size in targets:
            from apt_research.calibration import calibrate_thresholds

            probe = PatchTokenizer(3, 16, size, thresholds, MEAN, STD).to(device)
            thresholds = calibrate_thresholds(
                {k: v.cpu() for k, v in probe.compute_importance_maps(images).items()}, targets[size]).thresholds
        tokenizer = PatchTokenizer(3, 16, size, thresholds, MEAN, STD).to(device)
        out = tokenizer(images)
        seqlens = out["seqlens"]
        uniform_tokens = 1 + (size // 16) ** 2
        retention = (sum(seqlens) - batch) / (batch * (uniform_tokens - 1))
        for model in models:
            encoder = ViTEncoder(model).to(device=device, dtype=dtype).eval()
            dim_in = 3 * 16 * 16
            uniform = torch.randn(batch, uniform_tokens, dim_in, device=device, dtype=dtype)
            packed = torch.randn(sum(seqlens), dim_in, device=device, dtype=dtype)
            cu, max_len = out["cu_seqlens"].to(device), out["max_seqlen"]
            with torch.inference_mode():
                uni_s, _ = timed(encoder, uniform, repeats=repeats, device=device)
                apt_s, _ = timed(encoder, packed, cu, max_len, repeats=repeats, device=device)
            predicted = predicted_speedup(seqlens, uniform_tokens, model)
            records.append(dict(model=model, size=size, batch=batch, retention=retention, measured=uni_s / apt_s,
                                thresholds=[round(t, 4) for t in thresholds],
                                attention=attention_kernel(device, dtype), device=str(device),
                                predicted=predicted, uniform_img_s=batch / uni_s, apt_img_s=batch / apt_s))
            progress(NAME, records[-1])
            del encoder
    note = f"Packed attention: {attention_kernel(device, dtype)}; uniform: scaled_dot_product_attention."
    return Result(NAME, title, records, [table(records)], [note])


def gpu() -> Result:
    """ViT-B/L/H at 224/336/448, bf16, batch 64 on CUDA (``--gpu-vit``)."""
    return run(models=("vit_b", "vit_l", "vit_h"), sizes=(224, 336, 448), batch=64, device="cuda",
               dtype=torch.bfloat16, repeats=5, title=GPU_TITLE)


def paper_retention() -> Result:
    """ViT-B/L/H on CUDA at the paper's retention: 0.75 at 224, 0.44 at 384, calibrated (``--paper-retention``)."""
    return run(models=("vit_b", "vit_l", "vit_h"), sizes=(224, 384), batch=64, device="cuda", dtype=torch.bfloat16,
               repeats=5, targets={224: 0.75, 384: 0.44}, title=PAPER_TITLE)


def table(records: list[dict]) -> Table:
    return Table(records, [
        Column("model", "model"),
        Column("resolution", "size"),
        Column("batch", "batch"),
        Column("retention", "retention", "{:.3f}"),
        Column("measured speedup (packed APT vs uniform)", "measured", "{:.2f}x"),
        Column("cost model", "predicted", "{:.2f}x"),
        Column("img/s uniform", "uniform_img_s", "{:.1f}"),
        Column("img/s APT", "apt_img_s", "{:.1f}"),
    ])


def plot_speed(records: list[dict], path: Path, title: str) -> None:
    """Measured speedups (points) against retention, beside the cost model's curves, as PDF and PNG."""
    import matplotlib.pyplot as plt

    from apt_research.presentation import figures

    figures.paper_style()
    figure, ax = plt.subplots(figsize=(figures.TWO_COLUMN_WIDTH_IN, 2.6))
    base = 196.0
    figures.plot_speedup_curves(ax, base, 16, sorted({r["model"] for r in records}))
    markers = dict(zip(sorted({r["size"] for r in records}), "os^D"))
    for record in records:
        ax.scatter(record["retention"], record["measured"], marker=markers[record["size"]], s=18, zorder=3,
                   color=f"C{sorted({r['model'] for r in records}).index(record['model'])}")
    for size, marker in markers.items():
        ax.scatter([], [], marker=marker, color="0.4", label=f"measured, {size} px")
    for index, model in enumerate(sorted({r["model"] for r in records})):
        ax.scatter([], [], marker="s", color=f"C{index}", label=f"{model} measured")
    ax.set(xlabel="retention (APT tokens / uniform tokens)", ylabel="throughput ratio APT / uniform",
           title=f"{title}; lines: cost model at 224 px")
    ax.legend(ncol=2)
    figures.save_figure(figure, path)
    plt.close(figure)
