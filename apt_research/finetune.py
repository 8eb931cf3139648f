"""``python -m apt_research.finetune SPEC.yaml --out DIR [--resume]``: fine-tuning, also under torchrun.

``torchrun --nproc_per_node N -m apt_research.finetune SPEC.yaml --out DIR`` runs N processes with
DistributedDataParallel (gloo on CPU, NCCL on GPUs); ``apt-research finetune`` is the same command.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apt_research.finetune",
                                     description="fine-tune a timm ViT on APT (or uniform) tokens")
    parser.add_argument("spec", help="a finetune spec (YAML)")
    parser.add_argument("--out", required=True, help="output folder (created and marked)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = parser.parse_args(argv)
    from apt_research.training.run import main_for_cli

    return main_for_cli(args.spec, args.out, args.resume)


if __name__ == "__main__":
    sys.exit(main())
