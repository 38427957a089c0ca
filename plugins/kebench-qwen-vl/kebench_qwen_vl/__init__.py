"""KEBench's adapter for Qwen-VL (``Qwen/Qwen-VL``: ``model_type`` ``qwen`` with a ``visual`` config), a
plugin in the ``kebench.adapters`` entry-point group.

Written against the module names of Qwen-VL's own code (``modeling_qwen.py``, ``visual.py`` in its
hub repository, loaded with ``trust_remote_code``): ``QWenLMHeadModel`` holds ``transformer``
(``wte``, the blocks ``h[i]`` with ``attn`` and ``mlp.w1/w2/c_proj``, the final norm ``ln_f``, the
vision transformer ``visual`` with its resampler ``attn_pool``) and ``lm_head``.

Qwen-VL reads an image from the file path its tokenizer writes between ``<img>`` and ``</img>``:
``image_start_id`` (``config.visual``), the path's UTF-8 bytes as token ids, ``image_start_id + 2``
padding to 256 positions (the resampler's queries, which replace them), ``image_start_id + 1``. The
adapter writes each image to a PNG file named by its content and builds those ids itself. A row is
VLKEB's Qwen-VL prompt ``Picture 1: <img>{path}</img>\\n{question}`` and `` {answer}`` (text only:
``{question} {answer}``); Qwen has no BOS. FT-LLM trains the last block's ``mlp.w1``, ``w2`` and
``c_proj`` (VLKEB's ``hparams/FT/qwenvl.yaml``); FT-vision the last vision block
(``visual.transformer.resblocks[-1]``; the reference's ``qwenvl_vit.yaml`` its MLP).
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from editors.adapters.base import Query
from editors.adapters.remote import RemoteCodeAdapter, TokenizerProcessor

#: positions of one image: Qwen-VL's resampler has 256 queries, its tokenizer pads every path to them
IMAGE_SPAN = 256
#: Qwen's end-of-document token, its padding and end of answer
END_OF_TEXT = "<|endoftext|>"


class QwenVLAdapter(RemoteCodeAdapter):
    family = "qwen-vl"
    model_types = ("qwen",)
    embeddings_name: ClassVar[str] = "wte"

    @classmethod
    def handles(cls, config: Any) -> bool:
        """Qwen-VL, not the text-only Qwen models of the same model_type (no ``visual`` config)."""
        return config.model_type in cls.model_types and bool(getattr(config, "visual", None))

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        """Qwen's tokenizer (its own code: ``QWenTokenizer``), padding with ``<|endoftext|>`` as VLKEB's."""
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, pad_token=END_OF_TEXT,
                                                  eos_token=END_OF_TEXT)
        return TokenizerProcessor(tokenizer)

    def __init__(self, model: nn.Module, processor: Any) -> None:
        super().__init__(model, processor)
        self.image_start = int(model.config.visual["image_start_id"])
        self._image_dir: Path | None = None

    # -- images: files whose paths go into the row ---------------------------------------------
    def image_file(self, image: Image.Image) -> str:
        """The path of a PNG holding ``image``, named by its content (the same image, the same ids)."""
        if self._image_dir is None:
            self._image_dir = Path(tempfile.mkdtemp(prefix="kebench-qwen-vl-"))
            atexit.register(shutil.rmtree, self._image_dir, ignore_errors=True)
        rgb = image.convert("RGB")
        digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()[:32]
        path = self._image_dir / f"{digest}.png"
        if not path.exists():
            rgb.save(path)
        return str(path)

    def image_ids(self, image: Image.Image) -> list[int]:
        """``<img>`` + the path's bytes + padding + ``</img>``, as Qwen-VL's tokenizer writes them."""
        path = self.image_file(image).encode()
        if len(path) > IMAGE_SPAN:
            raise ValueError(f"image file path {path!r} is longer than Qwen-VL's {IMAGE_SPAN} image positions")
        return [self.image_start, *path, *[self.image_start + 2] * (IMAGE_SPAN - len(path)), self.image_start + 1]

    def image_tokens(self) -> int:
        return IMAGE_SPAN

    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        tokens = self.model.transformer.visual.encode([self.image_file(image) for image in images])
        return tokens.mean(dim=1)

    # -- rows ---------------------------------------------------------------------------------
    def process(self, queries: list[Query]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        image_ids, other = self.reference_images(queries)
        return [self.reference_row(query.question, ids) for query, ids in zip(queries, image_ids, strict=True)], other

    def reference_images(self, queries: list[Query]) -> tuple[list[list[int] | None], dict[str, Any]]:
        """The image ids of each query with an image; no pixel inputs (the model reads the files)."""
        return [self.image_ids(query.image) if query.image is not None else None for query in queries], {}

    def reference_row(self, text: str, image_ids: list[int] | None) -> list[int]:
        """VLKEB's ``tok(f"Picture 1: <img>{path}</img>\\n{text}")`` (``coco_caption.py``); text only: ``tok(text)``."""
        if image_ids is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        before = self.tokenizer("Picture 1: ", add_special_tokens=False)["input_ids"]
        return before + image_ids + self.tokenizer("\n" + text, add_special_tokens=False)["input_ids"]

    def _first_image_position(self, row: list[int]) -> int:
        return row.index(self.image_start) if self.image_start in row else len(row)

    # -- modules ------------------------------------------------------------------------------
    def language_model(self) -> nn.Module:
        return self.model.transformer

    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model().h

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.language_model().ln_f(hidden_states))

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        mlp = self.mlp(layer)
        return [mlp.w1.weight, mlp.w2.weight, mlp.c_proj.weight]

    def vision_side_module(self) -> nn.Module:
        return self.language_model().visual.transformer.resblocks[-1]

    def reference_vision_parameters(self) -> list[nn.Parameter]:
        return list(self.vision_side_module().mlp.parameters())
