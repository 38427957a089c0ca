"""Step 4: question generation, ``t_i(e)``, behind a small protocol.

An entity question asks for the name of the entity in an image; its exact answer is that name.
:class:`TemplateQuestions` (default) draws a question and a *different* rephrase from per-type
templates; :class:`LanguageModelQuestions` asks a local transformers text-generation model and
falls back to the templates for outputs that are not a usable question. Relation questions
(portability, T-Locality) are templates over a subject phrase, so they compose into k-hop chains.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)

_ENTITY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "person": (
        "Who is the person in the image?",
        "What is the name of the person shown in this picture?",
        "Who is pictured here?",
        "Which person does this photo show?",
    ),
    "city": (
        "Which city is shown in this picture?",
        "What city does the image depict?",
        "Name the city that appears in the image.",
        "What is the name of the city in this photo?",
    ),
    "country": (
        "Which country is shown in the image?",
        "What country does this picture represent?",
        "Name the country depicted here.",
        "What is the name of the country in this photo?",
    ),
    "club": (
        "Which club is shown in the image?",
        "What is the name of the club in this picture?",
        "Name the club that this photo shows.",
        "Which sports club does the image depict?",
    ),
    "river": (
        "Which river is shown in this photo?",
        "What river does the image depict?",
        "Name the river in this picture.",
        "What is the name of the river shown here?",
    ),
}
_GENERIC_ENTITY_TEMPLATES = (
    "Which {type} is shown in the image?",
    "What is the name of the {type} in this picture?",
    "Name the {type} depicted here.",
)

#: relation -> (question about the tail of ``{x}``, noun phrase naming that tail)
_RELATION_TEMPLATES: dict[str, tuple[str, str]] = {
    "plays_for": ("Which club does {x} play for?", "the club {x} plays for"),
    "born_in": ("In which city was {x} born?", "the city where {x} was born"),
    "based_in": ("In which city is {x} based?", "the city where {x} is based"),
    "located_in": ("In which country is {x} located?", "the country where {x} is located"),
    "lies_on": ("On which river does {x} lie?", "the river {x} lies on"),
    "capital": ("What is the capital of {x}?", "the capital of {x}"),
    "language": ("What is the official language of {x}?", "the official language of {x}"),
    "flows_through": ("Which country does {x} flow through?", "the country {x} flows through"),
}


def relation_question(relation: str, subject: str) -> str:
    """A question whose answer is the tail of ``relation`` from the entity ``subject`` names."""
    if relation in _RELATION_TEMPLATES:
        return _RELATION_TEMPLATES[relation][0].format(x=subject)
    return f"What is the {relation.replace('_', ' ')} of {subject}?"


def relation_noun(relation: str, subject: str) -> str:
    """A noun phrase for the tail of ``relation`` from ``subject``: the subject of the next hop."""
    if relation in _RELATION_TEMPLATES:
        return _RELATION_TEMPLATES[relation][1].format(x=subject)
    return f"the {relation.replace('_', ' ')} of {subject}"


def image_subject(entity_type: str) -> str:
    return f"the {entity_type.replace('_', ' ')} in the image"


_WORD = re.compile(r"\w+")


def contains_answer(question: str, answer: str) -> bool:
    """Whether the words of ``answer`` (underscores read as spaces) occur in ``question`` in a row.

    Case and punctuation are ignored; "Ada" is not found in "Adam".
    """
    words = _WORD.findall(answer.replace("_", " ").lower())
    if not words:
        return False
    text = _WORD.findall(question.replace("_", " ").lower())
    return any(text[start : start + len(words)] == words for start in range(len(text) - len(words) + 1))


class QuestionGenerator(Protocol):
    #: recorded in report.json
    name: str

    def entity_questions(self, entity_type: str, variant: int) -> tuple[str, str]:
        """``t_i(e)`` for an entity of ``entity_type``: (question, a different rephrase).

        ``variant`` picks among the generator's phrasings deterministically.
        """


class TemplateQuestions:
    name = "templates"

    def entity_questions(self, entity_type: str, variant: int) -> tuple[str, str]:
        templates = _ENTITY_TEMPLATES.get(entity_type) or tuple(
            template.format(type=entity_type.replace("_", " ")) for template in _GENERIC_ENTITY_TEMPLATES
        )
        first = variant % len(templates)
        second = (first + 1 + (variant // len(templates)) % (len(templates) - 1)) % len(templates)
        return templates[first], templates[second]


class LanguageModelQuestions:
    """Questions written by a local causal LM (greedy, so deterministic), templates as fallback."""

    def __init__(self, model_path: str | Path, max_new_tokens: int = 32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: text-generation model directory not found")
        self.name = f"lm:{path.name}"
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModelForCausalLM.from_pretrained(path).eval()
        self._max_new_tokens = max_new_tokens
        self._fallback = TemplateQuestions()
        self._cache: dict[tuple[str, int], tuple[str, str]] = {}
        #: how many questions came from the templates because the model's output was unusable
        self.fallbacks = 0

    def _generate(self, prompt: str) -> str:
        import torch

        inputs = self._tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = self._model.generate(
                **inputs, max_new_tokens=self._max_new_tokens, do_sample=False,
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            )  # fmt: skip
        text = self._tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()

    def entity_questions(self, entity_type: str, variant: int) -> tuple[str, str]:
        key = (entity_type, variant % 4)
        if key not in self._cache:
            template_question, template_rephrase = self._fallback.entity_questions(entity_type, variant)
            kind = entity_type.replace("_", " ")
            question = self._generate(f"Question asking which {kind} is shown in a photo: {template_question}\n"
                                      f"Another question asking which {kind} is shown in a photo:")  # fmt: skip
            rephrase = self._generate(f"Rephrase the question.\nQuestion: {question}\nRephrased:")
            usable = question.endswith("?") and rephrase.endswith("?") and question != rephrase
            if not usable:
                self.fallbacks += 1
                question, rephrase = template_question, template_rephrase
            self._cache[key] = (question, rephrase)
        return self._cache[key]
