"""from_timm on a CUDA device: equal to timm when nothing merges, equal to the CPU path when merging, bf16 and speed.

Run on a lent GPU machine: ``PYTHONPATH=$PWD python3 benchmarks/device_models.py``.
"""

import time

import timm
import torch
import torch.nn.functional as F
from skimage import data

from apt_research.models import from_timm


def real_images(size, count):
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass"]
    batch = []
    for name in names[:count]:
        array = torch.from_numpy(getattr(data, name)()).float()
        array = array[..., None].expand(*array.shape, 3) if array.dim() == 2 else array[..., :3]
        batch.append(F.interpolate(array.permute(2, 0, 1)[None], size=(size, size), mode="bilinear"))
    return torch.cat(batch)


def normalised(pixels, model):
    config = timm.data.resolve_data_config({}, model=model)
    return (pixels / 255 - torch.tensor(config["mean"])[:, None, None]) / torch.tensor(config["std"])[:, None, None]


def relative(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def timed(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - began) / repeats * 1e3


print("torch", torch.__version__, "timm", timm.__version__, torch.cuda.get_device_name())
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for name in ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "vit_base_patch16_clip_224", "vit_small_patch14_dinov2"]:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=224).eval()
    images = normalised(real_images(224, 4), model)
    apt_cpu = from_timm(model, 3, [5.5, 4.0])
    with torch.no_grad():
        cpu_merged = apt_cpu(images)
        model.cuda()
        apt = from_timm(model, 3, [0.0, 0.0])
        gpu = images.cuda()
        nothing = relative(apt(gpu), model(gpu))
        apt.set_thresholds([5.5, 4.0])
        tokens = apt.tokenize(gpu)
        merged = relative(apt(tokens).cpu(), cpu_merged)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = relative(apt(tokens).cpu(), cpu_merged)
    print(f"{name}: nothing merged vs timm (CUDA fp32) {nothing:.2e}; merged CUDA vs CPU {merged:.2e}; "
          f"bf16 autocast vs CPU fp32 {bf16:.2e}; retention {tokens['retained_frac']:.3f}")

torch.backends.cuda.matmul.allow_tf32 = True
model = timm.create_model("vit_base_patch16_224", pretrained=False).eval().cuda()
images = normalised(real_images(224, 8), model).repeat(32, 1, 1, 1).cuda()
apt = from_timm(model, 3, [5.5, 4.0])
with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
    tokens = apt.tokenize(images)
    uniform = timed(lambda: model(images))
    packed = timed(lambda: apt(tokens))
    whole = timed(lambda: apt(images))
print(f"vit_base_patch16_224 bf16 batch 256: uniform {uniform:.2f} ms, APT forward on tokens {packed:.2f} ms, "
      f"APT with tokenization {whole:.2f} ms, retention {tokens['retained_frac']:.3f}")
