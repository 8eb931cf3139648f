"""notebooks/finetune.ipynb through papermill on small data: the run, its table and the top-1 figure."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[2]


def test_finetune_notebook(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "papermill", str(ROOT / "notebooks/finetune.ipynb"), str(tmp_path / "run.ipynb"),
               "-p", "output_dir", str(out), "-y",
               "model_options: {image_size: 64, count: 30, epochs: 1, embed_dim: 16, depth: 1}\n"
               "train_images: 24\nval_images: 12\nnum_scales: 2\nthresholds: [5.0]\nsteps: 4\nbatch_size: 6\n"
               "eval_every: 2"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    evaluations = pd.read_csv(out / "run" / "evaluation.csv")
    assert evaluations["step"].tolist() == [0, 0, 2, 2, 4, 4]
    assert (out / "figures" / "finetune_top1.pdf").stat().st_size > 0
    executed = (tmp_path / "run.ipynb").read_text()
    assert "APT zero-shot at thresholds [5.0]" in executed
    # a second run with the same parameters reuses the finished run instead of training again
    before = (out / "run" / "metrics.csv").stat().st_mtime_ns
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    assert (out / "run" / "metrics.csv").stat().st_mtime_ns == before
