"""Trust by design: one mechanism per class of failure, each checked by a generated test (hypothesis).

- Specs are only data (``plain.py``): any plain document loads as itself; any other YAML tag or a
  duplicate key, anywhere, is refused with its key path; nothing but plain data reaches a notebook.
- Folders we own (``_io.claim`` / ``require_owned``): a folder with anything in it and no marker of ours is
  refused, and nothing in it changes.
- No symbolic link we did not make (``_io.check_no_links``): a link planted at any place of a sweep folder
  stops every write, rename and delete, and what it points at is untouched.
- Exact identities (``records.threshold_label``, ``parameters._distinct``): distinct settings keep distinct
  labels; a setting given twice is refused.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apt_research import _io
from apt_research.cli import main
from apt_research.sweep.lock import DirectoryLock
from apt_research.sweep.parameters import ParameterError, validate_params
from apt_research.plain import NotPlainData, check_plain, load_yaml
from apt_research.sweep.records import threshold_label
from apt_research.sweep.spec import SpecError, load_spec

KEYS = st.text(st.characters(codec="utf-8", categories=("L", "N")), min_size=1, max_size=8)
SCALARS = st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
PLAIN = st.recursive(SCALARS, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(KEYS, children, max_size=4), max_leaves=20)
NOT_PLAIN = ["!!binary aGVsbG8=", "!!set {a, b}", "2024-01-01", "!!python/object/apply:os.system [ls]",
             "!!timestamp 2001-12-14t21:59:43.10-05:00", "!!omap [{a: 1}]", "!!pairs [[a, 1]]", "!!float .nan",
             ".inf", "!!python/name:os.system"]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _paths(value, prefix=""):
    """Every key path of a plain value (as ``plain`` names them) with its container."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            yield path
            yield from _paths(item, path)


@given(PLAIN)
@SETTINGS
def test_any_plain_document_loads_as_itself(value):
    assert load_yaml(yaml.safe_dump(value), "doc") == value
    assert json.loads(json.dumps(check_plain(value, "doc"))) == value


@given(st.dictionaries(KEYS, PLAIN, min_size=1, max_size=3), st.data(), st.sampled_from(NOT_PLAIN))
@SETTINGS
def test_any_other_tag_anywhere_is_refused_with_its_key_path(document, data, tag):
    path = data.draw(st.sampled_from(list(_paths(document))))
    target = document
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = "__MARK__"
    text = yaml.safe_dump(document).replace("__MARK__", tag)
    if text == yaml.safe_dump(document):  # the mark sat in a key: nothing to test
        return
    with pytest.raises(NotPlainData, match=f"key '{_escape(path)}'"):
        load_yaml(text, "doc")


@given(st.dictionaries(KEYS, SCALARS, min_size=1, max_size=4), st.data())
@SETTINGS
def test_a_duplicate_key_is_refused(document, data):
    key = data.draw(st.sampled_from(sorted(document)))
    text = yaml.safe_dump(document, allow_unicode=True) + f"{json.dumps(key, ensure_ascii=False)}: 1\n"
    with pytest.raises(NotPlainData, match="appears twice"):
        load_yaml(text, "doc")


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_spec_that_ran_code_is_refused(tmp_path, capsys):
    """Issue 17's exploit: bytes whose repr breaks out of papermill's injected cell."""
    import base64

    payload = base64.b64encode(b'"+__import__("os").system("touch PWNED")+"').decode()
    spec = tmp_path / "c.yaml"
    spec.write_text(f"name: c\nfixed:\n  dataset: synthetic\n  dataset_options: {{count: 1, size: !!binary {payload}}}\n")
    with pytest.raises(SpecError, match=r"key 'fixed.dataset_options.size'.*tag:yaml.org,2002:binary"):
        load_spec(spec)
    assert main(["sweep", str(spec), "--dry-run", "--out", str(tmp_path / "oc")]) == 2
    assert "binary" in capsys.readouterr().err and not (tmp_path / "PWNED").exists()
    with pytest.raises(SpecError, match="appears twice"):
        load_spec_text(tmp_path, "name: d\nfixed: {bins: 256, bins: 512}\n")


