"""Pronounceable, unique, deterministic entity names built from syllables."""

from __future__ import annotations

import numpy as np

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")

#: how a type's name is shaped from one or two syllable words; answers stay 1-3 words
_NAME_SHAPES = {
    "person": "{word} {word}",
    "club": "{word} FC",
    "river": "{word} River",
    "language": "{word}ish",
}


class NameGenerator:
    """Draws names that never repeat, so every answer identifies exactly one entity."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._used_words: set[str] = set()
        self._used_names: set[str] = set()

    def _word(self) -> str:
        while True:
            syllables = int(self._rng.integers(2, 4))
            word = "".join(
                _ONSETS[self._rng.integers(len(_ONSETS))]
                + _VOWELS[self._rng.integers(len(_VOWELS))]
                + _CODAS[self._rng.integers(len(_CODAS))]
                for _ in range(syllables)
            ).capitalize()
            # Words are never reused, so no name is a word of another name and questions that
            # mention one entity never contain another entity's full name by accident.
            if word not in self._used_words:
                self._used_words.add(word)
                return word

    def name(self, entity_type: str) -> str:
        shape = _NAME_SHAPES.get(entity_type, "{word}")
        while True:
            name = shape.replace("{word}", "\0")
            while "\0" in name:
                name = name.replace("\0", self._word(), 1)
            if name not in self._used_names:
                self._used_names.add(name)
                return name
