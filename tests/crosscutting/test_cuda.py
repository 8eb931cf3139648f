"""CUDA paths against the CPU reference; skipped where no GPU exists."""

import pytest
import torch

from apt_research import PatchTokenizer, compute_importance_maps, compute_patch_entropy_batched

from apt_research.testing import reference
from conftest import cuda, skimage_batch

pytestmark = [cuda, pytest.mark.cuda]


@pytest.mark.parametrize("height,width", [(224, 224), (230, 333), (61, 97), (1000, 872)])
@pytest.mark.parametrize("patch_size,num_scales,bins", [(16, 3, 512), (14, 4, 256), (16, 2, 64)])
def test_cuda_entropy_matches_reference(height, width, patch_size, num_scales, bins):
    images = skimage_batch(height, width, names=("astronaut", "camera"))
    expected = reference.entropy_maps(images, patch_size, num_scales, bins)
    for pixels in (images, images.round().to(torch.uint8)):
        if pixels.dtype == torch.uint8:
            expected = reference.entropy_maps(pixels.float(), patch_size, num_scales, bins)
        got = compute_patch_entropy_batched(pixels.cuda(), patch_size, num_scales, bins)
        for size in expected:
            assert got[size].device.type == "cuda"
            assert float((got[size].cpu() - expected[size]).abs().max()) <= 1e-5


@pytest.mark.parametrize("method", ["entropy", "laplacian", "upsample_mse"])
def test_cuda_tokenizer_equals_cpu(method):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    pixels = skimage_batch(230, 333)
    images = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    probe = PatchTokenizer(3, 16, (230, 333), [0.0, 0.0], mean, std, method=method)
    scores = probe.compute_importance_maps(images)
    thresholds = [float(scores[32][:, :-1, :-1].median()), float(scores[64][:, :-1, :-1].median())]
    tokenizer = PatchTokenizer(3, 16, (230, 333), thresholds, mean, std, method=method)
    cpu = tokenizer(images)
    gpu = tokenizer.cuda()(images.cuda())
    assert gpu["cu_seqlens"].device.type == "cuda"
    if method == "entropy":
        assert gpu["seqlens"] == cpu["seqlens"]
        assert torch.equal(gpu["output_mask"].cpu(), cpu["output_mask"])
        for key in cpu:
            if key.startswith(("resized_patches", "full_patches")):
                assert torch.allclose(gpu[key].cpu(), cpu[key], atol=1e-5)
    else:
        maps_gpu = compute_importance_maps(pixels.cuda(), method, 16, 3)
        maps_cpu = compute_importance_maps(pixels, method, 16, 3)
        for size in maps_cpu:
            assert torch.allclose(maps_gpu[size].cpu(), maps_cpu[size], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("custom_maps", [False, True])
def test_cuda_patch_groups_equal_cpu(custom_maps):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    images = torch.randn(4, 3, 61, 97)
    tokenizer = PatchTokenizer(3, 14, (61, 97), [6.0, 5.0], mean, std)
    if custom_maps:  # large patches sticking out of the image kept: zero padding inside them
        maps = {14: torch.zeros(4, 5, 7), 28: torch.zeros(4, 3, 4), 56: torch.rand(4, 2, 2) * 2}
    else:
        maps = tokenizer.compute_importance_maps(images)
    cpu = tokenizer(images, importance_maps=maps)
    gpu = tokenizer.cuda()(images.cuda(), importance_maps={k: v.cuda() for k, v in maps.items()})
    for key, value in cpu.items():
        if isinstance(value, torch.Tensor):
            assert torch.allclose(gpu[key].cpu().to(value.dtype), value, atol=1e-6), key
    assert gpu["seqlens"] == cpu["seqlens"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_cuda_forward_rejects_non_finite(value):
    """On CUDA the entropy kernel checks the values (no pass of its own): the error is the same in kind."""
    images = torch.randn(3, 3, 45, 45)
    images[2, 0, 44, 40] = value
    tokenizer = PatchTokenizer(2, 16, 45, [5.0]).cuda()
    with pytest.raises(ValueError, match=r"images must be finite, got an? (nan|inf) value in image 2"):
        tokenizer(images.cuda())
