"""Thresholds for a token budget, from importance maps already computed (any scorer).

Two rules choose thresholds for a target retention of a set of images, which is the mean over the
images of each image's retention (``apt_research.selection.mean_retention``: every image weighs the
same, as in a sweep summary's ``retention_mean``; not the pooled kept / base tokens of all images):

- ``"shared"``: one threshold for every scale above 0.
- ``"per_scale_quantile"``: scale s gets the q-quantile of its own (non-border)
  scores, the same q for every scale, so scorers whose range changes with patch
  size (laplacian, upsample_mse) are treated alike at every scale.

Every image's retention, and so their mean, only falls as the threshold (or q)
rises, so a bisection over the sorted candidate values finds the setting closest
to the target. Retention moves in steps (one patch of one image at a time: a step
of ``1 / (n * h_0 * w_0)`` for an image of ``h_0 x w_0`` base patches among n),
so the result is exact to within
``tolerance`` where the data allows, and otherwise the closest achievable value,
said in ``CalibrationResult.message``.

``budget_masks`` is the per-image mode: each image keeps at most ``max_tokens``
tokens, merging its lowest-score patches first (the smallest shared threshold
whose selection fits the budget, per image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .contract import DEFAULT_PAD_VALUE
from .selection import mean_retention, select_patches_by_threshold, token_counts

STRATEGIES = ("shared", "per_scale_quantile")


@dataclass
class CalibrationResult:
    thresholds: list[float]
    achieved_retention: float
    target_retention: float
    strategy: str
    within_tolerance: bool
    message: str


def _as_map_list(maps) -> list[dict[int, torch.Tensor]]:
    """Maps as a list of batched dicts: one dict ``{p_s: (B, h, w)}``, or a list of per-image dicts."""
    if isinstance(maps, dict):
        return [maps]
    if isinstance(maps, (list, tuple)) and maps and all(isinstance(m, dict) for m in maps):
        return [m if next(iter(m.values())).dim() == 3 else {k: v[None] for k, v in m.items()} for m in maps]
    raise TypeError("maps must be a dict {patch_size: (B, h, w)} or a list of such dicts (one per image), "
                    f"got {type(maps).__name__}")


def _scores(map_list, size, pad_value):
    values = torch.cat([m[size].flatten().double() for m in map_list])
    return values[values < pad_value].numpy()


def _just_above(values: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The next number above each score in the maps' own precision: the selection compares a float32 map with
    its threshold in float32, where float64's next number would round back to the score and not keep it."""
    if dtype == torch.float64:
        return np.nextafter(values, np.inf)
    return np.nextafter(values.astype(np.float32), np.float32(np.inf)).astype(np.float64)


def _candidates(map_list, strategy, pad_value):
    """Sorted candidate settings (an increasing parameter) and how to turn one into thresholds."""
    sizes = sorted(map_list[0])[1:]
    dtype = map_list[0][sizes[0]].dtype if sizes else torch.float32
    if strategy == "shared":
        values = np.unique(np.concatenate([_scores(map_list, s, pad_value) for s in sizes]))
        # A threshold just above a score keeps that patch; start below every score (keeps no large patch).
        cuts = np.concatenate([[values[0] - 1.0], _just_above(values, dtype)]) if values.size else np.array([0.0])
        return cuts, lambda cut: [float(cut)] * len(sizes)
    per_scale = [np.sort(_scores(map_list, s, pad_value)) for s in sizes]
    quantiles = np.linspace(0.0, 1.0, 1001)

    def thresholds(q):
        out = []
        for values in per_scale:
            if values.size == 0:  # every patch of the scale is padded: none can be kept, whatever the threshold
                out.append(min(0.0, float(pad_value)))
                continue
            index = int(round(q * values.size))
            out.append(float(values[0] - 1.0) if index == 0 else float(_just_above(values[index - 1 : index], dtype)[0]))
        return out

    return quantiles, thresholds


def _bisect(value_at, size: int, target: float) -> tuple[int, int]:
    """``(low, high)`` around where the non-increasing ``value_at(0 .. size-1)`` falls to ``target``:
    ``value_at(high) <= target < value_at(low)``, or ``(0, 0)`` when ``value_at(0) <= target``."""
    low, high = 0, size - 1
    if value_at(low) <= target:
        return low, low
    while high - low > 1:
        middle = (low + high) // 2
        if value_at(middle) > target:
            low = middle
        else:
            high = middle
    return low, high


