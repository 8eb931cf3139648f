"""The fine-tuning loop: a timm ViT on APT (or uniform) tokens, one process or many, resumable.

Writes into ``--out`` (a folder it creates and marks, kind ``finetune``):

* ``spec.yaml``: the validated spec; ``--resume`` refuses another spec, naming the difference.
* ``metrics.csv``: one row per optimizer step (``step``, ``epoch``, ``loss`` (mean over processes),
  ``lr``, ``images_per_second``, ``tokens_per_image``, ``skipped``), rewritten atomically each step.
* ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (by validation top-1 of the trained tokenization),
  atomic: a kill or a full disk half way leaves the previous one whole.
* ``evaluation.csv``: top-1/top-5 of the uniform and the APT tokens on ``val_data`` before training
  (step 0: APT zero-shot) and at each evaluation.
* ``provenance.json``: package versions, git commit, device, processes.

A resumed run equals an uninterrupted one: the checkpoint holds the weights, the optimizer, the
schedule, every process's random state and the metric rows so far; the data order is a function
of (seed, epoch) and each image's augmentation of (seed, epoch, index), so the resumed steps see
the same batches. The same holds for N processes against one with the same global batch (each
process takes every N-th image of the epoch's order, and DistributedDataParallel averages the
gradients), except where drop path draws random numbers per process.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
import random
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from .._io import claim, make_dirs, remove_partial_files, require_owned, write_atomic
from ..errors import NotPlainData, OwnershipError, SpecError, UsageError
from ..models.accuracy import (
    autocast_for, calibrated_thresholds, default_thresholds, evaluate_tokenizations, model_options_for,
)
from ..models.checkpoints import build_model, load_weights, read_checkpoint, require_model, save_checkpoint
from ..models.classes import SYNSET, class_mapping, data_classes, imagenet_synsets, labelled_data, labelled_loader
from ..models.timm_vit import from_timm
from .distributed import Processes, start
from .spec import FinetuneSpec, load_finetune_spec

KIND = "finetune"
METRIC_COLUMNS = ("step", "epoch", "loss", "lr", "images_per_second", "tokens_per_image", "skipped")


class TrainingStopped(RuntimeError):
    """The run stopped on a bad value or a failed write; the last good checkpoint is kept (named in the message)."""


class _Sampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch (a resumed run)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return super().__len__() - self.skip


def set_drop_path(model, rate: float) -> None:
    """Stochastic depth ``rate`` on the last block, linearly less on earlier ones (timm's rule), per block."""
    from timm.layers import DropPath

    blocks = list(model.blocks)
    for index, block in enumerate(blocks):
        block_rate = rate * index / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(block, name):
                setattr(block, name, DropPath(block_rate) if block_rate > 0 else torch.nn.Identity())


def _parameter_groups(net, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases, norms (1-d) and the model's ``no_weight_decay`` embeddings (timm)."""
    inner = getattr(net, "model", net)
    prefix = "model." if inner is not net else ""
    skip = {prefix + name for name in (inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else ())}
    decay, plain = [], []
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            (plain if parameter.ndim <= 1 or name in skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _initial_head_size(initial: dict | None) -> int | None:
    """The number of classes of the starting weights' head (``None`` without starting weights or head)."""
    if initial is None:
        return None
    if "class_names" in initial:
        return len(initial["class_names"])
    head = initial.get("state", {}).get("head.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else None


def _shown_change(before, after) -> str:
    gone = [name for name in before if name not in after]
    new = [name for name in after if name not in before]
    parts = [f"gone {gone[:5]}" if gone else "", f"new {new[:5]}" if new else ""]
    return "; ".join(part for part in parts if part) or "the same names in another order"


def _random_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_random_state(state: dict) -> None:
    random.setstate(_as_python_state(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_python_state(value):
    """``random.getstate()`` after a round trip through a checkpoint (lists back to tuples)."""
    version, internal, gauss = value
    return version, tuple(internal), gauss


class Run:
    """One fine-tuning run in ``out`` (see the module notes)."""

    def __init__(self, spec: FinetuneSpec, out: Path, resume: bool, processes: Processes, progress: bool = True):
        self.spec, self.out, self.resume, self.processes = spec, Path(out), resume, processes
        self.progress = progress and processes.main
        self.metrics: list[dict] = []
        self.evaluations: list[dict] = []
        self.best: float | None = None
        self.saved_step = 0  # the step of checkpoints/last.pt (0: none written yet)
        self.step = 0

    # -- setting up ---------------------------------------------------------------------------------------------
    def prepare_folder(self) -> dict | None:
        """Check ``out`` (rank 0, after ``_lock`` claimed it or found it ours) for a new run or ``--resume``;
        returns the checkpoint to resume from."""
        last = self.out / "checkpoints" / "last.pt"
        if self.resume:
            if not (self.out / "spec.yaml").is_file():
                raise UsageError(f"--resume: {str(self.out)!r} has no spec.yaml (the run's spec, written when it "
                                 "began), so nothing says what it ran; start a new --out")
            saved = load_finetune_spec(self.out / "spec.yaml", base=Path("/"))
            changed = saved.differences(self.spec)
            if changed:
                raise UsageError(f"--resume: the spec differs from the run in {str(self.out)!r}: "
                                 + "; ".join(changed) + " (resume with the same spec, or start a new --out)")
            remove_partial_files(self.out, [".", "checkpoints"])  # a checkpoint write a kill cut short
            try:
                return read_checkpoint(last, "--out's checkpoint") if last.is_file() else None
            except UsageError as error:
                raise UsageError(f"{error}; the run cannot resume from it (checkpoints/best.pt, if there, holds the "
                                 "best weights evaluated: start a new --out from it with the spec key checkpoint)"
                                 ) from None
        if last.is_file() or (self.out / "metrics.csv").is_file():
            raise UsageError(f"--out {str(self.out)!r} holds a fine-tuning run: add --resume to continue it, or "
                             "choose another folder")
        write_atomic(self.out / "spec.yaml", _spec_yaml(self.spec))
        return None

    def build(self, checkpoint: dict | None) -> None:
        spec, device = self.spec, self.processes.device
        torch.manual_seed(spec.seed)
        initial = read_checkpoint(spec.checkpoint, "checkpoint") if spec.checkpoint else None
        if initial is not None:
            require_model(initial, spec.model, "checkpoint", "model")
        names = data_classes(spec.train_data, "train_data")
        options = model_options_for(spec.model, spec.image_size, spec.model_options)
        model = build_model(spec.model, spec.pretrained and initial is None, options)
        head = _initial_head_size(initial)
        if head is not None and model.num_classes != head:
            model.reset_classifier(head)  # the starting weights' head, replaced below if the data differ
        thresholds = spec.thresholds if spec.thresholds is not None else (
            [0.0] * (spec.num_scales - 1) if spec.target_retention is not None else default_thresholds(
                spec.num_scales, "thresholds"))
        self.apt = from_timm(model, spec.num_scales, thresholds, spec.method, **spec.method_options)
        if initial is not None:
            load_weights(self.apt, initial, spec.model, "checkpoint")
        synsets = all(SYNSET.fullmatch(name) for name in names) and model.num_classes == 1000
        if not synsets and model.num_classes != len(names):
            model.reset_classifier(len(names))  # the reference's match_head_shape
        self.class_names = imagenet_synsets() if synsets else names
        if checkpoint is not None and list(checkpoint["class_names"]) != self.class_names:
            raise UsageError(f"--resume: the training data's classes changed since the run began: "
                             f"{_shown_change(checkpoint['class_names'], self.class_names)}")
        self.mapping = class_mapping(names, model.num_classes, self.class_names, "train_data")
        set_drop_path(model, spec.drop_path)
        size = model.patch_embed.img_size[0]
        self.train_set = labelled_data(spec.train_data, self.mapping, model, self.apt.tokenizer, size, training=True,
                                       limit=spec.train_images, seed=spec.seed, augmentation=spec.augmentation,
                                       random_erasing=spec.random_erasing, argument="train_data")
        if spec.target_retention is not None and checkpoint is None:  # on the images as evaluated, not augmented
            plain = labelled_data(spec.train_data, self.mapping, model, self.apt.tokenizer, size, limit=64,
                                  argument="train_data")
            self.apt.set_thresholds(calibrated_thresholds(plain, spec.num_scales, spec.target_retention))
        self.val_set = None
        if spec.val_data is not None:
            val_names = data_classes(spec.val_data, "val_data")
            val_mapping = class_mapping(val_names, model.num_classes, self.class_names, "val_data")
            self.val_set = labelled_data(spec.val_data, val_mapping, model, self.apt.tokenizer, size,
                                         limit=spec.val_images, seed=spec.seed, argument="val_data")
        self.apt.to(device)
        self.net = self.apt if spec.tokenization == "apt" else self.apt.model
        world = self.processes.world
        if spec.batch_size % world:
            raise UsageError(f"batch_size {spec.batch_size} must be a multiple of the number of processes ({world})")
        self.local_batch = spec.batch_size // world
        self.sampler = _Sampler(self.train_set, num_replicas=world, rank=self.processes.rank, shuffle=True,
                                seed=spec.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise UsageError(f"batch_size {spec.batch_size} is larger than the training data "
                             f"({len(self.train_set)} images)")
        self.total_steps = spec.steps or (spec.epochs or 1) * self.steps_per_epoch
        warmup = spec.warmup_steps if spec.warmup_steps is not None else self.total_steps // 10
        self.optimizer = torch.optim.AdamW(_parameter_groups(self.net, spec.weight_decay), lr=spec.lr,
                                           betas=(0.9, 0.999))
        from timm.scheduler import CosineLRScheduler

        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=self.total_steps, lr_min=spec.min_lr,
                                           warmup_t=warmup, warmup_lr_init=spec.min_lr, t_in_epochs=False)
        precision = spec.precision if spec.precision != "auto" else ("16-mixed" if device.type == "cuda" else "32")
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        if checkpoint is not None:
            self._restore(checkpoint)
        self.model = self.net
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.net, device_ids=[device] if device.type == "cuda" else None)

    def _restore(self, checkpoint: dict) -> None:
        self.apt.load_state_dict(checkpoint["state"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.apt.set_thresholds(checkpoint["thresholds"])
        self.step = checkpoint["step"]
        self.metrics = list(checkpoint["metrics"])
        self.evaluations = list(checkpoint["evaluations"])
        self.best = checkpoint["best"]
        self.saved_step = self.step
        states = checkpoint["random"]
        _set_random_state(states[self.processes.rank % len(states)])

    # -- the loop -----------------------------------------------------------------------------------------------
    def train(self) -> None:
        from tqdm.auto import tqdm

        spec = self.spec
        eval_every = spec.eval_every or self.steps_per_epoch
        checkpoint_every = spec.checkpoint_every or self.steps_per_epoch
        if self.step == 0:
            self._evaluate(0)  # step 0: the model before fine-tuning (APT zero-shot)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"fine-tuning ({spec.tokenization} tokens)",
                   disable=not self.progress)
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            self.sampler.set_epoch(epoch)
            self.train_set.set_epoch(epoch)
            self.sampler.skip = (self.step % self.steps_per_epoch) * self.local_batch
            loader = labelled_loader(self.train_set, self.apt.tokenizer, self.local_batch, spec.workers,
                                     sampler=self.sampler, drop_last=True)
            self.net.train()
            began = time.perf_counter()
            for batch in loader:
                self._step(batch, epoch, began)
                bar.update()
                bar.set_postfix(loss=f"{self.metrics[-1]['loss']:.4f}")
                if self.step % eval_every == 0 or self.step == self.total_steps:
                    self._evaluate(epoch)
                if self.step % checkpoint_every == 0 or self.step == self.total_steps:
                    self._checkpoint("last.pt")
                if self.step >= self.total_steps or self.step % self.steps_per_epoch == 0:
                    break
                began = time.perf_counter()
        bar.close()

    def _step(self, batch, epoch: int, began: float) -> None:
        device = self.processes.device
        batch = batch.to(device)
        inputs = batch.tokens if self.spec.tokenization == "apt" else batch.tokens["images"]
        with autocast_for(device, self.precision):
            logits = self.model(inputs)
            loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.spec.label_smoothing)
        mean_loss = self.processes.mean(loss.item())
        if not math.isfinite(mean_loss):
            kept = (f"the last good checkpoint (step {self.saved_step}) is kept in "
                    f"{self.out / 'checkpoints' / 'last.pt'}" if self.saved_step else
                    "no checkpoint had been written yet")
            raise TrainingStopped(
                f"the loss is {mean_loss} at step {self.step + 1} (epoch {epoch}): stopped; {kept}; lower lr or "
                "check the data, then start a new --out")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        images = self.processes.sum(len(batch.labels))
        tokens = self.processes.sum(sum(batch.tokens["seqlens"]) if self.spec.tokenization == "apt" else
                                    len(batch.labels) * (self.apt.model.patch_embed.num_patches
                                                         + self.apt.model.num_prefix_tokens))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        self.metrics.append({
            "step": self.step, "epoch": epoch, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_second": images / seconds, "tokens_per_image": tokens / max(images, 1),
            "skipped": int(self.processes.sum(batch.skipped)),
        })
        if self.processes.main:
            write_atomic(self.out / "metrics.csv", pd.DataFrame(self.metrics, columns=METRIC_COLUMNS).to_csv(
                index=False))

    def _evaluate(self, epoch: int) -> None:
        if self.val_set is None:
            return
        improved = False
        if self.processes.main:
            loader = labelled_loader(self.val_set, self.apt.tokenizer, self.local_batch, self.spec.workers)
            rows = evaluate_tokenizations(self.apt, loader, self.processes.device, self.precision,
                                          progress=False)
            for row in rows:
                self.evaluations.append({"step": self.step, "epoch": epoch, **row})
            frame = pd.DataFrame(self.evaluations)
            write_atomic(self.out / "evaluation.csv", frame.to_csv(index=False))
            trained = next(row for row in rows if row["tokenization"] == self.spec.tokenization)
            improved = self.best is None or trained["top1"] > self.best
            if improved:
                self.best = trained["top1"]
        self.net.train()
        improved = self.processes.broadcast(improved)
        self.best = self.processes.broadcast(self.best)
        if improved:
            self._checkpoint("best.pt")  # the weights that were just evaluated

    def _checkpoint(self, name: str) -> None:
        """Write ``checkpoints/NAME`` (``last.pt`` or ``best.pt``) on rank 0; every process takes part."""
        states = self.processes.gather(_random_state())
        if self.processes.main:
            content = {
                "model": self.spec.model, "model_options": model_options_for(
                    self.spec.model, self.spec.image_size, self.spec.model_options),
                "class_names": self.class_names, "num_scales": self.spec.num_scales,
                "thresholds": list(self.apt.tokenizer.thresholds), "tokenization": self.spec.tokenization,
                "state": self.apt.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "metrics": self.metrics, "evaluations": self.evaluations, "best": self.best,
                "random": states, "spec": self.spec.model_dump(),
            }
            folder = make_dirs(self.out / "checkpoints")
            try:
                save_checkpoint(folder / name, content)
            except OSError as error:
                raise TrainingStopped(
                    f"could not write {name} at step {self.step}: {error}; the previous checkpoint "
                    f"(step {self.saved_step}) in {folder} is intact: free space, then --resume") from error
        if name == "last.pt":
            self.saved_step = self.step
        self.processes.barrier()


def _spec_yaml(spec: FinetuneSpec) -> str:
    import yaml

    return yaml.safe_dump(spec.model_dump(), sort_keys=False)


class RankZeroRefused(UsageError):
    """Under torchrun, on every rank: rank 0 refused ``--out`` (and said why on the console)."""


def finetune(spec, out, resume: bool = False, progress: bool = True) -> Path:
    """Fine-tune as ``spec`` (a ``FinetuneSpec``, a dict or a YAML path) says into ``out``; returns ``out``.

    Under ``torchrun`` every process calls this; only rank 0 writes.
    """
    spec = spec if isinstance(spec, FinetuneSpec) else load_finetune_spec(spec)
    lock = None
    with _setting_up():
        processes = start(spec.device)
    try:
        run = Run(spec, Path(out), resume, processes, progress)
        refusal = None
        if processes.main:
            try:
                lock = _lock(Path(out), resume)
                checkpoint = run.prepare_folder()
            except (UsageError, OwnershipError, SpecError, NotPlainData) as error:
                refusal = error
        # rank 0's refusal of --out reaches every process, which all stop with it (no rank is left waiting for
        # a collective that never comes, and torchrun shows the one line instead of a broken connection). Under
        # torchrun rank 0 says it before the others learn of it: once they exit, torchrun may end rank 0.
        if refusal is not None and processes.world == 1:
            raise refusal
        if refusal is not None:
            print(f"apt-research finetune: error: {refusal}", file=sys.stderr, flush=True)
        message = processes.broadcast(None if refusal is None else str(refusal))
        if message is not None:
            raise RankZeroRefused(message) from refusal
        if not processes.main and resume:
            checkpoint = read_checkpoint(Path(out) / "checkpoints" / "last.pt", "--out's checkpoint") if (
                Path(out) / "checkpoints" / "last.pt").is_file() else None
        elif not processes.main:
            checkpoint = None
        with _setting_up():
            run.build(checkpoint)
        if run.step >= run.total_steps:  # --resume of a finished run: its files stay as they are
            return Path(out)
        if processes.main:
            from ..provenance import provenance

            info = {**provenance(str(processes.device)), "processes": processes.world}
            write_atomic(Path(out) / "provenance.json", json.dumps(info, indent=2) + "\n")
        run.train()
    finally:
        processes.close()
        if lock is not None:
            lock.release()
    return Path(out)


def _lock(out: Path, resume: bool):
    """One run at a time in ``out``: a lock held while this process runs (released by the system if it dies).

    ``out`` is claimed first (a new run) or must be ours already (``--resume``)."""
    from filelock import FileLock, Timeout

    if resume:
        require_owned(out, KIND, "--out")
    else:
        claim(out, KIND)
    lock = FileLock(str(out / ".finetune.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UsageError(f"--out {str(out)!r}: another finetune is running in it; wait for it to end, or choose "
                         "another folder") from None
    return lock


@contextmanager
def _setting_up():
    """What a spec value makes a library refuse while the run is set up becomes one line naming it."""
    try:
        yield
    except (UsageError, OwnershipError, SpecError, NotPlainData):
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError, KeyError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"the spec cannot be set up: {type(error).__name__}: {message}") from error


def main_for_cli(spec_path: str, out: str, resume: bool) -> int:
    """``apt-research finetune`` and ``python -m apt_research.finetune``: 0, or 1 with a one-line message."""
    try:
        finetune(spec_path, out, resume)
    except (SpecError, NotPlainData, UsageError, OwnershipError) as error:
        if not isinstance(error, RankZeroRefused):  # rank 0 said that one already
            print(f"apt-research finetune: error: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as error:
        print(f"apt-research finetune: stopped: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("apt-research finetune: interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a folder without write permission, a link planted in our folder
        print(f"apt-research finetune: error: {error}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, once
        print(f"wrote {out}")
    return 0
