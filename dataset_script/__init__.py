"""The hub dataset repository template that ``kebench export`` fills in: dataset card and citation."""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
#: Jinja template of the dataset card (README.md); ``card_data`` is the YAML header
CARD_TEMPLATE = TEMPLATE_DIR / "card_template.md"
#: BibTeX of the KEBench/VLKEB paper
CITATION = (TEMPLATE_DIR / "CITATION.bib").read_text(encoding="utf-8").strip()
