"""``apt-research``: the command line (visualize, sweep, report, evaluate, finetune)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

from ._io import OwnershipError
from .contract import MAX_BINS
from .errors import UsageError


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit code 2), like the commands' own errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _thresholds(text: str) -> list[float]:
    """One word of ``--thresholds``: ``6``, ``6,5`` or ``[6, 5]`` (``--thresholds 6 5`` gives two words)."""
    words = [word for word in re.split(r"[,\s]+", text.strip().strip("[]")) if word]
    try:
        return [float(word) for word in words]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected numbers as in '--thresholds 6 5' or '--thresholds 6,5', got {text!r} "
            "(IMAGE goes before --thresholds)"
        ) from error


def _check_out(out: Path) -> None:
    """``--out`` must be a directory, or creatable as one below a writable directory."""
    if os.path.lexists(out) and not out.is_dir():
        raise UsageError(f"--out must be a directory, got {str(out)!r}, which is a file")
    existing = next(path for path in [out, *out.parents] if os.path.lexists(path))
    if not existing.is_dir():
        raise UsageError(f"--out {str(out)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {str(out)!r} cannot be written: no write permission on {str(existing)!r}")


def _visualize_targets(image: str, max_pixels: int):
    """(data set or None, image keys, iterator of (pixels, metadata)) for what IMAGE names.

    IMAGE is a file, a folder, a bundled data set or ``skimage:NAME``; each metadata holds its key
    (``item``) and its source (an absolute path for files).
    """
    import torch

    from .datasets import DATASETS, decode_image, folder_dataset, iter_images, load_dataset, skimage_dataset

    path = Path(image)
    if path.is_file():
        try:
            array, info = decode_image(path, max_pixels)
        except Exception as error:  # any decoder failure is the file's problem, not ours
            raise UsageError(f"IMAGE {image!r} cannot be read: {type(error).__name__}: {error}") from error
        meta = {"name": path.stem, "item": path.name, "source": str(path.absolute()), **info}
        return None, [path.name], [(torch.from_numpy(array).permute(2, 0, 1).float(), meta)]
    if image.startswith("skimage:"):
        try:
            source = skimage_dataset([image.split(":", 1)[1]])
        except ValueError as error:
            raise UsageError(f"IMAGE: {error}") from error
    elif image in DATASETS and image != "folder":
        source = load_dataset(image)
    elif path.is_dir():
        source = folder_dataset(path.absolute(), max_pixels=max_pixels)
    else:
        raise UsageError(
            f"IMAGE must be an image file, a folder, a bundled data set ('skimage', 'synthetic') or "
            f"'skimage:NAME', got {image!r} (no such file)"
        )
    keys = [source.item_name(item) for item in source.items]
    return source, keys, iter_images(source, "native", progress=True)


def cmd_visualize(args) -> int:
    from .presentation.visualize import VisualizeConfig, foreign_content, output_names, write_visualization

    if args.no_resize and args.resize not in (None, "native"):
        raise UsageError(f"--no-resize keeps the native size, so --resize {args.resize!r} contradicts it")
    options = {
        "image_size": args.image_size, "resize": "native" if args.no_resize else args.resize,
        "patch_size": args.patch_size, "num_scales": args.num_scales, "method": args.method, "bins": args.bins,
        "device": args.device, "max_pixels": args.max_pixels,
        "thresholds": None if args.thresholds is None else [value for word in args.thresholds for value in word],
    }
    config = VisualizeConfig(**{name: value for name, value in options.items() if value is not None})
    try:
        config.check()
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    if not args.image.strip():
        raise UsageError("IMAGE expects an image file, a folder, 'skimage', 'synthetic' or 'skimage:NAME', got ''")
    out = Path(args.out)
    _check_out(out)
    source, keys, targets = _visualize_targets(args.image, config.max_pixels)
    names = output_names(keys)
    for name in names.values():
        if os.path.lexists(out / name) and (reason := foreign_content(out / name)):
            raise UsageError(f"--out: will not replace {reason}; move it away or choose another --out")
    written = []
    for pixels, meta in targets:
        try:
            written.append(write_visualization(pixels, meta, out / names[meta["item"]], config))
        except (ValueError, FileExistsError) as error:
            raise UsageError(f"{meta['source']}: {error}") from error
        print(f"wrote {written[-1]}")
    if source is not None and source.skipped:
        print(f"skipped {len(source.skipped)} unreadable file(s): " + ", ".join(s["item"] for s in source.skipped))
    if not written:
        raise UsageError(f"no readable image in {args.image!r}")
    return 0


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from error
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def cmd_evaluate(args) -> int:
    from .models.accuracy import run_evaluation

    for name in ("num_scales", "batch_size", "image_size", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} expects a positive integer, got {value}")
    if args.workers < 0:
        raise UsageError(f"--workers expects 0 or more, got {args.workers}")
    thresholds = None if args.thresholds is None else [value for word in args.thresholds for value in word]
    out = Path(args.out)
    _check_out(out)
    try:
        frame = run_evaluation(
            args.model, args.data, out, checkpoint=args.checkpoint, pretrained=not args.no_pretrained,
            num_scales=args.num_scales, thresholds=thresholds, target_retention=args.target_retention,
            image_size=args.image_size, batch_size=args.batch_size, workers=args.workers, device=args.device,
            precision=args.precision, limit=args.limit)
    except (ValueError, TypeError, RuntimeError) as error:  # checked arguments (thresholds, device) in the library
        raise UsageError(str(error).splitlines()[0]) from error
    except KeyboardInterrupt:
        print("apt-research evaluate: interrupted; nothing was written", file=sys.stderr)
        return 130
    from .models.accuracy import markdown_table

    print(markdown_table(frame), end="")
    skipped = int(frame["skipped"].iloc[0])
    if skipped:
        print(f"skipped {skipped} image(s) that could not be decoded")
    print(f"wrote {out / 'evaluation.csv'}")
    return 0


def cmd_finetune(args) -> int:
    from .training.run import main_for_cli

    return main_for_cli(args.spec, args.out, args.resume)


def _add_model_commands(commands) -> None:
    ev = commands.add_parser("evaluate", help="top-1/top-5 of uniform and APT tokens of a model on a labelled folder")
    ev.add_argument("--model", required=True, help="a timm model name, or 'synthetic'")
    ev.add_argument("--checkpoint", help="weights: a checkpoint of apt-research finetune, or a timm state_dict file")
    ev.add_argument("--no-pretrained", "--no_pretrained", action="store_true",
                    help="random weights (no download); for 'synthetic': untrained")
    ev.add_argument("--data", required=True,
                    help="a folder of class sub-folders (ImageNet synsets, or classes the model was fine-tuned on), "
                         "or 'synthetic'")
    ev.add_argument("--num-scales", "--num_scales", type=int,
                    help="patch sizes p, 2p, 4p, ... (default 3, or the fine-tuned checkpoint's)")
    group = ev.add_mutually_exclusive_group()
    group.add_argument("--thresholds", type=_thresholds, nargs="+",
                       help="num_scales - 1 numbers, '6 5' or '6,5' (default: a fine-tuned checkpoint's, else "
                            "5.75 4.0 for 3 scales, 5.5 for 2)")
    group.add_argument("--target-retention", "--target_retention", type=_unit_interval,
                       help="calibrate the thresholds to this mean retention on the first 64 images")
    ev.add_argument("--image-size", "--image_size", type=int, help="model input side (default: the model's own)")
    ev.add_argument("--batch-size", "--batch_size", type=int, default=64, help="images per batch (default 64)")
    ev.add_argument("--workers", type=int, default=0, help="loader worker processes computing the maps (default 0)")
    ev.add_argument("--limit", type=int, help="the first N images (sorted by path) only")
    ev.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1")
    ev.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"), help="default 32")
    ev.add_argument("--out", required=True, help="output folder (created and marked; evaluation.csv, .md, .json)")
    ev.set_defaults(func=cmd_evaluate)

    ft = commands.add_parser("finetune", help="fine-tune a timm ViT on APT (or uniform) tokens from a YAML spec")
    ft.add_argument("spec", help="a finetune spec (YAML); see docs/training.md")
    ft.add_argument("--out", required=True, help="output folder (created and marked)")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ft.set_defaults(func=cmd_finetune)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="apt-research", description="Adaptive Patch Tokenization research tools")
    commands = parser.add_subparsers(dest="command", required=True)

    vis = commands.add_parser("visualize", help="heatmaps, patch grid, reconstruction and summary for images")
    vis.add_argument("image", help="an image file, a folder, 'skimage', 'synthetic' or 'skimage:NAME'")
    vis.add_argument("--out", default="visualizations",
                     help="output folder, one sub-folder per image (only earlier visualize output is replaced)")
    vis.add_argument("--image-size", "--image_size", type=int, help="short side after resizing (default 336)")
    vis.add_argument("--resize", help="short_side (default), center_crop, resize or native")
    vis.add_argument("--no-resize", "--no_resize", action="store_true", help="keep the native size (--resize native)")
    vis.add_argument("--patch-size", "--patch_size", type=int, help="base patch size (default 16)")
    vis.add_argument("--num-scales", "--num_scales", type=int, help="patch sizes p, 2p, 4p, ... (default 3)")
    vis.add_argument("--thresholds", type=_thresholds, nargs="*",
                     help="num_scales - 1 numbers, '5.75 4.0' or '5.75,4.0' (default 5.75 4.0)")
    vis.add_argument("--method", help="a registered scorer (default entropy)")
    vis.add_argument("--bins", type=int, help=f"histogram bins of the entropy scorer, 2 to {MAX_BINS} (default 512)")
    vis.add_argument("--device", help="cpu (default), cuda, cuda:1 or mps")
    vis.add_argument("--max-pixels", type=int,
                     help="larger images are shrunk by an integer factor while decoding (default 25000000)")
    vis.set_defaults(func=cmd_visualize)

    from .sweep.commands import add_commands

    add_commands(commands)
    _add_model_commands(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return args.func(args)
    except (UsageError, OwnershipError) as error:
        print(f"apt-research {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder without write permission, a link planted in our folder
        print(f"apt-research {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from apt_research.cli import main as package_main  # raises the package's UsageError, not __main__'s copy

    sys.exit(package_main())
