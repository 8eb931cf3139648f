"""Training step and inference of timm ViTs, uniform vs APT, beside the cost model's prediction.

A random-weight timm model runs the images (uniform); ``from_timm`` wraps the same model and runs
the packed tokens of the same images (APT, packed attention; padded attention as a further row).
The tokens are made beforehand, as the data loader's workers and ``collate`` make them
(``apt_research.models.maps_loader``): the tokenizer's time is not in the model's step and is
reported on its own, per image. A training step is ``zero_grad``, forward, cross-entropy,
backward and ``AdamW.step``; inference is a forward under ``inference_mode`` in ``eval`` mode.
Uniform and APT calls alternate within each round (they share the machine's state and load);
each figure is the median of the rounds after the warm-up.

The prediction is the cost model's (``apt_research.models.costmodel.predicted_speedup``): forward
FLOPs of the uniform batch over those of the APT batch at the same token counts. A backward costs
about twice its forward on either side, so the same ratio is the training step's prediction; the
optimizer's step does not depend on tokens and is not in it.

``benchmarks/gpu/throughput.py`` runs the same measurement on CUDA (ViT-B/L/H, 224 and 384, bf16).
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..common import progress, real_batch
from ..report import Column, Result, Strong, Table

NAME, TITLE = "training", "Training step and inference, uniform vs APT (timm ViTs)"
MODELS = (("vit_small_patch16_224", 32), ("vit_base_patch16_224", 16))  # timm name, batch
THRESHOLDS = (5.5, 4.0)  # 3 scales
TARGET = 0.85  # measured speedup / predicted speedup


def load_average() -> list[float] | None:
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cost_model_name(model) -> str | None:
    """The cost model's name of a timm ViT (``vit_s``, ``vit_b``, ``vit_l``, ``vit_h``: width, depth and heads
    match), else None."""
    from apt_research.models.vit import VIT_CONFIGS

    shape = (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads)
    return next((name for name, c in VIT_CONFIGS.items() if (c.dim, c.depth, c.heads) == shape), None)


def normalised_for(model, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 255] normalised with the model's own mean and std (timm's data config)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    mean = torch.tensor(config["mean"], device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255 - mean) / std


def rounds(calls: dict, warmup: int, repeats: int, device) -> dict[str, list[float]]:
    """Every call's wall times over ``repeats`` rounds, each round running every call once in turn, after
    ``warmup`` such rounds (the device synchronised around each call)."""
    times = {name: [] for name in calls}
    for index in range(warmup + repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def autocast(device, dtype):
    return torch.autocast(torch.device(device).type, dtype=dtype) if dtype is not None else nullcontext()


class Inference:
    """One forward of ``module`` on ``inputs`` under ``inference_mode`` (and autocast to ``dtype``)."""

    def __init__(self, module, inputs, device, dtype):
        self.module, self.inputs, self.device, self.dtype = module, inputs, device, dtype

    def __call__(self):
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.module(self.inputs)


class TrainingStep:
    """``zero_grad``, forward, cross-entropy, backward and ``AdamW.step`` of ``module`` on ``inputs``; each
    call's phases (forward with the loss, backward, optimizer) are timed into ``phases``."""

    def __init__(self, module, inputs, labels, device, dtype):
        self.module, self.inputs, self.labels, self.device, self.dtype = module, inputs, labels, device, dtype
        self.optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
        self.phases: list[tuple[float, float, float]] = []

    def __call__(self):
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast(self.device, self.dtype):
            logits = self.module(self.inputs)
        loss = F.cross_entropy(logits.float(), self.labels)
        synchronize(self.device)
        forward = time.perf_counter()
        loss.backward()
        synchronize(self.device)
        backward = time.perf_counter()
        self.optimizer.step()
        synchronize(self.device)
        self.phases.append((forward - start, backward - forward, time.perf_counter() - backward))


def median_phases(step: TrainingStep, keep: int) -> dict[str, float]:
    """Median forward / backward / optimizer milliseconds of the step's last ``keep`` calls."""
    kept = step.phases[-keep:]
    return {phase: 1000 * statistics.median(p[index] for p in kept)
            for index, phase in enumerate(("forward_ms", "backward_ms", "optimizer_ms"))}