def load_spec_text(tmp_path: Path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return load_spec(path)


NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\0"), min_size=1, max_size=12).filter(
    lambda name: name not in (".", "..", _io.MARKER))


@given(st.lists(st.tuples(NAMES, st.booleans()), min_size=1, max_size=5, unique_by=lambda entry: entry[0]))
@SETTINGS
def test_a_folder_with_anything_and_no_marker_is_refused_and_left_as_it_was(tmp_path_factory, entries):
    folder = tmp_path_factory.mktemp("theirs")
    for name, is_folder in entries:
        if is_folder:
            (folder / name).mkdir()
            (folder / name / "inside.txt").write_text("theirs")
        else:
            (folder / name).write_text("theirs")
    before = sorted((str(path), path.stat().st_mtime_ns) for path in folder.rglob("*"))
    with pytest.raises(_io.OwnershipError, match="--out expects a new or empty directory"):
        _io.claim(folder, "sweep")
    with pytest.raises(_io.OwnershipError, match="made by apt-research"):
        _io.require_owned(folder, "sweep", "SWEEP_DIR")
    with pytest.raises(_io.OwnershipError):
        _io.remove_partial_files(folder, ["."])
    assert sorted((str(path), path.stat().st_mtime_ns) for path in folder.rglob("*")) == before


def test_new_empty_and_marked_folders_are_ours(tmp_path):
    assert _io.claim(tmp_path / "new" / "sweep", "sweep") == tmp_path / "new" / "sweep"
    assert _io.read_marker(tmp_path / "new" / "sweep")["kind"] == "sweep"
    (tmp_path / "empty").mkdir()
    _io.claim(tmp_path / "empty", "sweep")
    _io.require_owned(tmp_path / "empty", "sweep", "SWEEP_DIR")
    with pytest.raises(_io.OwnershipError, match="expects a visualize directory"):
        _io.require_owned(tmp_path / "empty", "visualize", "--out")


def test_report_and_sweep_refuse_folders_they_do_not_own(tmp_path, capsys):
    """Issue 17: ``report`` on a folder that merely has runs/ deleted the user's summary and figures."""
    project = tmp_path / "proj"
    (project / "runs").mkdir(parents=True)
    (project / "figures").mkdir()
    for name in ("summary.csv", "summary.parquet", "report.md", "figures/scale_mix.png"):
        (project / name).write_text("mine")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "spec.yaml").write_text("# my notes\nname: exp\nfixed: {dataset: synthetic}\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    (home / ".x.tmp-1").write_text("mine")
    commands = [["report", str(project)], ["sweep", str(tmp_path / "exp" / "spec.yaml"), "--out", str(tmp_path / "exp")],
                ["sweep", str(tmp_path / "exp" / "spec.yaml"), "--out", str(project), "--dry-run"],
                ["sweep", str(tmp_path / "exp" / "spec.yaml"), "--out", str(home), "--resume"]]
    before = sorted((str(p), p.read_text()) for p in tmp_path.rglob("*") if p.is_file())
    for command in commands:
        assert main(command) == 2, command
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "apt-research" in err[0], (command, err)
    assert sorted((str(p), p.read_text()) for p in tmp_path.rglob("*") if p.is_file()) == before


PLACES = ["runs", "runs/0123456789ab", "runs/0123456789ab/shards", "figures", "cache", ".sweep.lock",
          "runs/0123456789ab/status.json", "figures/scale_mix.png", "summary.csv"]


@given(st.sampled_from(PLACES))
@SETTINGS
def test_a_planted_link_stops_every_write_and_leaves_its_target_alone(tmp_path_factory, place):
    root = tmp_path_factory.mktemp("received")
    sweep = _io.claim(root / "sweep", "sweep")
    outside = root / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("mine")
    (outside / "shards").mkdir()
    (outside / "shards" / "keep.parquet").write_text("mine")
    link = sweep / place
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside / ("notes.txt" if "." in place.rsplit("/", 1)[-1] else ""))
    writes = [lambda: _io.write_atomic(sweep / "runs/0123456789ab/status.json", "{}"),
              lambda: _io.write_atomic(sweep / "figures/scale_mix.png", b"png"),
              lambda: _io.write_atomic(sweep / "summary.csv", "a"),
              lambda: _io.remove_tree(sweep / "runs/0123456789ab/shards"),
              lambda: _io.remove_file(sweep / "runs/0123456789ab/status.json"),
              lambda: _io.make_dirs(sweep / "cache"),
              lambda: DirectoryLock(sweep).__enter__()]
    refused = 0
    for write in writes:
        try:
            write()
        except _io.UnsafePathError:
            refused += 1
    assert refused >= 1
    assert (outside / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in outside.rglob("*")) == ["keep.parquet", "notes.txt", "shards"]


