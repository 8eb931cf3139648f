"""The data-loader path (maps in workers, packing in collate) and NaFlex interop; no timm needed."""

import pytest
import torch
from einops import rearrange
from torch.utils.data import TensorDataset

from apt_research import PatchTokenizer
from apt_research.models import MapsTransform, PackCollate, from_naflex, maps_loader, to_naflex
from images import skimage_batch

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


@pytest.fixture(scope="module")
def images():
    return normalised(skimage_batch(96, 128, names=("astronaut", "camera", "coffee", "chelsea", "rocket")))


@pytest.fixture(scope="module")
def tokenizer():
    return PatchTokenizer(3, 16, (96, 128), [6.0, 5.0], MEAN, STD)


def assert_same_tokens(got: dict, expected: dict, skip=()):
    assert sorted(set(got) - set(skip)) == sorted(set(expected) - set(skip))
    for key in expected:
        if key in skip:
            continue
        if key == "masks":
            assert sorted(got[key]) == sorted(expected[key])
            for size in expected[key]:
                assert torch.equal(got[key][size], expected[key][size]), (key, size)
        elif isinstance(expected[key], torch.Tensor):
            assert got[key].dtype == expected[key].dtype, key
            assert torch.equal(got[key], expected[key]), key
        else:
            assert got[key] == expected[key], key


def test_loader_workers_pack_what_the_tokenizer_makes(images, tokenizer):
    tokenizer(images[:1])  # this process has used the OpenMP kernels: forked workers would hang
    loader = maps_loader(TensorDataset(images, torch.arange(len(images))), tokenizer, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2], [3, 4]]
    merged = 0
    for (tokens, labels) in batches:
        chunk = images[labels]
        assert torch.equal(tokens.pop("images"), chunk)
        assert_same_tokens(tokens, tokenizer(chunk))
        merged += sum(tokens[f"resized_patches_{size}"].shape[0] for size in (32, 64))
    assert merged > 0, "the test images should merge some patches"


def test_collate_uses_the_maps_it_is_given(images, tokenizer):
    items = [MapsTransform(tokenizer)(image) for image in images[:2]]
    for item in items:  # maps that keep every 64-px cell where the border rule allows
        item["importance_maps"] = {size: torch.where(values < 1e5, -1.0, values)
                                   for size, values in item["importance_maps"].items()}
    tokens = PackCollate(tokenizer)(items)
    # 96 x 128: the two whole 64-px cells on top, the four 32-px cells of the row below, no 16-px patch.
    assert tokens["seqlens"] == [1 + 2 + 4, 1 + 2 + 4]
    assert tokens["resized_patches_16"].shape[0] == 0


def test_bad_items_are_refused(images, tokenizer):
    with pytest.raises(ValueError, match=r"image must be a normalised \(C, H, W\) tensor, got \(1, 3, 96, 128\)"):
        MapsTransform(tokenizer)(images[:1])
    with pytest.raises(TypeError, match="batch items must come from MapsTransform"):
        PackCollate(tokenizer)([images[0]])
    with pytest.raises(ValueError, match="at least one item"):
        PackCollate(tokenizer)([])


def test_naflex_layout(images, tokenizer):
    tokens = tokenizer(images)
    batch = to_naflex(tokens)
    counts = torch.tensor(tokens["seqlens"]) - 1
    assert batch["seq_len"] == int(counts.max())
    assert batch["patches"].shape == (5, batch["seq_len"], 16 * 16 * 3)
    assert torch.equal(batch["patch_valid"].sum(1), counts)
    assert not batch["patches"][~batch["patch_valid"]].any()
    assert set(batch["patch_scale"][batch["patch_valid"]].tolist()) <= {1, 2, 4}
    # Base-scale patches are the image's own, flattened channels last (timm's patchify_image layout).
    valid_base = batch["patch_valid"] & (batch["patch_scale"] == 1)
    for image, slot in valid_base.nonzero().tolist()[::7]:
        y, x = (batch["patch_coord"][image, slot] * 16).tolist()
        expected = rearrange(images[image, :, y : y + 16, x : x + 16], "c p1 p2 -> (p1 p2 c)")
        assert torch.equal(batch["patches"][image, slot], expected)


def test_naflex_round_trip(images, tokenizer):
    tokens = tokenizer(images)
    batch = to_naflex(tokens)
    assert_same_tokens(from_naflex(batch, tokenizer, images), tokens)
    without_images = from_naflex(batch, tokenizer)
    full = {key for key in tokens if key.startswith("full_patches_")}
    assert full and not full & set(without_images)
    assert_same_tokens(without_images, tokens, skip=full)


def test_naflex_errors(images, tokenizer):
    batch = to_naflex(tokenizer(images[:1]))
    with pytest.raises(ValueError, match=r"missing keys \['patch_scale'\]"):
        from_naflex({key: value for key, value in batch.items() if key != "patch_scale"}, tokenizer)
    batch["patch_scale"] = batch["patch_scale"] * 8
    with pytest.raises(ValueError, match=r"patch sides among \[16, 32, 64\]"):
        from_naflex(batch, tokenizer)