def tokenizer_times(apt, images, warmup: int, repeats: int, device) -> dict[str, float]:
    """Milliseconds per image of the tokenizer on ``images``: its maps (the loader's workers), selection and
    packing from those maps (``collate``), and the whole ``tokenize`` (medians)."""
    tokenizer, batch = apt.tokenizer, images.shape[0]
    maps = tokenizer.compute_importance_maps(images)
    times = rounds({"maps": lambda: tokenizer.compute_importance_maps(images),
                    "pack": lambda: tokenizer(images, maps),
                    "whole": lambda: apt.tokenize(images)}, warmup, repeats, device)
    return {f"tokenizer_{key}_ms_per_img": 1000 * statistics.median(value) / batch for key, value in times.items()}


def settings_thresholds(setting, apt, images, size_key: int) -> tuple[list[float], str]:
    """``setting``: thresholds (a sequence), or ``"retention"``: thresholds calibrated on ``images`` to the
    paper's retention at ``size_key`` (0.75 at 224, 0.44 at 384). Returns the thresholds and a label."""
    if setting != "retention":
        return [float(t) for t in setting], "thresholds"
    from apt_research.calibration import calibrate_thresholds

    target = PAPER_RETENTION[size_key]
    maps = {key: value.float().cpu() for key, value in apt.tokenizer.compute_importance_maps(images).items()}
    return list(calibrate_thresholds(maps, target).thresholds), f"calibrated to retention {target}"


PAPER_RETENTION = {224: 0.75, 384: 0.44}  # the paper's token reduction (25% / 56% fewer tokens), docs/contract.md


def measure(name: str, batch: int, size: int = 224, settings=(THRESHOLDS,), device="cpu", dtype=None,
            warmup: int = 1, repeats: int = 4, padded_modes=("inference",), train_batch: int | None = None,
            label: str | None = None, size_key: int | None = None, model_options: dict | None = None) -> list[dict]:
    """Records of timm model ``name`` at ``size`` (random weights): per setting (thresholds, 3 scales for two),
    one ``inference`` and one ``training step`` record (uniform, APT packed, APT padded where
    ``padded_modes`` names the mode), the tokenizer's times on the inference one."""
    import timm

    from apt_research.models import from_timm
    from apt_research.models.attention import choose_kernel
    from apt_research.models.costmodel import predicted_speedup

    train_batch = train_batch or batch
    torch.manual_seed(0)
    with torch.device(device):
        model = timm.create_model(name, pretrained=False, img_size=size, **(model_options or {}))
    patch = model.patch_embed.patch_size[0]
    cost = cost_model_name(model)
    uniform_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    images = normalised_for(model, real_batch(size, max(batch, train_batch), device))
    labels = torch.randint(0, model.num_classes, (train_batch,), device=device)
    records = []
    for setting in settings:
        thresholds = [float(t) for t in setting] if setting != "retention" else [5.5, 4.0]
        apt = from_timm(model, len(thresholds) + 1, thresholds)
        thresholds, how = settings_thresholds(setting, apt, images[:batch], size_key or size)
        apt.set_thresholds(thresholds)
        kernel = choose_kernel(torch.zeros(1, 1, 8, device=device, dtype=dtype or torch.float32))
        base = dict(label=label or name, model=name, cost_model=cost, size=size, patch=patch, device=str(device),
                    dtype=str(dtype or torch.float32).replace("torch.", ""), threads=torch.get_num_threads(),
                    num_scales=len(thresholds) + 1, thresholds=[round(t, 4) for t in thresholds], setting=how,
                    packed_kernel=kernel, uniform_tokens=uniform_tokens, load_average_start=load_average())
        for mode, count in (("inference", batch), ("training step", train_batch)):
            inputs = images[:count]
            tokens = apt.tokenize(inputs)
            seqlens = apt.sequence_lengths(tokens)
            model.train(mode != "inference")
            apt.train(mode != "inference")

            def call(module, data):
                return (Inference(module, data, device, dtype) if mode == "inference"
                        else TrainingStep(module, data, labels[:count], device, dtype))

            calls = {"uniform": call(model, inputs), "packed": call(apt, tokens)}
            if mode in padded_modes:
                padded = from_timm(model, len(thresholds) + 1, thresholds, attention="padded")
                padded.load_state_dict(apt.state_dict())
                calls["padded"] = call(padded.train(mode != "inference"), tokens)
            drawn = rounds(calls, warmup, repeats, device)
            times = {key: statistics.median(value) for key, value in drawn.items()}
            predicted = predicted_speedup(seqlens, uniform_tokens, cost, patch) if cost else None
            # paired: each round's uniform over the same round's APT (the two ran back to back, under the same
            # load), then the median of those ratios; a load change between rounds moves both sides of a pair
            measured = statistics.median(u / a for u, a in zip(drawn["uniform"], drawn["packed"]))
            record = dict(base, mode=mode, batch=count, apt_tokens=sum(seqlens) / count, seqlens=seqlens,
                          retention=(sum(seqlens) - count * model.num_prefix_tokens)
                          / (count * (uniform_tokens - model.num_prefix_tokens)),
                          uniform_img_s=count / times["uniform"], apt_img_s=count / times["packed"],
                          padded_img_s=count / times["padded"] if "padded" in times else None,
                          measured=measured, predicted=predicted,
                          ratio=measured / predicted if predicted else None, repeats=repeats, warmup=warmup)
            if mode == "inference":
                record.update(tokenizer_times(apt, inputs, 1, repeats, device))
                embed = rounds({"embed": Inference(apt.embed, tokens, device, dtype)}, 1, repeats, device)["embed"]
                record["apt_embed_ms"] = 1000 * statistics.median(embed)
                record["apt_ms"] = 1000 * times["packed"]
                record["apt_img_s_with_tokenizer"] = count / (times["packed"] + count * record[
                    "tokenizer_whole_ms_per_img"] / 1000)
            else:
                for key, step in (("uniform", calls["uniform"]), ("apt", calls["packed"])):
                    record.update({f"{key}_{phase}": value for phase, value in median_phases(step, repeats).items()})
            records.append(record)
            progress(NAME, {k: v for k, v in record.items() if k != "seqlens"})
            del calls
        del apt
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return records


