"""The benchmark suite's own checks, on tiny inputs: its baselines agree with our maps and sequences.

The timings are not checked here (speed is the suite's business, not the tests'); what is checked is
that each table row it prints compares like with like.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

# benchmarks/run.py under its own name (the repository root has a run.py too).
_spec = importlib.util.spec_from_file_location(
    "apt_benchmarks_run", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_entropy_rows_agree_with_both_baselines():
    results = {}
    table = bench.entropy_section(results, rows=[(48, 2, 3, 64), (40, 2, 2, 256)])
    assert [r["max_diff"] <= 1e-5 for r in results["entropy"]] == [True, True]
    assert all(r["one_hot_ms"] is not None for r in results["entropy"])  # (b) fits: it ran and agreed
    assert table.count("| yes") == 2


def test_tokenizer_rows_compare_the_same_sequences_and_patches():
    results = {}
    table = bench.tokenizer_section(results, rows=[(8, 64, (6.0, 5.0)), (16, 64, (5.75, 4.0))], batch=4, repeats=1)
    assert [r["same"] for r in results["tokenizer"]] == [True] * 4  # two rows, each at 2+ threads and at 1
    assert [r["threads"] for r in results["tokenizer"]][1::2] == [1, 1]
    assert table.count("| yes |") == 4


def test_reference_pipeline_is_the_reference_code_path():
    # Its maps equal the spec's per-patch histc loop; its masks, labels and patches equal the library's.
    import baselines
    import reference

    from apt_research import PatchTokenizer

    images = bench.normalised(bench.real_batch(56, 3))
    tokenizer = PatchTokenizer(3, 7, 56, [6.0, 5.0], bench.MEAN, bench.STD)
    pixels = tokenizer.to_pixels(images)
    maps = baselines.reference_loader_maps(pixels, 7, 3)
    expected_maps = reference.entropy_maps(pixels, 7, 3, 512)
    assert all(float((maps[size] - expected_maps[size]).abs().max()) <= 1e-5 for size in maps)
    ours = tokenizer(images, maps)
    theirs = baselines.reference_forward(images, maps, [6.0, 5.0], 7, 3, 56)
    assert all(torch.equal(ours["masks"][size], theirs_mask) for size, theirs_mask in
               baselines.reference_select(maps, [6.0, 5.0]).items())
    assert theirs["seqlens"] == ours["seqlens"] and bench.same_result(ours, theirs)
    assert theirs["output_mask"].dtype == torch.float32  # the reference's labels are float, ours int64


def test_one_image_and_loader_sections_run():
    results = {}
    bench.one_image_section(results, rows=[(8, 64, (6.0, 5.0))], batch=4, repeats=2)
    assert results["one_image"]["maps_uint8_ms"] > 0 and results["one_image"]["rows"][0]["forward_ratio"] > 0
    table = bench.loader_section(results, count=4, batch_size=2, epochs=1)
    assert results["loader"]["plain_img_s"] > 0 and results["loader"]["maps_img_s"] > 0
    assert "entropy maps" in table


def test_launch_section_counts_the_fused_forward_kernels():
    pytest.importorskip("triton")
    results = {}
    bench.launch_section(results, batch=4, repeats=3)
    assert results["launch"]["launches_per_forward"] == 7
    assert results["launch"]["tokens"] > 4
