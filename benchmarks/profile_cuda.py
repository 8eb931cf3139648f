"""Where the tokenizer's time goes on CUDA: torch.profiler over PatchTokenizer.forward (224x224, batch 256)."""

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import MEAN, STD, real_batch, timed  # noqa: E402

from apt_research import PatchTokenizer  # noqa: E402

pixels = real_batch(224, 256, "cuda")
images = (pixels / 255 - torch.tensor(MEAN, device="cuda").view(1, 3, 1, 1)) / torch.tensor(STD, device="cuda").view(1, 3, 1, 1)
tokenizer = PatchTokenizer(3, 16, 224, [5.75, 4.0], MEAN, STD).cuda()
maps = tokenizer.compute_importance_maps(images)
masks = tokenizer.construct_masks(maps)[0]
for name, call in [("forward", lambda: tokenizer(images)),
                   ("compute_importance_maps", lambda: tokenizer.compute_importance_maps(images)),
                   ("construct_masks", lambda: tokenizer.construct_masks(maps)),
                   ("construct_patch_groups", lambda: tokenizer.construct_patch_groups(images, masks))]:
    seconds, _ = timed(call, repeats=10, device="cuda")
    print(f"{name}: {1000 * seconds:.3f} ms")
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(3):
        tokenizer(images)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
