"""``apt-research finetune``: a run's files, resume after kill -9, two processes against one, refusals."""

import os
import shutil
from pathlib import Path
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import yaml

from apt_research.cli import main
from apt_research.models.checkpoints import read_checkpoint
from apt_research.training import finetune, load_finetune_spec
from apt_research.training.run import TrainingStopped

pytest.importorskip("timm")

SPEC = {
    "model": "synthetic", "pretrained": False, "model_options": {"image_size": 64, "embed_dim": 32, "depth": 2},
    "train_data": "synthetic", "val_data": "synthetic", "train_images": 48, "val_images": 24, "num_scales": 2,
    "thresholds": [5.0], "steps": 8, "batch_size": 8, "drop_path": 0.0, "workers": 0, "eval_every": 4,
    "checkpoint_every": 2, "seed": 3,
}


def _spec_file(folder, **changes):
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


def _losses(out):
    return pd.read_csv(out / "metrics.csv")["loss"].tolist()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    finetune(_spec_file(folder), folder / "out", progress=False)
    return folder / "out"


def test_a_run_writes_metrics_checkpoints_and_evaluations(uninterrupted):
    metrics = pd.read_csv(uninterrupted / "metrics.csv")
    assert list(metrics.columns[:6]) == ["step", "epoch", "loss", "lr", "images_per_second", "tokens_per_image"]
    assert metrics["step"].tolist() == list(range(1, 9))
    assert metrics["epoch"].tolist() == [0] * 6 + [1] * 2  # 48 images, batch 8: 6 steps an epoch
    assert metrics["lr"].iloc[-1] < metrics["lr"].max()  # the cosine schedule decays
    assert (metrics["tokens_per_image"] < 17).all()  # APT tokens: fewer than 1 + 16 uniform ones at 64 px
    evaluations = pd.read_csv(uninterrupted / "evaluation.csv", keep_default_na=False)
    assert evaluations["step"].tolist() == [0, 0, 4, 4, 8, 8]
    assert evaluations["tokenization"].tolist() == ["uniform", "apt"] * 3
    last = read_checkpoint(uninterrupted / "checkpoints" / "last.pt")
    assert last["step"] == 8 and last["class_names"][0] == "flat" and last["model"] == "synthetic"
    assert (uninterrupted / "checkpoints" / "best.pt").is_file()
    assert load_finetune_spec(uninterrupted / "spec.yaml").steps == 8


