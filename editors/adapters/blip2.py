"""BLIP-2 (``Blip2ForConditionalGeneration``: ViT -> Q-Former -> projection -> OPT).

Layout of a row: ``[context] [image query tokens] [BOS] "Question: {q} Answer:" " {answer}"`` —
BLIP-2 puts its query tokens before BOS, so the context (which must lead every row) comes first;
a text-only row is ``[BOS] [context] "Question: ..."`` as in the other families.
The Blip2Processor prepends image tokens to every text of a batch, so rows are assembled here;
a batch without any image passes empty precomputed image features instead of pixels.
Shared KV prefixes are not supported: the image tokens of different rows share ids, not content.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs

from editors.adapters.base import Query
from editors.adapters.chat import ChatTemplateAdapter


class Blip2Adapter(ChatTemplateAdapter):
    family = "blip2"
    model_types = ("blip-2",)
    supports_prefix_cache = False

    @classmethod
    def handles(cls, config: Any) -> bool:
        """BLIP-2 with OPT (a Llama text model is MiniGPT-4: ``editors.adapters.minigpt4``)."""
        return super().handles(config) and config.text_config.model_type != "llama"

    def image_tokens(self) -> int:
        return self.model.config.num_query_tokens

    def prompt(self, query: Query) -> str:
        return f"Question: {query.question} Answer:"

    def process(self, queries: list[Query]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        texts = self.tokenizer([self.prompt(query) for query in queries])["input_ids"]
        image_ids, other = self.reference_images(queries)
        return [(ids or []) + text for ids, text in zip(image_ids, texts, strict=True)], other

    def reference_images(self, queries: list[Query]) -> tuple[list[list[int] | None], dict[str, Any]]:
        """The query tokens' placeholder ids per query with an image, and the pixels (the same in
        both forms: BLIP-2 reads its 32 query embeddings before the OPT text)."""
        image_tokens = [self.model.config.image_token_index] * self.model.config.num_query_tokens
        image_ids = [list(image_tokens) if query.image is not None else None for query in queries]
        images = self.processor_images(queries)
        if images:
            return image_ids, {"pixel_values": self.processor.image_processor(images, return_tensors="pt")["pixel_values"]}
        # Text only: no image features to compute, and the forward requires either pixels or these.
        no_images = BaseModelOutputWithVisionQformerOutputs(
            pooler_output=torch.zeros(0, self.model.config.text_config.hidden_size)
        )
        return image_ids, {"pixel_values": None, "mm_encoder_outputs": {"image": no_images}}

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """``blip2_opt.py`` ``forward``: the query embeddings, then ``opt_tokenizer(text)`` (BOS first)."""
        return (image_ids or []) + self.tokenizer(text)["input_ids"]

    def generate_ids(self, inputs: dict[str, Any], **generation: Any) -> torch.Tensor:
        if inputs.get("pixel_values") is not None:
            return self.model.generate(**inputs, **generation)
        # BLIP-2's own generate always runs the vision model: text-only prompts go to the LM alone.
        return self.model.language_model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **generation
        )

    def last_hidden_states(self, inputs: dict[str, Any]) -> torch.Tensor:
        """BLIP-2 returns the language model's hidden states inside its ``language_model_outputs``."""
        return self.model(**inputs, output_hidden_states=True).language_model_outputs.hidden_states[-1]

    def language_model(self) -> nn.Module:
        return self.model.language_model.model.decoder

    def mlp(self, layer: int) -> nn.Module:
        """OPT layers have no MLP submodule: their two MLP projections, ``fc1`` and ``fc2``."""
        block = self.decoder_layers()[layer]
        return nn.ModuleList([block.fc1, block.fc2])

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        """The reference's FT on OPT trains ``fc1.weight`` and ``fc2.weight``, not their biases."""
        block = self.decoder_layers()[layer]
        return [block.fc1.weight, block.fc2.weight]

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        decoder = self.language_model()
        if decoder.final_layer_norm is not None:
            hidden_states = decoder.final_layer_norm(hidden_states)
        if decoder.project_out is not None:
            hidden_states = decoder.project_out(hidden_states)
        return self.model.language_model.lm_head(hidden_states)

    def vision_side_module(self) -> nn.Module:
        return self.model.qformer
