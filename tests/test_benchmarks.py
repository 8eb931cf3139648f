"""The benchmark suite's own checks, on tiny inputs: its baselines agree with our maps and sequences.

The timings are not checked here (speed is the suite's business, not the tests'); what is checked is
that each table row it prints compares like with like.
"""

import importlib.util
from pathlib import Path

import pytest

# benchmarks/run.py under its own name (the repository root has a run.py too).
_spec = importlib.util.spec_from_file_location(
    "apt_benchmarks_run", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_entropy_rows_agree_with_both_baselines():
    results = {}
    table = bench.entropy_section(results, rows=[(48, 2, 3, 64), (40, 2, 2, 256)])
    assert [r["max_diff"] <= 1e-5 for r in results["entropy"]] == [True, True]
    assert all(r["one_hot_ms"] is not None for r in results["entropy"])  # (b) fits: it ran and agreed
    assert table.count("| yes") == 2


def test_tokenizer_row_compares_the_same_sequences():
    results = {}
    table = bench.tokenizer_section(results, size=64, batch=8)
    assert results["tokenizer"]["same"] is True
    assert "same sequences: yes" in table


def test_launch_section_counts_the_fused_forward_kernels():
    pytest.importorskip("triton")
    results = {}
    bench.launch_section(results, batch=4, repeats=3)
    assert results["launch"]["launches_per_forward"] == 7
    assert results["launch"]["tokens"] > 4
