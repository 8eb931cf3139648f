"""Benchmark suite: our tokenizer against the baselines it carries, measured in one process.

    python3 run.py bench                       # everything this machine can run
    python3 run.py bench --sections entropy    # one section (entropy, scaling, tokenizer, one_image, loader, cache,
                                               # vit, training, launch, cuda, startup)
    python3 run.py bench --out benchmarks/RESULTS-cpu.md
    python -m benchmarks.run --sections entropy   # the same, from the repository root

Prints markdown tables and writes them, and the raw records as JSON beside, to ``--out``; without it to
``benchmarks/results/<date>-<machine>-<sections>.md``. Ratios compare implementations timed in the same
process on the same inputs; absolute times only describe the machine they came from.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from pathlib import Path

import torch

try:
    from benchmarks import common, report
    from benchmarks.sections import SECTIONS, run_section, vit
except ModuleNotFoundError as error:  # started as a script with the repository root off the path
    if error.name != "benchmarks":
        raise
    sys.exit("benchmarks is a package: run `python -m benchmarks.run` from the repository root")

RESULTS = Path(__file__).resolve().parent / "results"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name() -> str:
    """A short name of this machine for file names: its GPU, else its CPU model and core count."""
    if torch.cuda.is_available():
        return slug(torch.cuda.get_device_name())[:40]
    return f"{slug(common.cpu_name())[:32]}-{os.cpu_count()}c"


def default_out(sections: list[str]) -> Path:
    """``benchmarks/results/<date>-<machine>-<sections>.md`` (``all`` for every section), never one that exists."""
    part = "all" if list(sections) == list(SECTIONS) else "-".join(sections)
    stem = f"{datetime.date.today().isoformat()}-{machine_name()}-{part}"
    path, index = RESULTS / f"{stem}.md", 2
    while path.exists() or path.with_suffix(".json").exists():
        path, index = RESULTS / f"{stem}-{index}.md", index + 1
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--out", type=Path, help="write the tables (markdown) here, and the records as JSON beside "
                        "(default: benchmarks/results/<date>-<machine>-<sections>.md)")
    parser.add_argument("--gpu-vit", action="store_true", help="ViT-B/L/H at 224/336/448, bf16, batch 64 on CUDA")
    parser.add_argument("--plot-from", type=Path, help="draw the speed figure of a results JSON and stop")
    parser.add_argument("--paper-retention", action="store_true",
                        help="ViT-B/L/H on CUDA at the paper's retention: 0.75 at 224, 0.44 at 384 (calibrated)")
    args = parser.parse_args(argv)
    if args.plot_from:
        data = json.loads(args.plot_from.read_text())
        target = args.plot_from.with_name(args.plot_from.stem + "-speedup_vs_retention")
        vit.plot_speed(data["vit"], target, data["machine"].split(", GPU ")[-1][:40])
        print(f"wrote {target}.pdf/.png")
        return 0
    out = args.out or default_out(args.sections)
    machine = common.machine()
    print(f"Machine: {machine}\n", flush=True)
    results, records = [], {}
    variants = [vit.gpu] * args.gpu_vit + [vit.paper_retention] * args.paper_retention
    for name in args.sections:
        print(f"== {name}", flush=True)
        results.append(run_section(name, records))
        records = report.collect(results, machine)
        print(report.render(results[-1]), flush=True)
    for variant in variants if torch.cuda.is_available() else []:
        results.append(variant())
        print(report.render(results[-1]), flush=True)
    records = report.write(out, machine, results)
    if records.get("vit"):
        vit.plot_speed(records["vit"], out.with_name(out.stem + "-speedup_vs_retention"), machine[:40])
    print(f"wrote {out} and {out.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
