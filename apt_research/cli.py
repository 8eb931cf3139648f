"""``apt-research``: the command line (visualize, sweep, report)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


class UsageError(Exception):
    """A problem with what the user asked for: printed as one line, exit code 2."""


def _thresholds(text: str) -> list[float]:
    try:
        value = json.loads(text if text.strip().startswith("[") else f"[{text}]")
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--thresholds must be numbers like '5.75,4.0', got {text!r}") from error
    return value


def _visualize_targets(image: str):
    """(pixels, metadata) of everything IMAGE names: a file, a folder, a data set, or skimage:NAME."""
    import torch

    from .datasets import DATASETS, iter_images, load_dataset, read_image_file, skimage_dataset

    path = Path(image)
    if path.is_file():
        try:
            array = read_image_file(path)
        except Exception as error:
            raise UsageError(f"cannot read image {image!r}: {type(error).__name__}: {error}") from error
        meta = {"name": path.stem, "source": str(path), "original_height": array.shape[0],
                "original_width": array.shape[1]}
        return None, [(torch.from_numpy(array).permute(2, 0, 1).float(), meta)]
    if image.startswith("skimage:"):
        try:
            source = skimage_dataset([image.split(":", 1)[1]])
        except ValueError as error:
            raise UsageError(str(error)) from error
    elif image in DATASETS and image != "folder" or path.is_dir():
        source = load_dataset(image)
    else:
        raise UsageError(
            f"IMAGE must be an image file, a folder, a bundled data set ('skimage', 'synthetic') or "
            f"'skimage:NAME', got {image!r} (no such file)"
        )
    return source, iter_images(source, "native", progress=True)


def cmd_visualize(args) -> int:
    from .visualize import VisualizeConfig, write_visualization

    config = VisualizeConfig(args.image_size, args.resize, args.patch_size, args.num_scales, args.thresholds,
                             args.method, args.bins, args.device)
    try:
        config.check()
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    source, targets = _visualize_targets(args.image)
    written = []
    for pixels, meta in targets:
        name = Path(meta["name"]).as_posix().replace("/", "__")
        written.append(write_visualization(pixels, meta, Path(args.out) / name, config))
        print(f"wrote {written[-1]}")
    if source is not None and source.skipped:
        print(f"skipped {len(source.skipped)} unreadable file(s): " + ", ".join(s["item"] for s in source.skipped))
    if not written:
        raise UsageError(f"no readable image in {args.image!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apt-research", description="Adaptive Patch Tokenization research tools")
    commands = parser.add_subparsers(dest="command", required=True)

    vis = commands.add_parser("visualize", help="heatmaps, patch grid, reconstruction and summary for images")
    vis.add_argument("image", help="an image file, a folder, 'skimage', 'synthetic' or 'skimage:NAME'")
    vis.add_argument("--out", default="visualizations", help="output folder (one sub-folder per image)")
    vis.add_argument("--image-size", type=int, default=336)
    vis.add_argument("--resize", default="short_side", help="center_crop, resize, short_side or native")
    vis.add_argument("--patch-size", type=int, default=16)
    vis.add_argument("--num-scales", type=int, default=3)
    vis.add_argument("--thresholds", type=_thresholds, default=[5.75, 4.0], help="e.g. '5.75,4.0'")
    vis.add_argument("--method", default="entropy")
    vis.add_argument("--bins", type=int, default=512)
    vis.add_argument("--device", default="cpu")
    vis.set_defaults(func=cmd_visualize)

    from .sweep.commands import add_commands

    add_commands(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            return args.func(args)
    except UsageError as error:
        print(f"apt-research {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from apt_research.cli import main as package_main  # raises the package's UsageError, not __main__'s copy

    sys.exit(package_main())
