"""The benchmark sections, one module each, and their registry.

Each module's ``run`` measures and returns a ``benchmarks.report.Result`` (its records, the tables that show
them, notes); none formats markdown. ``SECTIONS`` lists them in the order a full run takes them; ``INPUTS``
names the sections whose records a section is computed from (passed as keyword arguments by ``run_section``).
"""

from __future__ import annotations

from typing import Callable

from ..report import Result
from . import cache, cuda, entropy, launch, loader, one_image, scaling, startup, tokenizer, training, vit

SECTIONS: dict[str, Callable[..., Result]] = {
    "entropy": entropy.run,
    "scaling": scaling.run,
    "tokenizer": tokenizer.run,
    "one_image": one_image.run,
    "loader": loader.run,
    "cache": cache.run,
    "vit": vit.run,
    "training": training.run,
    "launch": launch.run,
    "cuda": cuda.run,
    "startup": startup.run,
}
INPUTS: dict[str, tuple[str, ...]] = {"scaling": ("entropy",)}


def run_section(name: str, records: dict) -> Result:
    """Section ``name`` measured now, given the ``records`` (by section name) of those run before it."""
    inputs = {need: records[need] for need in INPUTS.get(name, ()) if need in records}
    return SECTIONS[name](**inputs)
