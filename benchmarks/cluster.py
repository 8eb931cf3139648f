"""Sweeps on a Dask cluster: per-image cost by stage, one vs two workers, scheduler overhead, projection.

    .venv/bin/python benchmarks/cluster.py                    # prints markdown, writes results/cluster.json
    .venv/bin/python benchmarks/cluster.py --images 64 --shard-size 8

1. Per-image cost of one configuration (224 px, 3 scales, 512 bins, one threshold setting), stage by
   stage, on JPEG files of the bundled images (decode, resize, maps, selection, records,
   reconstruction and SSIM), in this process on one core.
2. The same configuration's shards as Dask tasks on a ``LocalCluster`` of one, then two, single-thread
   worker processes: images per second, and the ratio.
3. The scheduler's overhead per task: many no-op tasks through the same cluster.
4. From these: ImageNet-1k val (50,000) and train (1,281,167) on 8, 64 and 512 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# One thread per process (what a Dask worker started with --nthreads 1 gets from its nanny), so that
# a stage's cost is one core's and two workers are two cores' worth.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from apt_research.analysis import entropy_statistics, fidelity, reconstruct, token_record  # noqa: E402
from apt_research.models.costmodel import vit_flops  # noqa: E402
from apt_research.datasets import folder_dataset, resize_image, skimage_dataset  # noqa: E402
from apt_research.scorers import compute_importance_maps  # noqa: E402
from apt_research.selection import select_patches_by_threshold  # noqa: E402
from apt_research.sweep.cluster import shard_task  # noqa: E402
from apt_research.sweep.shards import plan  # noqa: E402
from apt_research.sweep.parameters import validate_params  # noqa: E402

HERE = Path(__file__).resolve().parent
STAGES = ("decode", "resize", "maps", "selection", "records", "reconstruction_ssim")
IMAGENET = {"ImageNet-1k val": 50_000, "ImageNet-1k train": 1_281_167}
WORKERS = (8, 64, 512)
JPEG_KB = 110  # mean ImageNet-1k JPEG size, for the storage bound


def jpeg_folder(folder: Path, count: int) -> Path:
    """``count`` JPEG files (quality 90) of the bundled images, cycled: what a folder data set decodes."""
    from PIL import Image

    source = skimage_dataset()
    for i in range(count):
        array, _ = source.loader(source.items[i % len(source.items)])
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def stage_costs(folder: Path, params: dict) -> dict[str, float]:
    """Seconds per image of each stage, on every file of ``folder``, in this process."""
    source = folder_dataset(folder)
    totals = dict.fromkeys(STAGES, 0.0)

    def timed_stage(stage, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        totals[stage] += time.perf_counter() - start
        return result

    options = {"bins": params["bins"]}
    compute_importance_maps(torch.zeros(1, 3, 224, 224), "entropy", 16, 3, **options)  # compile the kernels
    for item in source.items:
        array, meta = timed_stage("decode", source.loader, item)
        pixels = torch.from_numpy(array).permute(2, 0, 1).float()
        image = timed_stage("resize", resize_image, pixels, params["resize"], params["image_size"], 16)
        maps = timed_stage("maps", compute_importance_maps, image[None], "entropy", 16, 3, **options)
        masks = timed_stage("selection", select_patches_by_threshold, maps, params["thresholds"][0])

        def records():
            row = {**entropy_statistics(maps, 0), **token_record(masks, 0)}
            return [float(vit_flops(row["tokens_total"] + 1, model, 16)) for model in ("vit_s", "vit_b")]

        timed_stage("records", records)
        timed_stage("reconstruction_ssim", lambda: fidelity(image, reconstruct(image[None], masks, 16)[0]))
    return {stage: total / len(source.items) for stage, total in totals.items()}


def cluster_throughput(params: dict, workers: int, repeats: int = 3) -> dict:
    """Images per second of the configuration's shards on ``workers`` single-thread worker processes (best of
    ``repeats``), the scheduler's overhead per task there, and the records' bytes per row in memory."""
    from distributed import Client, LocalCluster, wait

    shards = plan(params)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        warm = [client.submit(shard_task, params, shards[0], "bench", "warm", pure=False,
                              workers=[address]) for address in client.scheduler_info()["workers"]]
        wait(warm)  # imports and kernel compilation on every worker, outside the timing
        seconds, cpu_before = [], sum(client.run(cpu_seconds).values())
        for _ in range(repeats):
            start = time.perf_counter()
            futures = [client.submit(shard_task, params, shard, "bench", "run", pure=False) for shard in shards]
            records = pd.concat([future.result()[0] for future in futures])
            seconds.append(time.perf_counter() - start)
        cpu = sum(client.run(cpu_seconds).values()) - cpu_before
        images = len(records) // len(params["thresholds"])
        overhead = scheduler_overhead(client)
    return {"workers": workers, "images": images, "shards": len(shards), "seconds": min(seconds),
            "images_per_s": images / min(seconds), "cpu_s_per_image": cpu / (images * repeats),
            "scheduler_s_per_task": overhead,
            "record_bytes": records.memory_usage(deep=True).sum() / len(records)}


def cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used: run on each worker by ``Client.run``."""
    import psutil

    return sum(psutil.Process().cpu_times()[:2])