def calibrate_thresholds(maps, target_retention: float, strategy: str = "shared", tolerance: float = 0.005,
                         pad_value: float = DEFAULT_PAD_VALUE) -> CalibrationResult:
    """Thresholds whose retention over the given images is closest to ``target_retention``.

    The retention of the images is ``selection.mean_retention``: the mean over images of each image's
    kept tokens / base-grid tokens, each image weighing the same whatever its size.
    ``achieved_retention`` is that value at the returned thresholds.

    Parameters
    ----------
    maps : dict or list of dict
        Importance maps ``{p_s: (B, h_s, w_s)}`` (one batch) or a list of such
        dicts (images of different sizes), e.g. from the sweep cache.
    target_retention : float
        Wanted mean over images of kept tokens / base-grid tokens, in (0, 1].
    strategy : {"shared", "per_scale_quantile"}
        The rule that maps one number to the thresholds of every scale.
    tolerance : float
        Allowed distance to the target (0.005 = half a percentage point).

    Examples
    --------
    >>> import torch
    >>> from apt_research import compute_patch_entropy_batched
    >>> from skimage import data
    >>> image = torch.from_numpy(data.camera()).float()[None, None]
    >>> maps = compute_patch_entropy_batched(image, 16, 3)
    >>> result = calibrate_thresholds(maps, 0.5)
    >>> abs(result.achieved_retention - 0.5) <= 0.005
    True
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if isinstance(target_retention, bool) or not isinstance(target_retention, (int, float)) or not (
        0 < target_retention <= 1
    ):
        raise ValueError(f"target_retention must be a number in (0, 1], got {target_retention!r}")
    map_list = _as_map_list(maps)
    if len(map_list[0]) < 2:
        raise ValueError("calibration needs at least 2 scales: with one scale every patch is kept (retention 1)")
    candidates, to_thresholds = _candidates(map_list, strategy, pad_value)
    retention = {}

    def at(index):
        if index not in retention:
            retention[index] = mean_retention(map_list, to_thresholds(candidates[index]))
        return retention[index]

    low, high = _bisect(at, len(candidates), target_retention)
    best = min((low, high), key=lambda i: abs(at(i) - target_retention))
    achieved = at(best)
    within = abs(achieved - target_retention) <= tolerance
    if within:
        message = f"retention {achieved:.4f} for target {target_retention:.4f}"
    else:
        span = (at(len(candidates) - 1), at(0))
        between = f" (the settings around the target give {at(high):.4f} and {at(low):.4f})" if low != high else ""
        message = (f"target retention {target_retention:.4f} is not reachable within {tolerance:.4f} on these images "
                   f"(reachable: {span[0]:.4f} to {span[1]:.4f}, in steps); closest achievable {achieved:.4f}"
                   f"{between}")
    return CalibrationResult(to_thresholds(candidates[best]), achieved, float(target_retention), strategy, within,
                             message)


def budget_masks(maps: dict[int, torch.Tensor], max_tokens: int, pad_value: float = DEFAULT_PAD_VALUE):
    """Masks keeping at most ``max_tokens`` tokens per image, lowest-score merges first.

    For each image this is the selection with the smallest shared threshold
    whose token count fits the budget. Returns ``(masks, thresholds)`` with one
    threshold per image. A budget below what merging everything reaches keeps
    the coarsest possible selection (all merges made).
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    sizes = sorted(maps)
    batch = maps[sizes[0]].shape[0]
    per_image_masks, chosen = [], []
    for index in range(batch):
        image_maps = {size: maps[size][index : index + 1] for size in sizes}
        cuts, to_thresholds = _candidates([image_maps], "shared", pad_value)
        count = lambda i: int(token_counts(select_patches_by_threshold(image_maps, to_thresholds(cuts[i])))[0])
        _, high = _bisect(count, len(cuts), max_tokens)
        thresholds = to_thresholds(cuts[high])
        per_image_masks.append(select_patches_by_threshold(image_maps, thresholds))
        chosen.append(thresholds[0])
    masks = {size: torch.cat([m[size] for m in per_image_masks]) for size in sizes}
    return masks, chosen
