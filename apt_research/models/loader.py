"""The data-loader path, as the paper runs it: importance maps in the workers, packing in ``collate``.

``MapsTransform`` computes one image's importance maps (the costly part) where
the image is loaded; ``PackCollate`` stacks a batch and hands the maps to the
tokenizer, which then only selects and packs; ``maps_loader`` puts the two in a
``DataLoader``. ``to_naflex`` and ``from_naflex`` convert the tokenizer's dict to
and from timm's NaFlex batch layout.
"""

from __future__ import annotations

import multiprocessing

import torch
from einops import rearrange
from torch.utils.data import DataLoader, Dataset, default_collate

from ..backends.torch_backend import output_mask, packed_boxes
from ..contract import grid_shape
from ..tokenizer import CLASS_TOKEN, PatchTokenizer, patch_groups


class MapsTransform:
    """Per-image transform: a normalised image ``(C, H, W)`` to ``{"image", "importance_maps"}``.

    Parameters
    ----------
    tokenizer : PatchTokenizer
        Scores the image as its ``forward`` would (scorer, bins, normalisation).

    Notes
    -----
    Put it last in a data set's transform (after resizing and normalising); a
    ``torch.utils.data.DataLoader`` with ``num_workers=N`` then computes the maps
    in N worker processes, and ``PackCollate`` does the rest.
    """

    def __init__(self, tokenizer: PatchTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, image: torch.Tensor) -> dict:
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a normalised (C, H, W) tensor, got {shape}")
        maps = self.tokenizer.compute_importance_maps(image[None])
        return {"image": image, "importance_maps": {size: values[0] for size, values in maps.items()}}


class PackCollate:
    """``collate_fn`` that packs items of ``MapsTransform`` into the tokenizer's dict, maps not recomputed.

    Items are ``MapsTransform`` dicts or ``(dict, target, ...)`` tuples as a
    labelled data set yields them. Returns the tokenizer's dict plus ``images``
    ``(B, C, H, W)``, or ``(tokens, targets, ...)`` for tuples, the targets
    collated by ``torch.utils.data.default_collate``.
    """

    def __init__(self, tokenizer: PatchTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: list):
        if not batch:
            raise ValueError("batch must hold at least one item, got an empty list")
        labelled = isinstance(batch[0], (tuple, list))
        samples = [item[0] for item in batch] if labelled else batch
        if not all(isinstance(sample, dict) and "importance_maps" in sample for sample in samples):
            raise TypeError("batch items must come from MapsTransform (dicts with 'image' and 'importance_maps')")
        images = torch.stack([sample["image"] for sample in samples])
        maps = {size: torch.stack([sample["importance_maps"][size] for sample in samples])
                for size in samples[0]["importance_maps"]}
        tokens = self.tokenizer(images, importance_maps=maps)
        tokens["images"] = images
        if not labelled:
            return tokens
        return (tokens, *default_collate([tuple(item[1:]) for item in batch]))