def test_the_owned_root_may_itself_be_a_link_the_user_made(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "results").symlink_to(tmp_path / "data")
    sweep = _io.claim(tmp_path / "results", "sweep")
    _io.write_atomic(sweep / "runs" / "a" / "status.json", "{}")
    assert (tmp_path / "data" / "runs" / "a" / "status.json").read_text() == "{}"


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=2, max_size=6, unique=True))
@SETTINGS
def test_distinct_settings_keep_distinct_labels_that_read_back_exactly(values):
    labels = [threshold_label([value]) for value in values]
    assert len(set(labels)) == len(values)
    assert [float(label) for label in labels] == [float(value) for value in values]


def test_close_thresholds_are_three_rows_and_a_repeated_setting_is_refused():
    assert len({threshold_label([t]) for t in (7.0, 7.000001, 7.0000004)}) == 3
    with pytest.raises(ParameterError, match=r"lists the setting \[6.5\] twice"):
        validate_params({"num_scales": 2, "thresholds": [[6.5], [6.5]]}, "spec")
    with pytest.raises(ParameterError, match="lists the setting 0.5 twice"):
        validate_params({"num_scales": 2, "target_retention": [0.5, 0.5]}, "spec")
    assert not math.isnan(float(threshold_label([1e-300])))
    assert os.path.sep not in threshold_label([1.5, 2.0])


# The reproductions, run as a user would (in-process executor: the same code path as the notebook's).

def _sweep_of(folder, out, spec=None, resume=False):
    from apt_research.sweep.runner import run_sweep
    from sweep_helpers import InProcessExecutor

    spec = spec or {"name": "t", "fixed": {"dataset": str(folder), "image_size": 32, "num_scales": 2,
                                           "thresholds": [[5.0]]}}
    sweep = load_spec(spec)
    return run_sweep(sweep, out, resume=resume, progress=False, executor=InProcessExecutor())


