"""The one definition of KEBench's columns, per dataset config.

Every edit case keeps the release's string values byte-for-byte; images are ``datasets.Image()``
columns (decoded on access, never at load) next to the relative path they came from.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

# Defined where the CLI parser can read them without importing datasets; importers of this module keep
# finding them here.
from kebench_hf.constants import CONFIGS, DEFAULT_CONFIG  # noqa: F401

#: release fields that hold strings, in release order
TEXT_FIELDS = ("src", "rephrase", "pred", "alt", "loc", "loc_ans", "m_loc_q", "m_loc_a")
#: release fields that hold an image path relative to the images root
IMAGE_FIELDS = ("image", "image_rephrase", "m_loc")

_PORTABILITY = List({"hop": Value("int32"), "question": Value("string"), "answer": Value("string")})
_ONEHOP = List(
    {
        "edit_question": Value("string"),
        "edit_answer": Value("string"),
        "question": Value("string"),
        "answer": Value("string"),
    }
)


def features(config: str) -> Features:
    """The ``datasets.Features`` of ``config``.

    ``case_id`` is ``"{release file stem}-{record index:05d}"`` (e.g. ``eval-00042``): stable for a
    given release file. For each image field ``f`` there is ``f`` (the image) and ``f_path`` (the
    path string exactly as in the JSON).
    """
    if config not in CONFIGS:
        raise ValueError(f"unknown KEBench config {config!r}; expected one of {sorted(CONFIGS)}")
    columns: dict = {"case_id": Value("string")}
    for name in TEXT_FIELDS:
        columns[name] = Value("string")
    for name in IMAGE_FIELDS:
        columns[name] = Image()
        columns[f"{name}_path"] = Value("string")
    columns["portability"] = _PORTABILITY
    if config == "edit_onehop":
        columns["onehop"] = _ONEHOP
    return Features(columns)
