"""Inputs built through a family's own processor and chat template, shared by every family here.

A row is ``[leading special tokens (BOS)] + context tokens + prompt tokens + answer tokens``:

- the prompt is the processor's chat template applied to one user turn (image first, then the
  question) with the generation prompt appended; it goes through the processor, which expands
  the image placeholders and prepares the pixels, once per batch;
- the context (``Query.context`` + ``"\\n"``) and the answer (``answer_prefix + answer``) are
  tokenized on their own and spliced in, so a query's own tokens are identical with or without
  context, and the answer tokens are known exactly rather than recovered from a joint
  tokenization.

Padding: :meth:`encode` pads on the right (a row's real tokens sit at positions ``0..n-1``, so
``answer_slices`` / ``valid_positions`` count from the row's start); :meth:`generate` pads on the
left, as batched generation requires.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from editors.adapters.base import EncodedBatch, ModelAdapter, Query
from editors.adapters.processors import load_processor

#: processor outputs that hold one value per token; they are rebuilt for the assembled rows
_PER_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


class ChatTemplateAdapter(ModelAdapter):
    """Encoding and generation for processors with a chat template; families add module names."""

    #: text between the generation prompt and the answer
    answer_prefix: ClassVar[str] = " "
    #: whether the processor takes images nested per prompt (an empty list for a text-only query)
    images_per_prompt: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of this {self.family} model has no pad token")

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        """The processor saved with the model at ``source`` (local directory or hub id)."""
        return load_processor(source)

    # -- modules: a family names its language model and the rest follows ----------------------
    def language_model(self) -> nn.Module:
        """The decoder stack (embeddings, layers, final norm) without the LM head."""
        return self.model.model.language_model

    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model().layers

    def mlp(self, layer: int) -> nn.Module:
        return self.decoder_layers()[layer].mlp

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.soft_capped(self.model.lm_head(self.language_model().norm(hidden_states)))

    def soft_capped(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` through the text model's final soft cap where it has one (Gemma's)."""
        cap = getattr(self.model.config.get_text_config(), "final_logit_softcapping", None)
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        """LLaVA's reference FT trains ``mlp.up_proj.weight`` and ``mlp.down_proj.weight`` only."""
        mlp = self.mlp(layer)
        return [mlp.up_proj.weight, mlp.down_proj.weight]

    # -- inputs ----------------------------------------------------------------------------
    def prompt(self, query: Query) -> str:
        """The prompt text of ``query`` (without context) up to where the answer starts."""
        content: list[dict[str, str]] = [{"type": "image"}] if query.image is not None else []
        content.append({"type": "text", "text": query.question})
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def processor_images(self, queries: list[Query]) -> Any:
        """The queries' images in the layout this family's processor expects (flat, or nested per prompt)."""
        if all(query.image is None for query in queries):
            return None
        if self.images_per_prompt:
            return [[query.image.convert("RGB")] if query.image is not None else [] for query in queries]
        return [query.image.convert("RGB") for query in queries if query.image is not None]

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor.image_processor(
            self.processor_images([Query(" ", " ", image) for image in images]), return_tensors="pt"
        )
        pixels = {key: value.to(self.device) for key, value in self._in_model_dtype(pixels).items()}
        # every family's get_image_features returns its projected image tokens as pooler_output:
        # one (tokens, hidden) tensor per image, or a (images, tokens, hidden) tensor
        tokens = self.model.get_image_features(**pixels).pooler_output
        return torch.stack([image_tokens.mean(dim=0) for image_tokens in tokens])

    def per_token_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-token forward inputs of assembled rows, with modality types where the processor
        makes them (models with multimodal rotary positions need them)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if getattr(self.processor, "return_mm_token_type_ids", False):
            types = self.processor.create_mm_token_type_ids(input_ids.tolist())
            inputs["mm_token_type_ids"] = torch.tensor(types, dtype=torch.int32)
        return inputs

    def process(self, queries: list[Query]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        """Each query's prompt token ids (unpadded) and the other (image) inputs of the batch."""
        batch = self.processor(
            text=[self.prompt(query) for query in queries],
            images=self.processor_images(queries),
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        prompts = [batch["input_ids"][row, :length].tolist() for row, length in enumerate(lengths)]
        return prompts, {key: value for key, value in batch.items() if key not in _PER_TOKEN_KEYS}

    def _prompts(self, queries: list[Query]) -> tuple[list[list[int]], list[int], dict[str, torch.Tensor]]:
        """Each query's ``[BOS] + context + prompt`` token ids, its number of context tokens, and
        the batch's other (image) inputs."""
        self._check_texts(queries)
        prompts, other = self.process(queries)
        contexts = {query.context for query in queries if query.context}
        context_ids: dict[str, list[int]] = {"": []}
        if contexts:
            tokenized = self.tokenizer([c + "\n" for c in contexts], add_special_tokens=False)["input_ids"]
            context_ids.update(zip(contexts, tokenized, strict=True))
        rows = []
        for prompt, query in zip(prompts, queries, strict=True):
            lead = 1 if prompt and prompt[0] == self.tokenizer.bos_token_id else 0
            rows.append(prompt[:lead] + context_ids[query.context] + prompt[lead:])
        return rows, [len(context_ids[query.context]) for query in queries], self._in_model_dtype(other)

    @staticmethod
    def _check_texts(queries: list[Query]) -> None:
        if not queries:
            raise ValueError("no queries to encode")
        for index, query in enumerate(queries):
            if not isinstance(query.question, str) or not query.question.strip():
                raise ValueError(f"query {index}: field 'question' is empty or not a string")
            if not isinstance(query.context, str):
                raise ValueError(f"query {index} ({query.question!r}): field 'context' is not a string")

    @staticmethod
    def _check_answers(queries: list[Query]) -> None:
        for index, query in enumerate(queries):
            if not isinstance(query.answer, str) or not query.answer.strip():
                raise ValueError(f"query {index} ({query.question!r}): field 'answer' is empty or not a string")

    def _in_model_dtype(self, inputs: Any) -> dict[str, Any]:
        """Processor outputs with floating-point tensors (pixels) cast to the model's dtype."""
        dtype = self.model.dtype
        return {key: value.to(dtype) if torch.is_tensor(value) and torch.is_floating_point(value) else value
                for key, value in inputs.items()}

    def _answers(self, queries: list[Query], with_eos: bool) -> list[list[int]]:
        self._check_answers(queries)
        ids = self.tokenizer([self.answer_prefix + q.answer for q in queries], add_special_tokens=False)["input_ids"]
        return [row + [self.tokenizer.eos_token_id] for row in ids] if with_eos else ids

    def _check_lengths(self, queries: list[Query], lengths: list[int]) -> None:
        # Past the position table the model fails with an IndexError deep inside torch.
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        for index, (query, length) in enumerate(zip(queries, lengths, strict=True)):
            if limit is not None and length > limit:
                raise ValueError(
                    f"query {index} ({query.question!r}): {length} tokens (context, image, question and "
                    f"answer) exceed this {self.family} model's {limit} positions; shorten field 'context'"
                )

    def _padded(self, rows: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for index, row in enumerate(rows):
            span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            input_ids[index, span] = torch.tensor(row)
            attention_mask[index, span] = 1
        return self.per_token_inputs(input_ids, attention_mask)

    # -- the reference's text form (PromptForm.reference, preset vlkeb) -----------------------
    def image_placeholder(self) -> str:
        """The text this family's processor expands into one image's tokens."""
        return self.processor.image_token

    def reference_images(self, queries: list[Query]) -> tuple[list[list[int] | None], dict[str, Any]]:
        """Each query's image token ids (None: no image) and the batch's image inputs."""
        images = self.processor_images(queries)
        if not images:
            return [None] * len(queries), {}
        batch = self.processor(
            text=[self.image_placeholder()] * len(images), images=images, return_tensors="pt",
            padding=True, padding_side="right", add_special_tokens=False,
        )
        expanded = iter(
            ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        )
        image_ids = [next(expanded) if query.image is not None else None for query in queries]
        return image_ids, {key: value for key, value in batch.items() if key not in _PER_TOKEN_KEYS}

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """The reference's row for ``text``: LLaVA's ``tokenizer(text)`` with the image right after
        BOS (``trainer/llava/model/language_model/llava_llama.py``, ``prepare_inputs_from_batch``)."""
        ids = self.tokenizer(text)["input_ids"]
        if image_ids is None:
            return ids
        lead = 1 if ids and ids[0] == self.tokenizer.bos_token_id else 0
        return ids[:lead] + image_ids + ids[lead:]

    def _reference_rows(self, queries: list[Query], with_answer: bool) -> tuple[list[list[int]], dict[str, Any]]:
        """Rows of ``context + " " + question (+ " " + answer)`` tokenized as one string, as the
        reference's ``" ".join([question, answer])`` (``easyeditor/dataset/coco_caption.py``) and
        IKE's ``"".join(icl_examples) + "...Prompt: " + question`` (``easyeditor/evaluate/evaluate.py``)."""
        self._check_texts(queries)
        if with_answer:
            self._check_answers(queries)
        image_ids, other = self.reference_images(queries)
        rows = []
        for query, ids in zip(queries, image_ids, strict=True):
            text = f"{query.context} {query.question}" if query.context else query.question
            rows.append(self.reference_row(f"{text} {query.answer}" if with_answer else text, ids))
        return rows, self._in_model_dtype(other)

    def _first_image_position(self, row: list[int]) -> int:
        """Where the row's image tokens start (its length when it has none)."""
        image_token = getattr(self.processor, "image_token_id", None)
        if image_token is None:
            image_token = self.model.config.image_token_index
        return row.index(image_token) if image_token in row else len(row)

    def _encode_reference(self, queries: list[Query]) -> EncodedBatch:
        rows, inputs = self._reference_rows(queries, with_answer=True)
        prefix = self.form.answer_prefix
        targets = [
            self.tokenizer(prefix + query.answer,
                           add_special_tokens=self.form.second_edit_special_tokens and query.second_edit)["input_ids"]
            for query in queries
        ]
        self._check_lengths(queries, [len(row) for row in rows])
        answer_slices = []
        for index, (query, row, target) in enumerate(zip(queries, rows, targets, strict=True)):
            if len(target) > len(row) - 1:
                raise ValueError(f"query {index} ({query.question!r}): field 'answer' has more tokens than the row")
            # the reference reads labels at logits[:, :-1][:, -len(labels):], whatever the row holds there
            answer_slices.append(slice(len(row) - 1 - len(target), len(row) - 1))
            key = f"{query.context}\x00{query.question}\x00{query.answer}\x00{query.image is not None}"
            self.reference_targets[key] = row[len(row) - len(target) :] != target
        inputs.update(self._padded(rows, side="right"))
        return EncodedBatch(
            inputs=inputs,
            target_ids=targets,
            answer_slices=answer_slices,
            valid_positions=[slice(0, len(row) - 1) for row in rows],
            # the image comes before the context here: rows sharing ids there need not share pixels
            extra={"shared_prefix_limit": min(self._first_image_position(row) for row in rows)},
        )

    def encode(self, queries: list[Query], with_eos: bool = False) -> EncodedBatch:
        """Right-padded teacher-forced batch; ``with_eos`` also targets the end-of-answer token.

        ``extra["context_lengths"]`` holds each row's number of context tokens (the family's own
        form; the reference form tokenizes context, question and answer as one string).
        """
        if self.form.reference:
            if with_eos:
                raise ValueError("the reference's text form has no end-of-answer target")
            return self._encode_reference(queries)
        prompts, context_lengths, inputs = self._prompts(queries)
        answers = self._answers(queries, with_eos)
        self._check_lengths(queries, [len(p) + len(a) for p, a in zip(prompts, answers, strict=True)])
        inputs.update(self._padded([p + a for p, a in zip(prompts, answers, strict=True)], side="right"))
        return EncodedBatch(
            inputs=inputs,
            target_ids=answers,
            answer_slices=[slice(len(p) - 1, len(p) - 1 + len(a)) for p, a in zip(prompts, answers, strict=True)],
            valid_positions=[
                slice(c, len(p) + len(a) - 1) for c, p, a in zip(context_lengths, prompts, answers, strict=True)
            ],
            extra={"context_lengths": context_lengths},
        )

    @torch.no_grad()
    def generate(self, queries: list[Query], max_new_tokens: int = 16) -> list[str]:
        if self.form.reference:
            prompts, inputs = self._reference_rows(queries, with_answer=False)
        else:
            prompts, _, inputs = self._prompts(queries)
        self._check_lengths(queries, [len(prompt) + max_new_tokens for prompt in prompts])
        inputs.update(self._padded(prompts, side="left"))
        inputs = {key: value.to(self.device) if torch.is_tensor(value) else value for key, value in inputs.items()}
        output = self.generate_ids(
            inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    def generate_ids(self, inputs: dict[str, Any], **generation: Any) -> torch.Tensor:
        """The model's ``generate`` on left-padded ``inputs``: prompt ids followed by new ids."""
        return self.model.generate(**inputs, **generation)
