"""notebooks/finetune.ipynb through papermill on small data: the run, its table and the top-1 figure."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("timm")

from apt_research.training import finetune, load_finetune_spec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_finetune_notebook(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "papermill", str(ROOT / "notebooks/finetune.ipynb"), str(tmp_path / "run.ipynb"),
               "-p", "output_dir", str(out), "-y",
               "model_options: {image_size: 64, count: 30, epochs: 1, embed_dim: 16, depth: 1}\n"
               "train_images: 24\nval_images: 12\nnum_scales: 2\nthresholds: [5.0]\nsteps: 4\nbatch_size: 6\n"
               "eval_every: 2\ndrop_path: 0.0"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    evaluations = pd.read_csv(out / "run" / "evaluation.csv")
    assert evaluations["step"].tolist() == [0, 0, 2, 2, 4, 4]
    assert (out / "figures" / "finetune_top1.pdf").stat().st_size > 0
    executed = (tmp_path / "run.ipynb").read_text()
    assert "APT zero-shot at thresholds [5.0]" in executed
    # a spec key that is not in the parameters cell (drop_path) reaches the spec; the control run is the same
    # spec on uniform tokens, evaluated at the same steps, and the notebook prints it
    spec = load_finetune_spec(out / "run" / "spec.yaml", base=Path("/"))
    control = load_finetune_spec(out / "control" / "spec.yaml", base=Path("/"))
    assert spec.drop_path == 0.0 and spec.tokenization == "apt"
    assert control.differences(spec) == ["tokenization: 'uniform' -> 'apt'"]
    assert pd.read_csv(out / "control" / "evaluation.csv")["step"].tolist() == [0, 0, 2, 2, 4, 4]
    assert "control, the same spec fine-tuned on uniform tokens" in executed
    # what the notebook's rerun with the same parameters calls (the same specs, resumed): the finished runs train
    # no further and no file of theirs is rewritten, checkpoints included
    written = {path: path.stat().st_mtime_ns for folder in ("run", "control") for path in (out / folder).rglob("*")
               if path.is_file()}
    finetune(spec, out / "run", resume=True, progress=False)
    finetune(control, out / "control", resume=True, progress=False)
    assert {path: path.stat().st_mtime_ns for path in written} == written
    # a rerun with other parameters into the same output_dir is refused, naming what changed, instead of
    # printing the old run's top-1 under the new thresholds
    changed = subprocess.run(command[:-1] + [command[-1].replace("thresholds: [5.0]", "thresholds: [4.0]")],
                             cwd=ROOT, capture_output=True, text=True)
    assert changed.returncode != 0
    assert "the spec differs" in changed.stderr + changed.stdout and "thresholds" in changed.stderr + changed.stdout
    assert {path: path.stat().st_mtime_ns for path in written} == written