class _WithMaps(Dataset):
    """``dataset``'s items with ``MapsTransform`` applied to the image (the first element of a tuple)."""

    def __init__(self, dataset, transform: MapsTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            return (self.transform(item[0]), *item[1:])
        return self.transform(item)


def start_method() -> str:
    """How loader workers start: ``forkserver`` (``spawn`` where there is none), never ``fork`` (see
    ``maps_loader``'s notes)."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def maps_loader(dataset, tokenizer: PatchTokenizer, batch_size: int = 32, num_workers: int = 0,
                **dataloader_options) -> DataLoader:
    """A ``DataLoader`` whose workers compute importance maps and whose ``collate`` packs the batch.

    Parameters
    ----------
    dataset : Dataset
        Yields normalised images ``(C, H, W)``, or ``(image, target, ...)`` tuples.
    tokenizer : PatchTokenizer
        Scores, selects and packs.
    batch_size, num_workers : int
        As ``DataLoader`` takes them.
    **dataloader_options
        Passed to ``DataLoader`` (``shuffle``, ``pin_memory``, ``persistent_workers``, ...).

    Returns
    -------
    DataLoader
        Batches as ``PackCollate`` returns them.

    Notes
    -----
    With workers the default start method is ``forkserver`` (``spawn`` where there is
    none): the CPU entropy kernel runs on OpenMP threads, and a worker forked
    from a process that has used OpenMP (torch or numba) hangs or is stopped
    ("fork() called from a process already using GNU OpenMP"). As with
    ``spawn``, the data set must then be picklable (defined in an importable
    module, not in a notebook cell).
    """
    if num_workers > 0 and "multiprocessing_context" not in dataloader_options:
        dataloader_options["multiprocessing_context"] = start_method()
    return DataLoader(_WithMaps(dataset, MapsTransform(tokenizer)), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=PackCollate(tokenizer), **dataloader_options)


def _packed_patches(tokens: dict, sizes: list[int]) -> torch.Tensor:
    """Resized patches of every token ``(N_tokens, C, p, p)`` in ``output_mask`` order (zeros at class tokens)."""
    output_mask = tokens["output_mask"]
    first = tokens[f"resized_patches_{sizes[0]}"]
    packed = first.new_zeros(output_mask.shape[0], *first.shape[1:])
    for scale, size in enumerate(sizes):
        packed[output_mask == scale + 1] = tokens[f"resized_patches_{size}"]
    return packed


def _patch_sizes(tokens: dict) -> list[int]:
    return sorted(int(key.rsplit("_", 1)[1]) for key in tokens if key.startswith("resized_patches_"))


def to_naflex(tokens: dict) -> dict:
    """The tokenizer's dict as a timm NaFlex batch, one padded row of patches per image.

    Returns ``patches`` ``(B, N, p * p * C)`` (each patch resized to the base
    size, flattened channels last as timm's ``patchify_image``), ``patch_coord``
    ``(B, N, 2)`` int64 ``(y, x)`` of the patch's top-left cell on the base grid,
    ``patch_valid`` ``(B, N)`` bool, ``seq_len`` (N, the longest image's patch
    count) and ``patch_scale`` ``(B, N)`` int64, the patch side in base patches
    (1, 2, 4, ...; 0 on padding). Class tokens are left out, as NaFlex adds them
    in the model. Patches keep ``output_mask`` order: scale by scale, row-major.
    """
    sizes = _patch_sizes(tokens)
    base = sizes[0]
    output_mask, boxes = tokens["output_mask"], tokens["token_boxes"]
    patch_rows = output_mask != CLASS_TOKEN
    patches = rearrange(_packed_patches(tokens, sizes)[patch_rows], "n c p1 p2 -> n (p1 p2 c)")
    boxes = boxes[patch_rows]
    counts = torch.as_tensor(tokens["seqlens"], device=boxes.device) - 1
    batch, longest = counts.shape[0], int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(boxes.shape[0], device=boxes.device) - starts[boxes[:, 0]]
    where = (boxes[:, 0], position)
    out_patches = patches.new_zeros(batch, longest, patches.shape[1]).index_put(where, patches)
    coord = boxes.new_zeros(batch, longest, 2).index_put(where, boxes[:, 1:3] // base)
    scale = boxes.new_zeros(batch, longest).index_put(where, boxes[:, 3] // base)
    valid = torch.zeros(batch, longest, dtype=torch.bool, device=boxes.device).index_put(
        where, torch.ones_like(position, dtype=torch.bool))
    return {"patches": out_patches, "patch_coord": coord, "patch_valid": valid, "seq_len": longest,
            "patch_scale": scale}


def from_naflex(batch: dict, tokenizer: PatchTokenizer, images: torch.Tensor | None = None) -> dict:
    """A NaFlex batch with ``patch_scale`` (as ``to_naflex`` makes it) back to the tokenizer's dict.

    Parameters
    ----------
    batch : dict
        ``patches``, ``patch_coord``, ``patch_valid`` and ``patch_scale``.
    tokenizer : PatchTokenizer
        Gives the image size, base patch size and scales.
    images : Tensor, optional
        The normalised images ``(B, C, H, W)``. NaFlex patches hold each token
        resized to the base size only; with the images the full-resolution
        ``full_patches_{p_s}`` are cut again (and the result equals
        ``tokenizer(images)``), without them those keys are missing.

    Returns
    -------
    dict
        The tokenizer's keys: masks, patch groups, ``output_mask``, ``seqlens``,
        ``cu_seqlens``, ``max_seqlen``, ``token_boxes``, ``retained_frac``.
    """
    missing = sorted({"patches", "patch_coord", "patch_valid", "patch_scale"} - set(batch))
    if missing:
        raise ValueError(f"batch must be a NaFlex batch with patch_scale (see to_naflex), missing keys {missing}")
    base, sizes = tokenizer.base_patch_size, tokenizer.patch_sizes
    height, width = tokenizer.image_size
    valid = batch["patch_valid"].bool()
    image_idx, _ = valid.nonzero(as_tuple=True)
    coord, side = batch["patch_coord"][valid].long(), batch["patch_scale"][valid].long() * base
    unknown = sorted(set(side.tolist()) - set(sizes))
    if unknown:
        raise ValueError(f"batch patch_scale must give patch sides among {sizes} for this tokenizer, got {unknown}")
    patches = rearrange(batch["patches"][valid], "n (p1 p2 c) -> n c p1 p2", p1=base, p2=base)
    num_images = valid.shape[0]
    masks, resized = {}, {}
    for size in sizes:
        rows, cols = grid_shape(height, width, size)
        at = side == size
        cell_rows, cell_cols = coord[at, 0] * base // size, coord[at, 1] * base // size
        masks[size] = torch.zeros(num_images, rows, cols, device=patches.device)
        masks[size][image_idx[at], cell_rows, cell_cols] = 1.0
        # the tokenizer's order: image, then row, then column
        resized[size] = patches[at][torch.argsort((image_idx[at] * rows + cell_rows) * cols + cell_cols)]
    out = patch_groups(images, masks, base) if images is not None else {}
    for size in sizes if images is None else ():
        keep = masks[size].bool()
        kept_images, kept_rows, kept_cols = keep.nonzero(as_tuple=True)
        out[f"resized_patches_{size}"] = resized[size]
        out[f"pos_embed_mask_{size}"] = keep.flatten(1)
        out[f"token_boxes_{size}"] = torch.stack(
            [kept_images, kept_rows * size, kept_cols * size, torch.full_like(kept_images, size)], dim=1)
    counts = torch.stack([masks[size].flatten(1).sum(1) for size in sizes], dim=1).long()
    seqlens = (counts.sum(1) + 1).tolist()
    out["masks"] = masks
    out["output_mask"] = output_mask(counts, seqlens, tokenizer.num_scales)
    out["seqlens"] = seqlens
    out["cu_seqlens"] = torch.tensor([0, *seqlens], device=patches.device).cumsum(0).to(torch.int32)
    out["token_boxes"] = packed_boxes(out, tokenizer.patch_sizes, num_images, patches.device)
    out["max_seqlen"] = max(seqlens)
    out["retained_frac"] = sum(seqlens) / (num_images * height * width / base**2)
    return out
