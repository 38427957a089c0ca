"""KEBench's adapter for mPLUG-Owl2 (``MAGAer13/mplug-owl2-llama2-7b``: ``model_type`` ``mplug_owl2``), a
plugin in the ``kebench.adapters`` entry-point group.

Written against the module names of mPLUG-Owl2's own code (``X-PLUG/mPLUG-Owl``, folder
``mPLUG-Owl2/mplug_owl2/model``): ``MPLUGOwl2LlamaForCausalLM`` holds ``model`` (``embed_tokens``,
the vision encoder ``vision_model``, the ``visual_abstractor`` that turns its patches into 64 query
tokens and an end-of-image token, the modality-adaptive decoder layers ``layers[i]``, whose norms and
key/value projections are ``MultiwayNetwork`` pairs chosen per position by the modality, and
``norm``) and ``lm_head``.

An image is one ``-200`` id in ``input_ids`` (``IMAGE_TOKEN_INDEX``), which the forward replaces by
the abstractor's tokens; the model consumes one entry of ``images`` per row, a row without an image
included (VLKEB gives such rows a zero image), pads the rows it widened on the right and, when rows
end up of different lengths, builds their attention masks from ``labels`` (so a batch with images
passes labels, all ``-100``). The adapter's rows hold one placeholder per image *position* (the
abstractor's output length), so answer slices count logits positions; :meth:`per_token_inputs`
collapses each image to the model's single id. Rows follow mPLUG-Owl2's conversation
``USER: <|image|>{question} ASSISTANT: {answer}``; the reference's (VLKEB ``coco_caption.py``) is
``<|image|>{question} {answer}`` through ``tokenizer_image_token``. FT-LLM trains the last layer's
``mlp.gate_proj/up_proj/down_proj`` (``hparams/FT/owl2.yaml``); FT-vision the visual abstractor (the
reference's ``owl2_visual.yaml`` the vision model).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from editors.adapters.base import Query
from editors.adapters.remote import ImageTextProcessor, RemoteCodeAdapter

#: the id mPLUG-Owl2's forward replaces by an image's tokens (``mplug_owl2/constants.py``)
IMAGE_TOKEN_INDEX = -200
#: what ``labels`` hold at positions no loss is taken on
IGNORE_INDEX = -100


class MplugOwl2Adapter(RemoteCodeAdapter):
    family = "mplug-owl2"
    model_types = ("mplug_owl2",)

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        """The checkpoint's CLIP image processor and Llama tokenizer (padding with its end of sequence, as VLKEB)."""
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return ImageTextProcessor(AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code),
                                  tokenizer)

    def image_tokens(self) -> int:
        """The abstractor's learnable queries and its end-of-image token."""
        return int(self.model.config.visual_config["visual_abstractor"]["num_learnable_queries"]) + 1

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        """Each image stretched to a square of its longer side, then the CLIP processor (VLKEB's ``process_images``)."""
        squares = [image.convert("RGB").resize((max(image.size),) * 2) for image in images]
        return self.processor.image_processor(squares, return_tensors="pt")["pixel_values"].to(self.model.dtype)

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        return self.model.encode_images(self.pixels(images).to(self.device)).mean(dim=1)

    # -- rows ---------------------------------------------------------------------------------
    def process(self, queries: list[Query]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        image_ids, other = self.reference_images(queries)
        rows = []
        for query, ids in zip(queries, image_ids, strict=True):
            if ids is None:
                rows.append(self.tokenizer(f"USER: {query.question} ASSISTANT:")["input_ids"])
            else:
                opening = self.tokenizer("USER: ")["input_ids"]
                rows.append(opening + ids + self.tokenizer(f"{query.question} ASSISTANT:", add_special_tokens=False)["input_ids"])
        return rows, other

    def reference_images(self, queries: list[Query]) -> tuple[list[list[int] | None], dict[str, Any]]:
        """One placeholder per image position, and one image per row (zeros for a row without one)."""
        if all(query.image is None for query in queries):
            return [None] * len(queries), {}
        pixels = self.pixels([query.image for query in queries if query.image is not None])
        images = iter(pixels)
        per_row = [next(images) if query.image is not None else torch.zeros_like(pixels[0]) for query in queries]
        slot = [IMAGE_TOKEN_INDEX] * self.image_tokens()
        return [list(slot) if query.image is not None else None for query in queries], {"images": torch.stack(per_row)}

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """``tokenizer_image_token("<|image|>" + text)``: BOS, the image, the text without BOS; text only: ``tok(text)``."""
        if image_ids is None:
            return self.tokenizer(text)["input_ids"]
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + image_ids + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def per_token_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's placeholders collapsed to the model's one ``-200``, the rows padded on the right again."""
        span = self.image_tokens()
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            real = [token for token, keep in zip(ids, mask, strict=True) if keep]
            rows.append([token for index, token in enumerate(real)
                         if token != IMAGE_TOKEN_INDEX or _run_offset(real, index) % span == 0])
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[index, : len(row)] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if (ids == IMAGE_TOKEN_INDEX).any():
            inputs["labels"] = torch.full_like(ids, IGNORE_INDEX)
        return inputs

    def _first_image_position(self, row: list[int]) -> int:
        return row.index(IMAGE_TOKEN_INDEX) if IMAGE_TOKEN_INDEX in row else len(row)

    # -- modules ------------------------------------------------------------------------------
    def language_model(self) -> nn.Module:
        return self.model.model

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.language_model().norm(hidden_states))

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        mlp = self.mlp(layer)
        return [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]

    def vision_side_module(self) -> nn.Module:
        return self.language_model().visual_abstractor

    def reference_vision_parameters(self) -> list[nn.Parameter]:
        return list(self.language_model().vision_model.parameters())


def _run_offset(row: list[int], index: int) -> int:
    """How many ``IMAGE_TOKEN_INDEX`` ids precede position ``index`` in its run of them."""
    start = index
    while start > 0 and row[start - 1] == IMAGE_TOKEN_INDEX:
        start -= 1
    return index - start
