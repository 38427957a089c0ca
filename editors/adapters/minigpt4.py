"""MiniGPT-4 as ``Blip2ForConditionalGeneration`` with a Llama (Vicuna) text model (``kebench convert
minigpt4`` writes one from MiniGPT-4's checkpoints; ``editors.convert``).

BLIP-2's ViT, Q-Former and query tokens, one linear projection, and Vicuna: the same model_type
``blip-2``, told apart by its Llama ``text_config``. Rows follow MiniGPT-4's conversation turn,
the query embeddings between ``<Img>`` and ``</Img>``: ``[BOS] ###Human: <Img>[query tokens]</Img>
{question}###Assistant: {answer}`` (text only: ``[BOS] ###Human: {question}###Assistant:``). The
reference's form (VLKEB's ``mini_gpt4.py``) is ``###Human: <Img>[query tokens]</Img> {question}
{answer}`` without BOS. FT trains the last layer's ``up_proj`` and ``down_proj``
(``hparams/FT/minigpt4.yaml``), FT-vision the Q-Former (``minigpt4_qformer.yaml``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from editors.adapters.base import Query
from editors.adapters.blip2 import Blip2Adapter

#: the text around the query embeddings in MiniGPT-4's (and the reference's) image turn
IMAGE_OPEN, IMAGE_CLOSE = "###Human: <Img>", "</Img> "


class MiniGPT4Adapter(Blip2Adapter):
    family = "minigpt4"
    model_types = ("blip-2",)

    @classmethod
    def handles(cls, config: Any) -> bool:
        return config.model_type in cls.model_types and config.text_config.model_type == "llama"

    def _image_turn(self, image_ids: list[int], text: str, bos: bool) -> list[int]:
        opening = self.tokenizer(IMAGE_OPEN, add_special_tokens=bos)["input_ids"]
        return opening + image_ids + self.tokenizer(IMAGE_CLOSE + text, add_special_tokens=False)["input_ids"]

    def process(self, queries: list[Query]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        image_ids, other = self.reference_images(queries)
        rows = []
        for query, ids in zip(queries, image_ids, strict=True):
            if ids is None:
                rows.append(self.tokenizer(f"###Human: {query.question}###Assistant:")["input_ids"])
            else:
                rows.append(self._image_turn(ids, f"{query.question}###Assistant:", bos=True))
        return rows, other

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """VLKEB's ``mini_gpt4.py`` ``forward``: ``prompt_wrap`` of the image turn, then the text, no BOS."""
        if image_ids is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._image_turn(image_ids, text, bos=False)

    def language_model(self) -> nn.Module:
        return self.model.language_model.model

    def mlp(self, layer: int) -> nn.Module:
        return self.decoder_layers()[layer].mlp

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        mlp = self.mlp(layer)
        return [mlp.up_proj.weight, mlp.down_proj.weight]

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.language_model.lm_head(self.language_model().norm(hidden_states))