def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    spec = _spec_file(tmp_path)
    out = tmp_path / "out"
    # a real SIGKILL right after step 5 (the last checkpoint is step 4's), in a process of its own
    script = textwrap.dedent(f"""
        import os, signal
        from apt_research.training import run
        step = run.Run._step
        def killing_step(self, *args):
            step(self, *args)
            if self.step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
        run.Run._step = killing_step
        run.finetune({str(spec)!r}, {str(out)!r}, progress=False)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert len(_losses(out)) == 5 and read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    assert main(["finetune", str(spec), "--out", str(out), "--resume"]) == 0
    assert _losses(out) == pytest.approx(_losses(uninterrupted), rel=1e-6)
    assert pd.read_csv(out / "evaluation.csv").equals(pd.read_csv(uninterrupted / "evaluation.csv")) or \
        pd.read_csv(out / "evaluation.csv")["top1"].tolist() == pd.read_csv(uninterrupted / "evaluation.csv")[
            "top1"].tolist()


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, uninterrupted):
    spec = _spec_file(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run([*torchrun, "-m", "apt_research.finetune", str(spec), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _losses(tmp_path / "out") == pytest.approx(_losses(uninterrupted), rel=1e-5)
    assert read_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["step"] == 8
    # rank 0's refusal of --out (a run is there, no --resume) stops every rank with its one line, said once,
    # instead of leaving rank 1 at a collective until gloo breaks the connection
    refused = subprocess.run([*torchrun, "-m", "apt_research.finetune", str(spec), "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode != 0
    assert refused.stderr.count("apt-research finetune: error:") == 1, refused.stderr[-3000:]
    assert "add --resume" in refused.stderr
    assert "Connection" not in refused.stderr and "gloo" not in refused.stderr.lower(), refused.stderr[-3000:]
    # the first rank torchrun saw end stopped with the refusal's exit code 2 (not a gloo error's 1, not a signal)
    assert "exitcode  : 2" in refused.stderr.split("Root Cause")[-1], refused.stderr[-3000:]


def test_resume_with_another_spec_is_refused_naming_the_difference(tmp_path, uninterrupted, capsys):
    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    assert main(["finetune", str(_spec_file(tmp_path, lr=1e-3)), "--out", str(out), "--resume"]) == 2
    assert "lr: 0.0005 -> 0.001" in capsys.readouterr().err
    assert main(["finetune", str(_spec_file(tmp_path)), "--out", str(out)]) == 2
    assert "add --resume" in capsys.readouterr().err


def test_a_nan_loss_stops_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    from apt_research.training import run

    real, calls = run.F.cross_entropy, []

    def cross_entropy(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(run.F, "cross_entropy", cross_entropy)
    with pytest.raises(TrainingStopped, match=r"the loss is nan at step 3 .* last good checkpoint \(step 2\)"):
        finetune(_spec_file(tmp_path), tmp_path / "out", progress=False)
    assert read_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["step"] == 2


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from apt_research.models import checkpoints

    real, calls = torch.save, []

    def save(content, path):
        calls.append(path)
        if sum(Path(call).name.startswith(".last.pt") for call in calls) == 2:  # step 4's last.pt
            with open(path, "wb") as file:
                file.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        real(content, path)

    monkeypatch.setattr(checkpoints.torch, "save", save)
    with pytest.raises(TrainingStopped, match="No space left on device.*previous checkpoint"):
        finetune(_spec_file(tmp_path, eval_every=100), tmp_path / "out", progress=False)
    kept = read_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")
    assert kept["step"] == 2
    assert not [path for path in (tmp_path / "out" / "checkpoints").iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize("changes, message", [
    ({"stepz": 3}, "stepz: Extra inputs are not permitted"),
    ({"epochs": 2}, "give steps or epochs, not both"),
    ({"thresholds": [5.0, 4.0]}, "thresholds must have num_scales - 1 = 1 entries"),
    ({"lr": "fast"}, "lr: Input should be a valid number"),
    ({"batch_size": 100}, "batch_size 100 is larger than the training data (48 images)"),
    ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ({"method": "nosuch"}, "the spec cannot be set up"),
])
def test_bad_specs_name_the_key(tmp_path, capsys, changes, message):
    assert main(["finetune", str(_spec_file(tmp_path, **changes)), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_a_spec_that_is_not_plain_data_is_refused(tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text("model: !!python/object/apply:os.system ['echo hacked']\ntrain_data: synthetic\n")
    assert main(["finetune", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "model" in capsys.readouterr().err


def test_a_rank_killed_stops_the_run_and_resume_continues(tmp_path, uninterrupted):
    """torchrun stops every process when one dies and names it; --resume continues from the last checkpoint."""
    import signal
    import time

    spec = _spec_file(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # rank 1 kills itself with SIGKILL after step 3 (rank 0 has checkpointed step 2)
    script = textwrap.dedent(f"""
        import os, signal, sys
        from apt_research.training import run
        step = run.Run._step
        def killing_step(self, *args):
            step(self, *args)
            if self.step == 3 and self.processes.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        run.Run._step = killing_step
        sys.exit(run.main_for_cli({str(spec)!r}, {str(out)!r}, False))
    """)
    (tmp_path / "killing.py").write_text(script)
    died = subprocess.run([*torchrun, str(tmp_path / "killing.py")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert died.returncode != 0
    assert "Signal 9 (SIGKILL)" in died.stderr and "rank" in died.stderr
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
    resumed = subprocess.run([*torchrun, "-m", "apt_research.finetune", str(spec), "--out", str(out), "--resume"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _losses(out) == pytest.approx(_losses(uninterrupted), rel=1e-5)


def test_docs_parameter_table_is_the_spec():
    from apt_research.training.spec import parameter_table

    assert parameter_table() in (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()


def test_the_uniform_control_trains_the_model_on_uniform_tokens(tmp_path):
    finetune(_spec_file(tmp_path, tokenization="uniform", steps=2, val_data=None), tmp_path / "out", progress=False)
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert (metrics["tokens_per_image"] == 17).all()  # 1 + (64 / 16)**2: every base patch, nothing merged
    state = read_checkpoint(tmp_path / "out" / "checkpoints" / "last.pt")["state"]
    assert not state["merge_proj.weight"].any()  # the merge is not trained on uniform tokens


def test_best_holds_weights_that_were_evaluated_and_a_checkpoint_starts_a_new_run(tmp_path, uninterrupted):
    best = read_checkpoint(uninterrupted / "checkpoints" / "best.pt")
    assert best["step"] in (0, 4, 8)  # evaluations ran at steps 0, 4 and 8 (checkpoints at 2, 4, 6, 8)
    # a finetune checkpoint (with its merge layers) is a starting point for another run
    spec = _spec_file(tmp_path, checkpoint=str(uninterrupted / "checkpoints" / "last.pt"), steps=2, val_data=None)
    assert main(["finetune", str(spec), "--out", str(tmp_path / "out")]) == 0


def _class_folder(root, broken=()):
    from PIL import Image

    from apt_research.datasets import synthetic_image

    for number, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(4):
            Image.fromarray(synthetic_image(["shapes", "strokes"][number], 64, index)).save(root / name / f"{index}.png")
    for name in broken:
        (root / name).write_bytes(b"")
    return root


def test_unreadable_training_images_are_replaced_and_counted(tmp_path):
    data = _class_folder(tmp_path / "data", broken=["cat/0.png", "dog/1.png"])
    spec = _spec_file(tmp_path, train_data=str(data), val_data=None, train_images=None, batch_size=1, steps=8,
                      augmentation=None, random_erasing=0.0)
    assert main(["finetune", str(spec), "--out", str(tmp_path / "out")]) == 0
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert len(metrics) == 8 and metrics["skipped"].sum() == 2


def test_resume_refuses_changed_classes_and_a_second_run_at_once(tmp_path, capsys):
    from filelock import FileLock

    data = _class_folder(tmp_path / "data")
    spec = _spec_file(tmp_path, train_data=str(data), val_data=None, train_images=None, batch_size=2, steps=2,
                      augmentation=None, random_erasing=0.0)
    out = tmp_path / "out"
    assert main(["finetune", str(spec), "--out", str(out)]) == 0
    (data / "dog").rename(data / "ant")
    assert main(["finetune", str(spec), "--out", str(out), "--resume"]) == 2
    assert "classes changed since the run began: gone ['dog']; new ['ant']" in capsys.readouterr().err
    with FileLock(str(out / ".finetune.lock")):
        assert main(["finetune", str(spec), "--out", str(out), "--resume"]) == 2
    assert "another finetune is running in it" in capsys.readouterr().err
