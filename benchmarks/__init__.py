"""The benchmark suite: our tokenizer against the baselines it carries, measured in one process.

Run from the repository root: ``python -m benchmarks.run`` (``python3 run.py bench`` does that). The suite is
shaped like the code it measures: ``sections/`` has one module per section, each measuring and returning its
records (``report.Result``); ``sections.SECTIONS`` is the registry; ``report`` renders records as markdown;
``run`` is the command line. ``common`` holds what several sections share (the inputs, the checks of like
with like). The baselines themselves are ``apt_research.testing.baselines`` (the tests check them too).
"""