def run(models=MODELS, size: int = 224, thresholds=THRESHOLDS, warmup: int = 1, repeats: int = 4,
        padded_modes=("inference",)) -> Result:
    """uniform vs APT on this machine's CPU (float32, the process's threads): ``models`` ((timm name, batch)
    pairs) at ``size``, ``thresholds`` (3 scales for two), the bundled images."""
    start_load, began = load_average(), time.perf_counter()
    records = []
    for name, batch in models:
        records += measure(name, batch, size, (tuple(thresholds),), "cpu", None, warmup, repeats, padded_modes)
    end_load = load_average()
    notes = [
        f"Random weights, the bundled scikit-image images (cycled) at {size} px, float32 on the CPU with "
        f"{torch.get_num_threads()} threads; load average (1, 5, 15 min) {start_load} at the start of the "
        f"section, {end_load} at its end ({time.perf_counter() - began:.0f} s). Each figure is the median of "
        f"{repeats} rounds after {warmup} warm-up round(s); in each round uniform and APT run in turn. The measured "
        "speedup is the median of the rounds' own ratios (uniform over APT in the same round), so that a load "
        "change between rounds moves both sides of each ratio.",
        "APT: `from_timm(model, 3, thresholds)` on tokens made beforehand, as the loader's workers (maps) and "
        "`collate` (selection, packing) make them; the tokenizer's time is in the second table, not in the step. "
        f"Packed attention: kernel `{records[0]['packed_kernel'] if records else '-'}` "
        "(one `scaled_dot_product_attention` per run of equal-length images on the CPU); padded: timm's own "
        "blocks on a padded batch with a key mask.",
        "Cost model: forward FLOPs of the uniform batch over those of the APT batch at the same token counts "
        "(the same ratio for a training step: backward is about twice the forward on both sides; the "
        "optimizer's step, independent of tokens, is left out). It also leaves out the merge of APT's large "
        f"patches (embedding their base sub-patches). Target: measured / predicted >= {TARGET}.",
    ]
    return Result(NAME, TITLE, {"records": records, "load_average_start": start_load,
                                "load_average_end": end_load},
                  [throughput_table(records), phase_table(records), tokenizer_table(records)], notes)