def scheduler_overhead(client, tasks: int = 2000) -> float:
    """Seconds per task of no-op tasks (submission, scheduling, result) through ``client``'s cluster."""
    from distributed import wait

    start = time.perf_counter()
    wait(client.map(int, range(tasks), pure=False))
    return (time.perf_counter() - start) / tasks


def projection(per_image_s: float, scheduler_s: float, shard_size: int) -> list[dict]:
    """Minutes for each data set on each worker count: compute, scheduler and storage bounds.

    compute: ``images * per_image_s / workers``; scheduler: tasks (``images / shard_size``) times the
    measured seconds per task (one scheduler serves them one after another); storage: the JPEG bytes
    every worker reads at 100 MB/s each, capped by a 2 GB/s shared file system.
    """
    rows = []
    for name, images in IMAGENET.items():
        for workers in WORKERS:
            compute = images * per_image_s / workers
            scheduler = images / shard_size * scheduler_s
            storage = images * JPEG_KB * 1e3 / min(workers * 100e6, 2e9)
            bound = max(("compute", compute), ("scheduler", scheduler), ("storage", storage), key=lambda x: x[1])
            rows.append({"data set": name, "workers": workers, "compute_min": compute / 60,
                         "scheduler_min": scheduler / 60, "storage_min": storage / 60, "bound": bound[0],
                         "estimate_min": bound[1] / 60})
    return rows


def markdown(result: dict) -> str:
    costs, runs = result["stage_s_per_image"], result["throughput"]
    total = sum(costs.values())
    lines = [f"Machine: {result['machine']}; configuration: 224 px, 3 scales, 512 bins, one threshold setting; "
             f"{result['images']} JPEG images, shards of {result['shard_size']}.", "",
             "| stage | ms / image | share |", "|---|---:|---:|"]
    lines += [f"| {stage} | {1e3 * cost:.2f} | {cost / total:.0%} |" for stage, cost in costs.items()]
    lines += [f"| **total** | **{1e3 * total:.2f}** | |", "",
              "| workers | images | shards | seconds (best of 3) | images/s | worker CPU ms / image | scheduler ms/task |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['images']} | {r['shards']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} | "
              f"{1e3 * r['cpu_s_per_image']:.1f} | {1e3 * r['scheduler_s_per_task']:.2f} |" for r in runs]
    lines += ["", f"Two workers vs one: {runs[1]['images_per_s'] / runs[0]['images_per_s']:.2f}x. Projection: "
              f"{1e3 * result['per_image_s_one_worker']:.1f} CPU ms per image (one worker, end to end; a worker is one core), "
              f"shards of {result['projection_shard_size']} images.", "",
              "| data set | workers | compute min | scheduler min | storage min | bound | estimate min |",
              "|---|---:|---:|---:|---:|---|---:|"]
    lines += [f"| {r['data set']} | {r['workers']} | {r['compute_min']:.1f} | {r['scheduler_min']:.2f} | "
              f"{r['storage_min']:.2f} | {r['bound']} | {r['estimate_min']:.1f} |" for r in result["projection"]]
    scheduler = max(r["scheduler_s_per_task"] for r in runs)
    lines += ["", f"Scheduler: {1e3 * scheduler:.1f} ms per task measured, so one image per task would cost "
              f"{1.281e6 * scheduler / 60:.0f} min of scheduler time for ImageNet-1k train whatever the worker count. "
              f"Records: {runs[0]['record_bytes']:.0f} bytes per row in memory, "
              f"{1.281e6 * runs[0]['record_bytes'] / 1e6:.0f} MB per threshold setting of train sent to the client."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48, help="JPEG images measured (bundled images, cycled)")
    parser.add_argument("--shard-size", type=int, default=8, help="images per task on the cluster")
    parser.add_argument("--project-shard-size", type=int, default=256, help="shard size of the projection")
    parser.add_argument("--out", default=str(HERE / "results" / "cluster.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = jpeg_folder(Path(scratch), args.images)
        params = validate_params({"dataset": str(folder), "image_size": 224, "num_scales": 3, "bins": 512,
                               "thresholds": [[5.75, 4.0]], "shard_size": args.shard_size}, "benchmark")
        costs = stage_costs(folder, params)
        runs = [cluster_throughput(params, workers) for workers in (1, 2)]
    per_image = runs[0]["cpu_s_per_image"]  # core-seconds: what a worker of its own core would take
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
                         f"{os.getloadavg()[0]:.1f} at the end",
              "images": args.images, "shard_size": args.shard_size, "stage_s_per_image": costs,
              "throughput": runs, "per_image_s_one_worker": per_image,
              "projection_shard_size": args.project_shard_size,
              "projection": projection(per_image, max(r["scheduler_s_per_task"] for r in runs),
                                       args.project_shard_size)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
