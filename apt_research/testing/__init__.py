"""Slow, obvious implementations that the fast paths are checked and timed against.

``reference``: the spec written as explicit loops, one patch at a time (what the tests compare the
library's maps, masks and patch groups with). ``baselines``: what the benchmark suite times the library
against: the per-patch ``torch.histc`` loop, the batched one-hot histograms, and the reference APT
repository's own code path (its data loader's maps, selection and grouping). Neither is used by the library;
both import without a GPU.
"""