def fmt_speedup(value) -> str:
    return "-" if value is None else f"{value:.2f}x"


def throughput_columns() -> list[Column]:
    return [
        Column("model", "label"),
        Column("resolution", "size"),
        Column("thresholds", lambda r: str(r["thresholds"]) + ("" if r["setting"] == "thresholds"
                                                              else f" ({r['setting']})")),
        Column("mode", "mode"),
        Column("batch", "batch"),
        Column("tokens/img uniform -> APT (retention)",
               lambda r: f"{r['uniform_tokens']} -> {r['apt_tokens']:.1f} ({r['retention']:.3f})"),
        Column("img/s uniform", "uniform_img_s", "{:.1f}"),
        Column("img/s APT packed", "apt_img_s", "{:.1f}"),
        Column("img/s APT padded", lambda r: "-" if r["padded_img_s"] is None else
               f"{r['padded_img_s']:.1f} ({r['padded_img_s'] / r['uniform_img_s']:.2f}x)"),
        Column("measured speedup (packed)", "measured", "{:.2f}x"),
        Column("cost model", lambda r: fmt_speedup(r["predicted"])),
        Column(f"measured / predicted (target >= {TARGET})",
               lambda r: "-" if r["ratio"] is None else Strong(f"{r['ratio']:.2f}")),
    ]


def throughput_table(records: list[dict], extra: list[Column] = ()) -> Table:
    return Table(records, throughput_columns() + list(extra))


def phase_table(records: list[dict]) -> Table:
    rows = [r for r in records if r["mode"] == "training step"]
    return Table(rows, [
        Column("training step", lambda r: f"{r['label']}, {r['size']}, batch {r['batch']}"),
        Column("uniform: forward / backward / optimizer ms",
               lambda r: f"{r['uniform_forward_ms']:.0f} / {r['uniform_backward_ms']:.0f} / "
                         f"{r['uniform_optimizer_ms']:.0f}"),
        Column("APT packed: forward / backward / optimizer ms",
               lambda r: f"{r['apt_forward_ms']:.0f} / {r['apt_backward_ms']:.0f} / {r['apt_optimizer_ms']:.0f}"),
        Column("forward + backward speedup", lambda r: (r["uniform_forward_ms"] + r["uniform_backward_ms"])
               / (r["apt_forward_ms"] + r["apt_backward_ms"]), "{:.2f}x"),
        Column("optimizer share of the APT step", lambda r: r["apt_optimizer_ms"]
               / (r["apt_forward_ms"] + r["apt_backward_ms"] + r["apt_optimizer_ms"]), "{:.2f}"),
    ])


def tokenizer_table(records: list[dict]) -> Table:
    rows = [r for r in records if r["mode"] == "inference"]
    return Table(rows, [
        Column("tokenizer (not in the steps above)", lambda r: f"{r['label']}, {r['size']}, {r['thresholds']}"),
        Column("maps ms/img (loader workers)", "tokenizer_maps_ms_per_img", "{:.3f}"),
        Column("selection + packing ms/img (collate)", "tokenizer_pack_ms_per_img", "{:.3f}"),
        Column("whole tokenizer ms/img", "tokenizer_whole_ms_per_img", "{:.3f}"),
        Column("APT inference ms/img", lambda r: r["apt_ms"] / r["batch"], "{:.2f}"),
        Column("APT embedding share of inference", lambda r: r["apt_embed_ms"] / r["apt_ms"], "{:.3f}"),
        Column("APT inference img/s with the tokenizer in the step",
               lambda r: f"{r['apt_img_s_with_tokenizer']:.1f} "
                         f"({r['apt_img_s_with_tokenizer'] / r['uniform_img_s']:.2f}x uniform)"),
    ])
