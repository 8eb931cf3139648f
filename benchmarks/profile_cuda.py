"""Where the tokenizer's time goes on CUDA: torch.profiler over PatchTokenizer.forward (224x224, batch 256).

    python -m benchmarks.profile_cuda     # from the repository root, on a CUDA machine
"""

import torch
from torch.profiler import ProfilerActivity, profile

from apt_research import PatchTokenizer
from benchmarks.common import MEAN, STD, normalised, real_batch, timed

images = normalised(real_batch(224, 256, "cuda"))
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
