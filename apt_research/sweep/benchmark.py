"""What one more threshold point costs next to a cold sweep point (the harness's cache benchmark)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .configuration import run_configuration
from .notebook import execute_run
from .parameters import validate_params


def measure_threshold_point_cost(points: int = 4) -> dict:
    """What one more threshold point costs next to a cold point (bundled images, 224, 3 scales, 512 bins).

    ``cold_sweep_s``: one configuration run as a sweep runs it (papermill, fresh kernel, empty cache);
    ``cold_in_process_s``: the same configuration in this process (imports warm, empty cache);
    ``extra_point_s``: each further threshold setting on the cached maps (selection, reconstruction,
    PSNR/SSIM, records).
    """
    params = validate_params({"dataset": "skimage", "image_size": 224, "num_scales": 3, "bins": 512,
                           "thresholds": [[5.75, 4.0]]}, "benchmark")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        status = execute_run("cold", params, scratch / "sweep", "benchmark", scratch / "sweep" / "cache")
        if status["state"] != "finished":
            raise RuntimeError(f"benchmark run failed: {status.get('error')}")
        cold_sweep = status["duration_s"]
        run_configuration(params, scratch, None)  # warm the imports of this process
        start = time.perf_counter()
        run_configuration(params, scratch, scratch / "cache")
        cold = time.perf_counter() - start
        start = time.perf_counter()
        run_configuration(params, scratch, scratch / "cache")
        one_cached = time.perf_counter() - start
        settings = [[5.0 + 0.25 * i, 3.5 + 0.25 * i] for i in range(points)]
        start = time.perf_counter()
        run_configuration({**params, "thresholds": [[5.75, 4.0]] + settings}, scratch, scratch / "cache")
        extra = (time.perf_counter() - start - one_cached) / points
    return {"cold_sweep_s": cold_sweep, "cold_in_process_s": cold, "cached_run_s": one_cached,
            "extra_point_s": extra, "ratio": extra / cold_sweep, "ratio_in_process": extra / cold}
