"""The adapter of an image-text-to-text ``model_type`` that has none of its own.

It works from the processor's chat template (as :class:`~editors.adapters.chat.ChatTemplateAdapter`
does for every family) and from the model's structure, found by the module names transformers
uses: the language model (``model.language_model``, ...), its decoder layers (``layers``, ...), their
MLPs (``mlp``, ...), its final norm and the LM head, and the projector or connector between vision
and language (``model.multi_modal_projector``, ...). A model in which one of them is not found is
refused, before its weights are loaded, with one line naming the missing part and the two ways in:
an adapter file in ``editors/adapters/`` or a plugin in the ``kebench.adapters`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import nn

from editors.adapters.chat import ChatTemplateAdapter

#: where transformers puts each part, tried in order (dotted attribute paths)
LANGUAGE_MODELS = ("model.language_model", "model.text_model", "language_model.model", "model.llm",
                   "language_model")
DECODER_LAYERS = ("layers", "decoder.layers", "h", "blocks")
FINAL_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "decoder.final_layer_norm")
MLPS = ("mlp", "feed_forward", "ffn")
LM_HEADS = ("lm_head", "language_model.lm_head")
PROJECTORS = ("model.multi_modal_projector", "model.connector", "model.mm_projector", "model.visual.merger",
              "model.vision_projection", "model.projector", "model.aligner", "multi_modal_projector", "connector")

HOW_TO_ADD = ("add an adapter (editors/adapters/<family>.py and a line in ADAPTERS) or a plugin "
              "(entry-point group 'kebench.adapters'); see docs/models.md")


def _find(root: nn.Module, paths: tuple[str, ...], kind: type = nn.Module) -> str | None:
    """The first of ``paths`` that names a ``kind`` submodule of ``root``."""
    for path in paths:
        module: Any = root
        for name in path.split("."):
            module = getattr(module, name, None)
        if isinstance(module, kind):
            return path
    return None


def _get(root: nn.Module, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name)
    return root


@dataclass(frozen=True)
class Structure:
    """Where the parts a method edits are (dotted paths; the language model's relative to the model,
    the rest relative to the language model or a decoder layer)."""

    language_model: str
    decoder_layers: str
    final_norm: str
    mlp: str
    lm_head: str
    projector: str

    @classmethod
    def of(cls, model: nn.Module) -> Structure:
        """The structure of ``model``, or a one-line ``ValueError`` naming the first part not found."""
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)

        def missing(part: str, where: str, paths: tuple[str, ...]) -> ValueError:
            return ValueError(
                f"model_type {model_type!r} ({type(model).__name__}) has no adapter of its own and the generic "
                f"adapter cannot find its {part} ({where}: none of {', '.join(paths)}); {HOW_TO_ADD}"
            )

        language_model = _find(model, LANGUAGE_MODELS)
        if language_model is None:
            raise missing("language model", "model", LANGUAGE_MODELS)
        text = _get(model, language_model)
        layers = _find(text, DECODER_LAYERS, nn.ModuleList)
        if layers is None:
            raise missing("decoder layers", language_model, DECODER_LAYERS)
        first = _get(text, layers)[0]
        mlp = _find(first, MLPS)
        if mlp is None:
            raise missing("decoder layers' MLPs", f"{language_model}.{layers}[0]", MLPS)
        norm = _find(text, FINAL_NORMS)
        if norm is None:
            raise missing("final norm", language_model, FINAL_NORMS)
        head = _find(model, LM_HEADS)
        if head is None:
            raise missing("LM head", "model", LM_HEADS)
        projector = _find(model, PROJECTORS)
        if projector is None:
            raise missing("vision-language projector", "model", PROJECTORS)
        return cls(language_model, layers, norm, mlp, head, projector)


class GenericAdapter(ChatTemplateAdapter):
    """Any image-text-to-text model whose parts :class:`Structure` finds; the family is its model_type."""

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.structure = Structure.of(model)
        super().__init__(model, processor)
        if not getattr(processor, "chat_template", None):
            raise ValueError(f"model_type {self.family!r}: its processor has no chat template, which the generic "
                             f"adapter builds prompts from; {HOW_TO_ADD}")
        # the answer follows a generation prompt ending in a newline (ChatML, turns) directly
        self.answer_prefix = "" if self.prompt_ending().endswith(("\n", " ")) else " "

    @classmethod
    def check_model(cls, config: Any) -> None:
        """Refuse a model whose parts cannot be found, from its config alone (built on the meta device)."""
        from transformers import AutoModelForImageTextToText

        with torch.device("meta"):
            Structure.of(AutoModelForImageTextToText.from_config(config))

    def prompt_ending(self) -> str:
        """The last characters of a text-only prompt (where the answer is appended)."""
        return self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": "?"}]}], add_generation_prompt=True, tokenize=False
        )[-1:]

    def language_model(self) -> nn.Module:
        return _get(self.model, self.structure.language_model)

    def decoder_layers(self) -> nn.ModuleList:
        return _get(self.language_model(), self.structure.decoder_layers)

    def mlp(self, layer: int) -> nn.Module:
        return _get(self.decoder_layers()[layer], self.structure.mlp)

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        final_norm = _get(self.language_model(), self.structure.final_norm)
        return self.soft_capped(_get(self.model, self.structure.lm_head)(final_norm(hidden_states)))

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        """LLaVA's reference FT weights (``up_proj``, ``down_proj``) where the MLP has them, else all of it."""
        mlp = self.mlp(layer)
        if hasattr(mlp, "up_proj") and hasattr(mlp, "down_proj"):
            return [mlp.up_proj.weight, mlp.down_proj.weight]
        return list(mlp.parameters())

    def vision_side_module(self) -> nn.Module:
        return _get(self.model, self.structure.projector)


@cache
def generic_adapter(model_type: str) -> type[GenericAdapter]:
    """The generic adapter class of ``model_type`` (its ``family`` is the model_type)."""
    return type(f"GenericAdapter[{model_type}]", (GenericAdapter,), {"family": model_type, "model_types": (model_type,)})
