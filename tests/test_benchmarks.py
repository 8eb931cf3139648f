"""The benchmark suite's own checks, on tiny inputs: its baselines agree with our maps and sequences.

The timings are not checked here (speed is the suite's business, not the tests'); what is checked is
that each table row it prints compares like with like.
"""

import json

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


def test_training_section_measures_uniform_and_apt_beside_the_cost_model():
    from benchmarks.sections import training

    with common.torch_threads(1):  # a loaded 2-core machine's second thread slows every parallel region
        result = training.run(models=(("vit_small_patch16_224", 2),), size=64, warmup=0, repeats=1)
    records = result.records["records"]
    assert [r["mode"] for r in records] == ["inference", "training step"]
    for record in records:
        assert record["uniform_tokens"] == 17 and record["apt_tokens"] < 17  # real images merge at [5.5, 4.0]
        assert record["uniform_img_s"] > 0 and record["apt_img_s"] > 0 and record["predicted"] > 1
        assert record["ratio"] == pytest.approx(record["measured"] / record["predicted"])
    assert records[0]["padded_img_s"] > 0 and records[0]["tokenizer_whole_ms_per_img"] > 0
    assert records[1]["apt_optimizer_ms"] > 0 and len(result.records["load_average_start"]) == 3
    text = render(result)
    assert "measured / predicted" in text and "whole tokenizer ms/img" in text


def test_gpu_throughput_script_plans_and_smoke_runs_on_cpu(tmp_path, capsys):
    from benchmarks.gpu import throughput

    assert throughput.main(["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "378 (for 384)" in plan and "vit_h" in plan and "retention 0.44" in plan
    out = tmp_path / "smoke.md"
    with common.torch_threads(1):
        assert throughput.main(["--smoke", "--settings", "5.5,4.0", "retention", "--out", str(out)]) == 0
    records = json.loads(out.with_suffix(".json").read_text())["throughput"]["records"]
    assert [(r["setting"], r["mode"]) for r in records] == [
        ("thresholds", "inference"), ("thresholds", "training step"),
        ("calibrated to retention 0.75", "inference"), ("calibrated to retention 0.75", "training step")]
    assert all(r["dtype"] == "bfloat16" and r["apt_img_s"] > 0 and r["padded_img_s"] > 0 for r in records)
    assert "paper" in out.read_text()
