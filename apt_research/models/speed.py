"""Measured speed of a ViT encoder on APT-packed sequences against uniform patches (random weights)."""

from __future__ import annotations

import time

import torch

from .vit import ViTEncoder


def timed(function, *args, repeats: int = 3, device="cpu", all_times: bool = False):
    """``(best, result)``: the best wall time of ``repeats`` calls after one warm-up, and the last result.

    On CUDA the device is synchronised before and after each call. ``all_times``: every call's time
    (a list) instead of the best.
    """
    device = torch.device(device)
    result = function(*args)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = function(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return (times if all_times else min(times)), result


def measure_speedup(apt_seqlens, uniform_seqlens, model: str = "vit_s", patch_size: int = 16, device="cpu",
                    dtype=torch.float32, repeats: int = 1, seed: int = 0) -> dict:
    """Throughput ratio (uniform time / APT time) of one forward pass over the given sequences.

    ``apt_seqlens`` and ``uniform_seqlens`` list each image's tokens (class token
    included). Uniform sequences of one length run as a batch ``(B, N, D)``;
    otherwise both run packed with ``cu_seqlens``.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    encoder = ViTEncoder(model, patch_size).to(device=device, dtype=dtype).eval()
    width = 3 * patch_size * patch_size

    def packed(lengths):
        tokens = torch.randn(sum(lengths), width, generator=generator).to(device=device, dtype=dtype)
        cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
        return lambda: encoder(tokens, cu, max(lengths))

    if len(set(uniform_seqlens)) == 1:
        batch = torch.randn(len(uniform_seqlens), uniform_seqlens[0], width, generator=generator)
        batch = batch.to(device=device, dtype=dtype)
        uniform_call = lambda: encoder(batch)  # noqa: E731
    else:
        uniform_call = packed(list(uniform_seqlens))
    with torch.inference_mode():
        uniform_s, _ = timed(uniform_call, repeats=repeats, device=device)
        apt_s, _ = timed(packed(list(apt_seqlens)), repeats=repeats, device=device)
    return {"uniform_s": uniform_s, "apt_s": apt_s, "speedup": uniform_s / apt_s}