def _photo(path, seed, size=40):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_resume_notices_an_image_replaced_with_the_same_size_and_time(tmp_path, capsys):
    """Issue 17: ``cp -p`` of another image of the same byte size: the cache was hit and --resume kept the run."""
    from apt_research.sweep.report import build_report

    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png", 0)
    out = tmp_path / "out"
    _sweep_of(folder, out)
    first = build_report(out).records["tokens_total"].tolist()
    stat = (folder / "a.png").stat()
    flat = tmp_path / "flat.png"
    from PIL import Image
    import numpy as np

    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(flat)
    replacement = flat.read_bytes()
    replacement += b"\0" * (stat.st_size - len(replacement))  # a PNG ignores bytes after its end
    (folder / "a.png").write_bytes(replacement)
    os.utime(folder / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (folder / "a.png").stat().st_size == stat.st_size
    statuses = _sweep_of(folder, out, resume=True)
    assert not any(status.get("skipped") for status in statuses)
    captured = capsys.readouterr()
    assert "images changed" in captured.out + captured.err
    second = build_report(out).records["tokens_total"].tolist()
    assert second[0] < first[0]  # the flat image keeps fewer tokens: its own maps, not the cached noise


def test_a_report_shows_exactly_the_runs_of_its_spec(tmp_path):
    """Issue 17: an edited spec swept into the same --out counted the earlier spec's runs too."""
    from apt_research.sweep.report import build_report

    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a.png", 0)
    out = tmp_path / "out"
    fixed = {"dataset": str(folder), "image_size": 32, "num_scales": 2}
    _sweep_of(folder, out, {"name": "t", "fixed": fixed, "grid": {"thresholds": [[[5.0]], [[6.0]]]}})
    _sweep_of(folder, out, {"name": "t", "fixed": fixed, "grid": {"thresholds": [[[7.0]]]}})
    report = build_report(out)
    assert sorted(report.records["thresholds"].unique()) == ["7"]
    assert len(list((out / "runs").iterdir())) == 3


def test_a_sweep_inside_its_data_folder_does_not_read_its_own_output(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(2):
        _photo(folder / f"{seed}.png", seed)
    _sweep_of(folder, folder / "results")
    (folder / "results" / "figures").mkdir(exist_ok=True)
    _photo(folder / "results" / "figures" / "planted.png", 9)
    from apt_research.datasets import folder_dataset

    assert [path.name for path in folder_dataset(folder).items] == ["0.png", "1.png"]


def test_names_with_bars_and_line_breaks_stay_in_their_cells():
    import mistune
    import pandas as pd

    from apt_research.sweep.report_html import markdown_table

    table = pd.DataFrame({"image": ["a|b", "c\n| d | e |", "plain"], "value": [1.0, 2.0, 3.0]})
    html = mistune.create_markdown(plugins=["table"])(markdown_table(table))
    assert html.count("<tr>") == 4 and html.count("<table>") == 1 and "a|b" in html


def test_a_scorer_returning_nan_is_refused():
    import torch

    from apt_research import compute_importance_maps, register_scorer
    from apt_research.scorers import SCORERS

    def nan_scorer(images, patch_size, num_scales):
        from apt_research.entropy import compute_patch_entropy_batched

        maps = compute_patch_entropy_batched(images, patch_size, num_scales, backend="torch")
        maps[patch_size][0, 0, 0] = float("nan")
        return maps

    register_scorer("nan_for_test")(nan_scorer)
    try:
        with pytest.raises(ValueError, match="returned NaN scores in maps\\[16\\] of image 0"):
            compute_importance_maps(torch.rand(1, 3, 32, 32) * 255, "nan_for_test", 16, 2)
    finally:
        SCORERS.pop("nan_for_test", None)


def test_bounds_and_empty_data_sets_are_refused_up_front(tmp_path):
    (tmp_path / "empty").mkdir()
    for options, message in (({"dataset": "synthetic", "dataset_options": {"count": 100000000000}}, "count must be"),
                             ({"dataset": "synthetic", "dataset_options": {"count": -5}}, "count must be"),
                             ({"dataset": str(tmp_path / "empty")}, "holds no image")):
        with pytest.raises(ParameterError, match=message):
            validate_params(options, "spec")


def test_visualize_keeps_another_image_of_the_same_name_and_clears_its_own_leftovers(tmp_path, capsys):
    for sub in ("sub1", "sub2"):
        (tmp_path / sub).mkdir()
        _photo(tmp_path / sub / "same.png", len(sub), size=64)
    out = tmp_path / "vis"
    size = ["--image-size", "64"]
    assert main(["visualize", str(tmp_path / "sub1" / "same.png"), "--out", str(out), *size]) == 0
    before = (out / "same" / "summary.json").read_text()
    assert main(["visualize", str(tmp_path / "sub2" / "same.png"), "--out", str(out), *size]) == 2
    assert "holds the visualisation of" in capsys.readouterr().err
    assert (out / "same" / "summary.json").read_text() == before
    (out / ".same.tmp-abcd1234" / "01_heatmaps").mkdir(parents=True)  # what a killed run leaves: marked first
    _io.write_marker(out / ".same.tmp-abcd1234", "visualize")
    (out / ".same.tmp-mine").mkdir()  # a user's own folder of that shape: not ours, kept
    assert main(["visualize", str(tmp_path / "sub1" / "same.png"), "--out", str(out), *size]) == 0
    assert sorted(path.name for path in out.iterdir()) == [".same.tmp-mine", "same"]
    assert main(["visualize", "", "--out", str(out)]) == 2 and "got ''" in capsys.readouterr().err


def test_a_scheduler_address_of_another_kind_of_server_is_refused_within_the_timeout():
    """Issue 17: an HTTP server at the --scheduler address held the sweep past 120 s."""
    import http.server
    import threading

    from apt_research.sweep.cluster import ClusterError, connect

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ClusterError, match="no Dask scheduler answered .* within 2 s"):
            connect(f"tcp://127.0.0.1:{server.server_port}", timeout=2)
    finally:
        server.shutdown()


def test_images_the_tokenizer_cannot_mean_are_named():
    """Issue 17: sparse and meta tensors gave torch's errors, raw 0-255 pixels gave wrong tokens silently."""
    import torch

    from apt_research import PatchTokenizer

    def tokenizer():
        return PatchTokenizer(2, 16, 32, [5.0], mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    with pytest.raises(TypeError, match="must be a dense tensor"):
        tokenizer()(torch.rand(1, 3, 32, 32).to_sparse())
    with pytest.raises(ValueError, match="meta device"):
        tokenizer().compute_importance_maps(torch.empty(1, 3, 32, 32, device="meta"))
    with pytest.warns(UserWarning, match="look like raw pixels"):
        tokenizer()(torch.rand(1, 3, 32, 32) * 255)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer()(torch.rand(1, 3, 32, 32) * 4 - 2)


def test_a_timm_model_refuses_integer_images():
    timm = pytest.importorskip("timm")
    import torch

    from apt_research.models import from_timm

    model = from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1).eval(), 2, [5.0])
    with pytest.raises(TypeError, match="floating-point images normalised as the model expects"):
        model((torch.rand(1, 3, 224, 224) * 255).to(torch.uint8))


