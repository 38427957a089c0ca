"""The construction report: counts per step, and what was filtered and why."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_EXAMPLES_KEPT = 5


class Report:
    """Collects, per pipeline step, plain counts and skipped items grouped by reason."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def count(self, step: str, key: str, value: Any) -> None:
        self.steps.setdefault(step, {})[key] = value

    def skip(self, step: str, reason: str, example: str) -> None:
        skipped = self.steps.setdefault(step, {}).setdefault("skipped", {})
        entry = skipped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < _EXAMPLES_KEPT:
            entry["examples"].append(example)
        logger.debug("%s: skipped %s (%s)", step, example, reason)

    def skipped(self, step: str, reason: str) -> int:
        return self.steps.get(step, {}).get("skipped", {}).get(reason, {}).get("count", 0)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.steps, indent=1, sort_keys=True) + "\n")
