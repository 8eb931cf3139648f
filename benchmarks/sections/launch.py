"""Host side of the CUDA forward, measured on the CPU: its Triton kernels stubbed out, its launches counted."""

from __future__ import annotations

import statistics

import torch

from apt_research import PatchTokenizer

from ..common import MEAN, STD, normalised, real_batch, timed
from ..report import Column, Result, Table

NAME, TITLE = "launch", "Host side of the CUDA forward"


def run(batch=256, repeats=50) -> Result:
    """Host side of the CUDA forward, measured on the CPU: its Triton kernels stubbed out, its launches counted.

    The GPU's share is the kernels' run time; what the host spends between them is measured here, on any
    machine with triton installed. The stubbed selection kernel reports the counts the CPU path finds for
    the same images, so every allocation has its real size.
    """
    try:
        from apt_research.backends.triton_backend import kernels
    except ImportError:
        return Result(NAME, TITLE, None, notes=["triton is not installed: section skipped."])
    images = normalised(real_batch(224, batch))
    tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD)
    real_counts = torch.stack([m.flatten(1).sum(1) for m in tokenizer(images)["masks"].values()], 1).int()
    launches = []

    class Stub:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(self.name)

    select = kernels.select_triton

    def stub_select(*args, **kwargs):
        masks, keep, slots, counts = select(*args, **kwargs)
        counts.zero_()
        counts[:, : real_counts.shape[1]] = real_counts
        return masks, keep, slots, counts

    saved = {name: getattr(kernels, name) for name in ("_entropy_kernel", "_select_kernel", "_group_kernel")}
    try:
        for name in saved:
            setattr(kernels, name, Stub(name))
        kernels.select_triton = stub_select
        call = lambda: tokenizer._forward_triton(images, None)  # noqa: E731
        times, out = timed(call, repeats=repeats, all_times=True)
    finally:
        for name, kernel in saved.items():
            setattr(kernels, name, kernel)
        kernels.select_triton = select
    per_call = len(launches) // (repeats + 1)
    best, median = min(times), statistics.median(times)
    figures = dict(launches_per_forward=per_call, host_ms_best=1000 * best, host_ms_median=1000 * median,
                   tokens=int(sum(out["seqlens"])))
    rows = [{"what": "Triton launches per forward", "value": per_call},
            {"what": f"host time per forward, best / median of {repeats}",
             "value": f"{1000 * best:.3f} / {1000 * median:.3f} ms"},
            {"what": "host syncs per forward", "value": "1 (the counts)"}]
    return Result(NAME, TITLE, figures, [Table(rows, [
        Column(f"CUDA `PatchTokenizer.forward`, batch {batch} at 224, kernels stubbed (host side only, this CPU)",
               "what"),
        Column("value", "value"),
    ])])
