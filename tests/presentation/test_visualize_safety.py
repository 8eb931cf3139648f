"""``apt-research visualize`` with hostile and colliding names: nothing outside the output is touched.

Every test runs in a sandbox: a parent directory full of files, a working directory (the current
directory) with files beside the images, and an ``--out`` that already holds a file of the user's.
Each test ends by checking that every one of those files still exists with its content.
"""

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from apt_research.cli import main
from apt_research.presentation.visualize import WRITTEN_BY, foreign_content, output_names

HOSTILE = ["...png", "..png", "-rf.png", "a b.png", ".hidden.png", "_hidden.png", "café.png",
           "line\nbreak.png", "back\\slash.png", "x" * 200 + ".png", "Photo.PNG", "photo.png", "photo.jpg"]
DOT_NAMES = {"...png": "__", "..png": "_"}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The working directory, with user files around it recorded; ``sandbox.check()`` asserts they survived."""
    parent = tmp_path / "parent"
    work = parent / "work"
    (work / "photos").mkdir(parents=True)
    (work / "out").mkdir()
    files = {
        parent / "thesis.tex": b"\\documentclass{article}",
        parent / "raw.bin": bytes(range(256)),
        parent / "nested" / "deep.txt": b"deep",
        work / "notes.txt": b"lab notes",
        work / "photos" / "caption.txt": b"caption",
        work / "out" / "mine.txt": b"the user's own file inside --out",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    monkeypatch.chdir(work)

    class Sandbox:
        root = parent

        @staticmethod
        def check():
            for path, content in files.items():
                assert path.is_file() and path.read_bytes() == content, f"{path} was removed or changed"

    yield Sandbox
    Sandbox.check()


def _image(path, seed=0, size=(96, 80)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _summaries(out):
    return {path.parent.name: json.loads(path.read_text()) for path in out.glob("*/summary.json")}


def _visualize(*argv):
    return main(["visualize", *map(str, argv), "--image-size", "64", "--resize", "resize"])


def _entries(directory):
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*"))


@pytest.mark.parametrize("name", ["...png", "..png"])
def test_dot_names_with_the_default_out_stay_inside_it(sandbox, name):
    image = _image(sandbox.root / "work" / "photos" / name)
    before = set(os.listdir(sandbox.root)), set(os.listdir(sandbox.root / "work"))
    assert _visualize(image.relative_to(sandbox.root / "work")) == 0
    assert (set(os.listdir(sandbox.root)), set(os.listdir(sandbox.root / "work"))) == (
        before[0], before[1] | {"visualizations"})
    [(directory, summary)] = _summaries(sandbox.root / "work" / "visualizations").items()
    assert directory == DOT_NAMES[name]
    assert summary["source"] == str(image) and summary["written_by"] == WRITTEN_BY


@pytest.mark.parametrize("name", ["...png", "..png"])
def test_dot_names_never_replace_out_or_its_parent(sandbox, name):
    image = _image(sandbox.root / "work" / "photos" / name)
    out = sandbox.root / "work" / "out"
    assert _visualize(image, "--out", out) == 0
    assert sorted(os.listdir(out)) == sorted(["mine.txt", DOT_NAMES[name]])


def test_hostile_and_colliding_names_in_a_folder_get_distinct_safe_directories(sandbox):
    folder = sandbox.root / "work" / "photos"
    (folder / "a").mkdir()
    images = [_image(folder / name, seed) for seed, name in enumerate(HOSTILE)]
    images += [_image(folder / "a" / "b.png", 90), _image(folder / "a__b.png", 91)]
    out = sandbox.root / "work" / "out"
    assert _visualize(folder, "--out", out) == 0
    summaries = _summaries(out)
    assert sorted(summary["source"] for summary in summaries.values()) == sorted(map(str, images))
    assert len({name.casefold() for name in summaries}) == len(images)
    for name in summaries:
        assert name not in ("", ".", "..") and not name.startswith((".", "-")) and "/" not in name
        assert "\\" not in name and "\n" not in name and len(name) <= 100
    assert set(os.listdir(out)) == set(summaries) | {"mine.txt"}, "no temporary directory is left"
    first = _entries(out)
    assert _visualize(folder, "--out", out) == 0, "a second run replaces its own output"
    assert _entries(out) == first, "the names are the same on every run"


def test_summary_names_its_source_for_bundled_images(sandbox):
    assert _visualize("skimage:camera", "--out", "out") == 0
    assert _summaries(sandbox.root / "work" / "out")["camera"]["source"] == "skimage.data.camera"


@pytest.mark.parametrize("case", ["no summary", "summary of another tool", "our summary and a user's file",
                                  "a link to a user's folder", "a file"])
def test_an_existing_directory_not_ours_is_refused_before_any_work(sandbox, capsys, case):
    out = sandbox.root / "work" / "out"
    (out.parent / "elsewhere").mkdir()
    (out.parent / "elsewhere" / "kept.txt").write_text("kept")
    target = out / "photo"
    target.mkdir()
    {
        "no summary": lambda: (target / "results.csv").write_text("a,b"),
        "summary of another tool": lambda: (target / "summary.json").write_text('{"tool": "mine"}'),
        "our summary and a user's file": lambda: (
            (target / "summary.json").write_text(json.dumps({"written_by": WRITTEN_BY})),
            (target / "04_reconstruction").mkdir(),
            (target / "04_reconstruction" / "draft.docx").write_text("draft"),
        ),
        "a link to a user's folder": lambda: (target.rmdir(), target.symlink_to(out.parent / "elsewhere")),
        "a file": lambda: (target.rmdir(), target.write_text("a file named photo")),
    }[case]()
    folder = sandbox.root / "work" / "photos"
    _image(folder / "photo.png")
    _image(folder / "zebra.png")
    before = {path: path.read_bytes() for path in out.parent.rglob("*") if path.is_file()}
    assert _visualize(folder, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out: will not replace" in err[0] and str(target) in err[0], err
    assert {path: path.read_bytes() for path in out.parent.rglob("*") if path.is_file()} == before
    assert not (out / "zebra").exists(), "refused before any image was written"
    assert foreign_content(target) is not None


def test_a_file_added_to_our_output_makes_it_the_users(sandbox):
    out = sandbox.root / "work" / "out"
    assert _visualize("skimage:camera", "--out", out) == 0
    assert foreign_content(out / "camera") is None
    (out / "camera" / "01_heatmaps" / "annotated.png").write_bytes(b"user")
    assert _visualize("skimage:camera", "--out", out) == 2
    assert (out / "camera" / "01_heatmaps" / "annotated.png").read_bytes() == b"user"


UNSAFE_KEYS = ["", ".", "..", "...", "/", "/etc/passwd", "../../x.png", "a/../../b.png", "C:\\x.png", "~",
               "-", ".png", "..png", "...png", "a/b.png", "a__b.png", "a/b", "photo.jpg", "photo.png",
               "PHOTO.png", " ", "\x00", "x" * 300, "x" * 300 + "y"]


def _assert_safe(names):
    assert len({name.casefold() for name in names.values()}) == len(names)
    for key, name in names.items():
        assert name and name not in (".", "..") and not name.startswith((".", "-")) and not os.path.isabs(name), key
        assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) <= 100, key


def test_output_names_are_safe_distinct_and_deterministic():
    names = output_names(UNSAFE_KEYS)
    _assert_safe(names)
    assert output_names(UNSAFE_KEYS[::-1]) == names, "independent of order"
    assert names["a/b.png"] != names["a__b.png"] and names["photo.jpg"] != names["photo.png"]
    assert output_names(["cat.jpg", "cats/a.png"]) == {"cat.jpg": "cat", "cats/a.png": "cats__a"}


@given(st.lists(st.text(min_size=0, max_size=40), unique=True, max_size=12))
def test_output_names_property(keys):
    _assert_safe(output_names(keys))
