"""The ablation harness: YAML sweep specs, papermill runs with cached maps, reports.

``parameters`` declares every sweep parameter once (type, default, validator, doc, whether it changes
the maps); ``spec`` validates and expands a sweep; ``runner.run_sweep`` runs a whole sweep (lock,
resume, progress) through an ``executor`` (by default ``NotebookExecutor``: papermill, parallel, with
``notebook`` executing one run); ``configuration`` runs one configuration in process (inside the run
notebook), from ``maps`` (cached per key by ``cache``), ``thresholds`` (given or calibrated), ``records``
and ``speed``; ``layout`` says where everything is written, ``lock`` and ``provenance`` guard and describe
a run; ``report`` aggregates records into tables and figures; ``benchmark`` measures the cache's worth.
"""
