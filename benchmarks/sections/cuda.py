"""CUDA: entropy throughput on the GPU against (b), and the tokenizer's time as a fraction of a ViT-B/16 forward."""

from __future__ import annotations

import statistics

import torch

from apt_research import PatchTokenizer, compute_patch_entropy_batched
from apt_research.testing import baselines

from ..common import MEAN, ONE_HOT_LIMIT, STD, normalised, progress, real_batch, timed
from ..report import Column, Result, Strong, Table

NAME, TITLE = "cuda", "CUDA"
ROWS = [(224, 256), (336, 128), (1024, 16)]  # resolution, batch


def run(rows=ROWS) -> Result:
    """GPU figures: entropy throughput, ratio against (b), tokenizer time as a fraction of a ViT-B/16 forward."""
    if not torch.cuda.is_available():
        return Result(NAME, TITLE, None, notes=["No CUDA device on this machine: section skipped."])
    from apt_research.models.vit import ViTEncoder

    device = "cuda"
    records = []
    for size, batch in rows:
        cpu_images = real_batch(size, batch)
        images = cpu_images.to(device)
        ours_s, ours = timed(compute_patch_entropy_batched, images, 16, 3, 512, repeats=10, device=device)
        fit = max(1, min(batch, int(ONE_HOT_LIMIT // baselines.one_hot_bytes(images[:1], 16, 3, 512))))
        hot_s, hot = timed(baselines.one_hot_maps, images[:fit], 16, 3, 512, repeats=3, device=device)
        check = compute_patch_entropy_batched(cpu_images[:4], 16, 3, 512)
        diff = max(float((ours[k][:4].cpu() - check[k]).abs().max()) for k in check)
        records.append(dict(size=size, batch=batch, ours_img_s=batch / ours_s, one_hot_img_s=fit / hot_s,
                            one_hot_batch=fit, max_diff_vs_cpu=diff))
        progress(NAME, records[-1])
    images = normalised(real_batch(224, 256, device))
    tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD).to(device)
    tok_times, _ = timed(tokenizer, images, repeats=30, device=device, all_times=True)
    encoder = ViTEncoder("vit_b").to(device=device, dtype=torch.bfloat16).eval()
    tokens = torch.randn(256, 197, 768, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        vit_times, _ = timed(encoder, tokens, repeats=30, device=device, all_times=True)
    # Best of 30 (as in runs 1-6) and the median, which a host-bound call spreads more.
    tok_s, vit_s = min(tok_times), min(vit_times)
    tok_median, vit_median = statistics.median(tok_times), statistics.median(vit_times)
    figures = dict(device=torch.cuda.get_device_name(), entropy=records, tokenizer_ms=1000 * tok_s,
                   vit_b16_forward_ms=1000 * vit_s, fraction=tok_s / vit_s,
                   tokenizer_median_ms=1000 * tok_median, vit_b16_median_ms=1000 * vit_median,
                   fraction_of_medians=tok_median / vit_median)
    return Result(NAME, TITLE, figures, [entropy_table(records), fraction_table(figures)])


def entropy_table(records: list[dict]) -> Table:
    return Table(records, [
        Column("resolution", "size"),
        Column("batch", "batch"),
        Column("ours img/s (GPU)", "ours_img_s", "{:,.0f}"),
        Column("(b) one-hot img/s (GPU)", lambda r: f"{r['one_hot_img_s']:,.0f} (batch {r['one_hot_batch']})"),
        Column("vs (b)", lambda r: r["ours_img_s"] / r["one_hot_img_s"], "{:.0f}x"),
        Column("agree with CPU",
               lambda r: f"{'yes' if r['max_diff_vs_cpu'] <= 1e-5 else 'NO'} ({r['max_diff_vs_cpu']:.1e})"),
    ])


def fraction_table(figures: dict) -> Table:
    rows = [
        {"what": "`PatchTokenizer.forward` (maps, masks, groups, packing)", "best": figures["tokenizer_ms"],
         "median": figures["tokenizer_median_ms"]},
        {"what": "ViT-B/16 forward, bf16, SDPA, random weights", "best": figures["vit_b16_forward_ms"],
         "median": figures["vit_b16_median_ms"]},
        {"what": (Strong("tokenizer / ViT-B/16 forward"), " (target <= 0.05)"),
         "best": Strong(f"{figures['fraction']:.3f}"), "median": f"{figures['fraction_of_medians']:.3f}"},
    ]
    return Table(rows, [
        Column("batch 256, 224x224", "what"),
        Column("best of 30, ms", "best", "{:.2f}"),
        Column("median, ms", "median", "{:.2f}"),
    ])
