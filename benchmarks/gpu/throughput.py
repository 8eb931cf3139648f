"""Training step and inference images/s on CUDA, uniform vs APT: ViT-B/16, ViT-L/16, ViT-H/14 at 224 and 384.

    python -m benchmarks.gpu.throughput              # on a lent GPU: every model, size and setting (bf16)
    python -m benchmarks.gpu.throughput --dry-run    # the plan (models, sizes, batches, token counts); no device
    python -m benchmarks.gpu.throughput --smoke      # a tiny run of the whole code path on this machine (CPU too)

The measurement is the ``training`` section's (``benchmarks/sections/training.py``): random-weight timm
models, the bundled images, tokens made beforehand as the loader makes them (the tokenizer's time
reported on its own), uniform and APT calls alternating, medians after a warm-up. Here: bf16 autocast
(fp32 weights, AdamW), packed attention through the varlen flash kernel (``choose_kernel``), padded
attention as a further row, and the paper's figures beside the measured speedups: +40% for ViT-L,
+50% for ViT-H. Settings: fixed thresholds (3 scales for two numbers, 2 for one) or ``retention``:
thresholds calibrated on the images to the paper's token reduction (retention 0.75 at 224, 0.44 at 384).
A patch-14 model runs at the multiple of 14 nearest the nominal size (ViT-H/14 "384": 378, 27 x 27
patches, as timm's ``*_378`` models). Prints markdown tables and writes them, with the records as
JSON, to ``--out`` (default ``benchmarks/results/<date>-<GPU>-throughput.md``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks import common, report
from benchmarks.sections import training

MODELS = {  # key: label, timm name, inference batch, training batch
    "vit_b": ("ViT-B/16", "vit_base_patch16_224", 64, 64),
    "vit_l": ("ViT-L/16", "vit_large_patch16_224", 64, 32),
    "vit_h": ("ViT-H/14", "vit_huge_patch14_224", 64, 16),
}
SIZES = (224, 384)
SETTINGS = ("5.5,4.0", "5.75,4.0", "retention")  # [5.5, 4.0]: from_timm's example; [5.75, 4.0]: the paper's
PAPER = {"vit_l": 1.40, "vit_h": 1.50}  # the paper's throughput gains (+40% ViT-L, +50% ViT-H)
TITLE = "Training step and inference on CUDA, uniform vs APT (bf16; paper: ViT-L +40%, ViT-H +50%)"


def parse_setting(text: str):
    """``"5.5,4.0"`` -> ``(5.5, 4.0)``; ``"retention"`` stays."""
    if text == "retention":
        return text
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is thresholds like 5.5,4.0 or 'retention', got {text!r}")
    return values


def run_size(nominal: int, patch: int) -> int:
    """The multiple of ``patch`` nearest ``nominal`` (ties up)."""
    return max(patch, int(nominal / patch + 0.5) * patch)


def plan(args) -> list[dict]:
    """One entry per (model, size): what the run measures."""
    entries = []
    for key in args.models:
        label, name, batch, train_batch = MODELS[key]
        patch = int(name.split("patch")[1].split("_")[0])
        for nominal in args.sizes:
            entries.append(dict(key=key, label=label, name=name, nominal=nominal, size=run_size(nominal, patch),
                                batch=args.batch or batch, train_batch=args.train_batch or train_batch))
    return entries


def smoke_plan() -> list[dict]:
    """A 2-block ViT-S/16 at 64 px, batch 2: every code path of the real run in seconds on a CPU (no cost model
    figure: the cost model knows the full-depth models only)."""
    return [dict(key="vit_s", label="ViT-S/16, 2 blocks (smoke)", name="vit_small_patch16_224", nominal=224, size=64,
                 batch=2, train_batch=2, model_options={"depth": 2})]


def describe(entries: list[dict], settings) -> report.Table:
    """The plan as a table; each model built on the meta device (no memory) to check it and count tokens."""
    import timm

    rows = []
    for entry in entries:
        with torch.device("meta"):
            model = timm.create_model(entry["name"], pretrained=False, img_size=entry["size"],
                                      **entry.get("model_options", {}))
        rows.append(dict(entry, cost_model=training.cost_model_name(model) or "-",
                         tokens=model.patch_embed.num_patches + model.num_prefix_tokens,
                         settings=", ".join(str(list(s)) if s != "retention" else
                                            f"retention {training.PAPER_RETENTION.get(entry['nominal'], '-')}"
                                            for s in settings)))
    return report.Table(rows, [
        report.Column("model", "label"), report.Column("timm", "name"),
        report.Column("resolution", lambda r: f"{r['size']}" + ("" if r["size"] == r["nominal"]
                                                                else f" (for {r['nominal']})")),
        report.Column("uniform tokens", "tokens"), report.Column("cost model", "cost_model"),
        report.Column("batch inference / training", lambda r: f"{r['batch']} / {r['train_batch']}"),
        report.Column("settings", "settings"),
    ])



def paper_columns() -> list[report.Column]:
    return [
        report.Column("paper", lambda r: f"{PAPER[r['cost_model']]:.2f}x" if r["cost_model"] in PAPER else "-"),
        report.Column("measured / paper", lambda r: f"{r['measured'] / PAPER[r['cost_model']]:.2f}"
                      if r["cost_model"] in PAPER else "-"),
    ]


def measure(entries: list[dict], settings, device, dtype, warmup: int, repeats: int, padded_modes) -> list[dict]:
    records = []
    for entry in entries:
        records += training.measure(
            entry["name"], entry["batch"], entry["size"], settings, device, dtype, warmup, repeats, padded_modes,
            train_batch=entry["train_batch"], label=entry["label"], size_key=entry["nominal"],
            model_options=entry.get("model_options"))
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="nominal resolutions")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in SETTINGS],
                        help="thresholds (5.5,4.0: 3 scales) or 'retention' (the paper's, calibrated)")
    parser.add_argument("--batch", type=int, help="inference batch (default per model: 64)")
    parser.add_argument("--train-batch", type=int, help="training batch (default: ViT-B 64, ViT-L 32, ViT-H 16)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-padded", action="store_true", help="skip the padded-attention rows")
    parser.add_argument("--out", type=Path, help="markdown file (records as JSON beside); default "
                        "benchmarks/results/<date>-<GPU>-throughput.md (with --smoke: none)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop (no device needed)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model at 64 px on this machine's device (CPU without CUDA), 1 repeat")
    args = parser.parse_args(argv)
    entries = smoke_plan() if args.smoke else plan(args)
    print(describe(entries, args.settings).to_markdown(), flush=True)
    if args.dry_run:
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("No CUDA device here: run it on a lent GPU machine (--smoke runs the code path on the CPU, "
              "--dry-run prints the plan).", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    warmup, repeats = (1, 1) if args.smoke else (args.warmup, args.repeats)
    padded_modes = () if args.no_padded else ("inference", "training step")
    machine = common.machine()
    print(f"\nMachine: {machine}\n", flush=True)
    began = time.perf_counter()
    start_load = training.load_average()
    records = measure(entries, args.settings, device, torch.bfloat16, warmup, repeats, padded_modes)
    notes = [
        f"bf16 autocast on {device} (fp32 weights, AdamW), random weights, the bundled images; medians of "
        f"{repeats} rounds after {warmup} warm-up round(s), uniform and APT in turn (the speedup: the median "
        "of each round's own uniform / APT ratio); "
        f"{time.perf_counter() - began:.0f} s in all, load average {start_load} at the start.",
        f"Packed attention: kernel `{records[0]['packed_kernel']}`; uniform: timm's own model "
        "(`scaled_dot_product_attention`); padded: timm's blocks on a padded batch with a key mask. The "
        "tokenizer's time (on the device, per image) is in the last table, not in the steps.",
        "Paper: APT's throughput gain on ViT-L (+40%) and ViT-H (+50%); its token reduction is about 25% at "
        "224 and 56% at 384 (`retention` rows calibrate the thresholds to it on these images).",
    ]
    result = report.Result("throughput", TITLE, {"records": records, "load_average_start": start_load},
                           [training.throughput_table(records, paper_columns()), training.phase_table(records),
                            training.tokenizer_table(records)], notes)
    print(report.render(result), flush=True)
    out = args.out
    if out is None and not args.smoke:
        from benchmarks.run import default_out

        out = default_out(["throughput"])
    if out is not None:
        report.write(out, machine, [result])
        print(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
