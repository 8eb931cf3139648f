"""Atomic writes: the target holds either its old content or the whole new one, and no temporary is left."""

import pytest

from apt_research._io import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_atomic(target, "old")
    write_atomic(target, "néw".encode())
    assert target.read_text() == "néw"
    assert [p.name for p in target.parent.iterdir()] == ["report.md"]


def test_failed_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "records.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as temporary:
            assert temporary.parent == tmp_path and temporary.suffix == ".parquet" and temporary != target
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["records.parquet"]


def test_keep_partial_keeps_what_was_written_when_interrupted(tmp_path):
    target = tmp_path / "run.ipynb"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, keep_partial=True) as temporary:
            temporary.write_text("cells so far")
            raise KeyboardInterrupt
    assert target.read_text() == "cells so far"
    assert [p.name for p in tmp_path.iterdir()] == ["run.ipynb"]


def test_written_files_get_the_mode_open_would_give_not_private(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "report.html"
    write_atomic(target, "<html></html>")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 != 0o600
