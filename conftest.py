"""Doctests of the optional models extra (timm) are collected only where timm is installed."""

import importlib.util


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # a module set to None in sys.modules: treated as absent
        return False


collect_ignore = [] if _installed("timm") else ["apt_research/models/timm_vit.py"]
