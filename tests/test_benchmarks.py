"""The benchmark suite's own checks, on tiny inputs: its baselines agree with our maps and sequences.

The timings are not checked here (speed is the suite's business, not the tests'); what is checked is
that each table row it prints compares like with like.
"""

import pytest
import torch

from apt_research.testing import baselines, reference
from benchmarks import common
from benchmarks.report import render
from benchmarks.sections import entropy, launch, loader, one_image, tokenizer


def test_entropy_rows_agree_with_both_baselines():
    result = entropy.run(rows=[(48, 2, 3, 64), (40, 2, 2, 256)])
    assert [r["max_diff"] <= 1e-5 for r in result.records] == [True, True]
    assert all(r["one_hot_ms"] is not None for r in result.records)  # (b) fits: it ran and agreed
    assert render(result).count("| yes") == 2


def test_tokenizer_rows_compare_the_same_sequences_and_patches():
    result = tokenizer.run(rows=[(8, 64, (6.0, 5.0)), (16, 64, (5.75, 4.0))], batch=4, repeats=1)
    assert [r["same"] for r in result.records] == [True] * 4  # two rows, each at 2+ threads and at 1
    assert [r["threads"] for r in result.records][1::2] == [1, 1]
    assert render(result).count("| yes ") == 4


def test_reference_pipeline_is_the_reference_code_path():
    # Its maps equal the spec's per-patch histc loop; its masks, labels and patches equal the library's.
    from apt_research import PatchTokenizer

    images = common.normalised(common.real_batch(56, 3))
    tokenizer = PatchTokenizer(3, 7, 56, [6.0, 5.0], common.MEAN, common.STD)
    pixels = tokenizer.to_pixels(images)
    maps = baselines.reference_loader_maps(pixels, 7, 3)
    expected_maps = reference.entropy_maps(pixels, 7, 3, 512)
    assert all(float((maps[size] - expected_maps[size]).abs().max()) <= 1e-5 for size in maps)
    ours = tokenizer(images, maps)
    theirs = baselines.reference_forward(images, maps, [6.0, 5.0], 7, 3, 56)
    assert all(torch.equal(ours["masks"][size], theirs_mask) for size, theirs_mask in
               baselines.reference_select(maps, [6.0, 5.0]).items())
    assert theirs["seqlens"] == ours["seqlens"] and common.same_result(ours, theirs)
    assert theirs["output_mask"].dtype == torch.float32  # the reference's labels are float, ours int64


def test_one_image_and_loader_sections_run():
    result = one_image.run(rows=[(8, 64, (6.0, 5.0))], batch=4, repeats=2)
    assert result.records["maps_uint8_ms"] > 0 and result.records["rows"][0]["forward_ratio"] > 0
    result = loader.run(count=4, batch_size=2, epochs=1)
    assert result.records["plain_img_s"] > 0 and result.records["maps_img_s"] > 0
    assert "entropy maps" in render(result)


def test_launch_section_counts_the_fused_forward_kernels():
    pytest.importorskip("triton")
    result = launch.run(batch=4, repeats=3)
    assert result.records["launches_per_forward"] == 7
    assert result.records["tokens"] > 4