def test_a_link_to_another_marked_folder_is_still_a_link(tmp_path):
    """From a hostile test: runs/<id> -> the user's other sweep passed, since that folder carries our marker too."""
    sweep = _io.claim(tmp_path / "s1", "sweep")
    other = _io.claim(tmp_path / "other", "sweep")
    (other / "keep.txt").write_text("mine")
    (sweep / "runs").mkdir()
    (sweep / "runs" / "0123456789ab").symlink_to(other)
    (sweep / "figures").symlink_to(other)
    for write in (lambda: _io.write_atomic(sweep / "runs" / "0123456789ab" / "status.json", "{}"),
                  lambda: _io.remove_file(sweep / "runs" / "0123456789ab" / "keep.txt"),
                  lambda: _io.write_atomic(sweep / "figures" / "a.png", b"png")):
        with pytest.raises(_io.UnsafePathError):
            write()
    assert sorted(path.name for path in other.iterdir()) == [_io.MARKER, "keep.txt"]


def test_nesting_and_self_reference_are_refused_in_one_line(tmp_path):
    for text in ("a: " + "[" * 5000 + "]" * 5000 + "\n", "description: &a [*a]\n"):
        with pytest.raises(NotPlainData, match="nested too deeply"):
            load_yaml(text, "doc")


def test_visualize_output_in_a_data_folder_is_not_read_and_a_users_hidden_folder_is_kept(tmp_path, capsys):
    from apt_research.datasets import folder_dataset

    data = tmp_path / "imgs"
    data.mkdir()
    for seed in range(2):
        _photo(data / f"p{seed}.png", seed, size=64)
    (data / ".p0.tmp-mine").mkdir()
    (data / ".p0.tmp-mine" / "summary.json").write_text('{"mine": 1}')
    for _ in range(2):
        assert main(["visualize", str(data), "--out", str(data / "vis"), "--image-size", "64"]) == 0
    assert [path.name for path in folder_dataset(data).items] == ["p0.png", "p1.png"]
    assert (tmp_path / "imgs" / ".p0.tmp-mine" / "summary.json").read_text() == '{"mine": 1}'
