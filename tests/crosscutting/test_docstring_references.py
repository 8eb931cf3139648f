"""Every ``apt_research.…`` name that the library's docstrings and comments cite exists."""

import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "apt_research"
REFERENCE = re.compile(r"``(apt_research(?:\.[A-Za-z_]\w*)+)``")


def _resolve(dotted: str):
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as error:
            if error.name and not error.name.startswith("apt_research"):
                pytest.skip(f"{dotted} needs the optional package {error.name}")
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


REFERENCES = sorted({(path.relative_to(PACKAGE.parent).as_posix(), match)
                     for path in PACKAGE.rglob("*.py") for match in REFERENCE.findall(path.read_text())})


def test_the_library_cites_names():
    assert REFERENCES, "no ``apt_research.…`` reference found: the pattern no longer matches the sources"


@pytest.mark.parametrize("path,dotted", REFERENCES)
def test_cited_names_exist(path, dotted):
    try:
        _resolve(dotted)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{path} cites {dotted}, which does not exist ({error})")
