"""The hub-hosted KEBench leaderboard.

A submission is a ``kebench run`` directory plus a short card, opened as a pull request on a
*requests* dataset (``submission``). The scoring service (``service``) re-scores every pending pull
request with the metric (self-reported numbers are never trusted), merges or rejects it, and writes
the *results* dataset (``results``) that the Gradio Space (``app``) shows, plus ``.eval_results``
files on model pages. Nothing is imported here, so that ``kebench --help`` stays fast.
"""
