"""The executor seam: a sweep's runs computed in shards of images elsewhere give the records of whole runs."""

import pandas as pd
import pytest

from apt_research.sweep.executor import NotebookExecutor, Target, Task
from apt_research.sweep.report import load_records
from apt_research.sweep.runner import run_sweep
from apt_research.sweep.spec import load_spec
from sweep_helpers import InProcessExecutor

SPEC = {"name": "shards", "fixed": {"dataset": "synthetic", "dataset_options": {"count": 3, "size": 48},
                                    "image_size": 32, "num_scales": 2, "thresholds": [[4.0], [5.0]]},
        "grid": {"bins": [64, 128]}}
SAME = ["run_id", "bins", "image", "thresholds", "tokens_total", "retention", "psnr", "ssim", "score_16_mean"]


def test_sharded_runs_give_the_records_of_whole_runs(tmp_path):
    sweep = load_spec(SPEC)
    whole = run_sweep(sweep, tmp_path / "whole", executor=InProcessExecutor(), progress=False)
    sharded = run_sweep(sweep, tmp_path / "sharded", executor=InProcessExecutor([(0, 2), (2, 3)]), progress=False)
    assert {s["state"] for s in whole + sharded} == {"finished"}
    tables = [load_records(tmp_path / name)[0].reset_index(drop=True)[SAME] for name in ("whole", "sharded")]
    assert len(tables[0]) == 2 * 3 * 2
    pd.testing.assert_frame_equal(*tables)  # also the order: threshold setting first, then image
    assert len(list((tmp_path / "sharded" / "cache").glob("*.npz"))) == 4  # one entry per run and shard


def test_the_notebook_executor_refuses_shards(tmp_path):
    task = Task("abc", load_spec(SPEC).runs[0]["params"], shard=(0, 1))
    with pytest.raises(ValueError, match="NotebookExecutor runs whole configurations, got shard \\(0, 1\\)"):
        list(NotebookExecutor().execute([task], Target(tmp_path, "shards", tmp_path / "cache")))
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        NotebookExecutor(0)
