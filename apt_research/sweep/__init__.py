"""The ablation harness: YAML sweep specs, papermill runs with cached maps, reports.

``spec`` validates and expands a sweep; ``runner`` runs one configuration (inside
the run notebook) and a whole sweep (papermill, parallel, resumable); ``cache``
stores importance maps per key; ``report`` aggregates records into tables and figures.
"""
