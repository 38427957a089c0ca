"""The KEBench ``evaluate`` module folder, importable as ``metric`` so the library and the editors
share its scoring (``from metric.kebench import score_predictions``)."""
