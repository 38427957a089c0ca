"""The hub-hosted KEBench leaderboard.

A submission is a ``kebench run`` directory plus a short card, opened as a pull request on a
*requests* dataset. The scoring service re-scores every pending pull request with the metric
(self-reported numbers are never trusted), merges or rejects it, and writes the *results* dataset
that the Gradio Space (``app.py``) shows, plus ``.eval_results`` files on model pages.
"""

from kebench_hf.leaderboard.submission import (
    Limits,
    Reference,
    SubmissionError,
    ValidatedSubmission,
    submit,
    validate_run_dir,
)

__all__ = [
    "Limits",
    "Reference",
    "SubmissionError",
    "ValidatedSubmission",
    "submit",
    "validate_run_dir",
]
