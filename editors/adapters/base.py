"""The contract between editing methods / the evaluation engine and a model family.

An adapter is the only code that knows a model family's internals (module names, prompt format,
processor quirks). Methods and the engine only ever talk to a :class:`ModelAdapter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from editors.presets import PromptForm


@dataclass(frozen=True)
class Query:
    """One model query: an optional image, a question, the answer to teacher-force or expect.

    ``context`` is text the model reads before the query (IKE demonstrations + the new fact,
    a retrieved edit for SERAC's counterfactual model); empty for a plain query. Adapters put it
    at the very start of the sequence, right after BOS and BEFORE the chat template / image, so
    that (a) all queries of an edit case share one token prefix whose KV cache the engine computes
    once, and (b) the query's own tokens are the same with or without context (see
    :class:`EncodedBatch`). The exact text between context and prompt is the adapter's choice
    (e.g. ``context + "\n"``), the same in ``encode`` and ``generate``.
    """

    question: str
    answer: str
    image: Image.Image | None = None
    context: str = ""
    #: the query is edit-one-hop's second edit (:meth:`editors.cases.EditCase.second_edit`): a
    #: prompt form may build its targets differently (``PromptForm.second_edit_special_tokens``)
    second_edit: bool = False


@dataclass
class EncodedBatch:
    """Padded model inputs for a list of queries, in the order given.

    ``inputs`` are the keyword arguments of the model's forward. ``answer_slices[i]`` is the
    ``slice`` of positions in the logits of row ``i`` whose argmax predicts the answer tokens
    ``target_ids[i]`` (position ``t`` predicts token ``t + 1``). ``valid_positions[i]`` is the
    slice of all real (non-padding) positions of row ``i`` that predict a next token, image
    positions included: the token-protocol locality compares pre/post over exactly these.

    Context (see :class:`Query`) shifts, never widens, a row: with ``C`` context tokens after BOS,
    ``valid_positions[i]`` is ``slice(C, C + n)`` where ``slice(0, n)`` is the same query's
    valid positions without context (position ``C``, the last context token, predicts the first
    prompt token as BOS does without context), and ``answer_slices[i]`` shifts by ``C`` too. So
    pre-edit (no context) and post-edit (IKE context) locality compare position by position.
    Positions before ``min(valid_positions[i].start)`` must be the same tokens in every row of a
    batch whose queries share one context: the engine runs them once and reuses their KV cache.
    Which of a row's positions the token-protocol locality compares is the query spec's choice
    (:func:`editors.forward.compared_positions`), not the batch's.
    """

    inputs: dict[str, torch.Tensor]
    target_ids: list[list[int]]
    answer_slices: list[slice]
    valid_positions: list[slice]
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> EncodedBatch:
        self.inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return self


class ModelAdapter(ABC):
    """Wraps one loaded transformers LVLM and its processor."""

    #: registry key, e.g. "llava"
    family: ClassVar[str]
    #: ``config.model_type`` values this adapter handles
    model_types: ClassVar[tuple[str, ...]]
    #: whether ``model(input_ids=suffix, past_key_values=prefix_cache, attention_mask=full, ...)``
    #: gives the same logits as the full forward (true for LLaVA-style models; a family whose
    #: position ids depend on the whole sequence, e.g. Qwen2-VL's M-RoPE, sets it False and the
    #: engine then runs the context with every query)
    supports_prefix_cache: ClassVar[bool] = True

    @classmethod
    def handles(cls, config: Any) -> bool:
        """Whether this adapter serves a model of ``config`` (by default: one of its ``model_types``;
        a family sharing a model_type with another tells them apart here)."""
        return config.model_type in cls.model_types

    @classmethod  # noqa: B027 - an optional hook, not an abstract method
    def check_model(cls, config: Any) -> None:
        """Refuse, from its config alone (before any weight is loaded), a model this adapter cannot serve
        (by default: every model of the adapter's model_types is served)."""

    @classmethod
    def load_model(cls, source: str, dtype: torch.dtype, trust_remote_code: bool = False, **placement: Any) -> nn.Module:
        """The model's weights at ``source`` (a family outside ``AutoModelForImageTextToText``, e.g. a
        remote-code causal LM, loads its own way); ``placement``: ``from_pretrained``'s
        ``device_map``, ``max_memory`` and ``offload_folder`` when the model is spread over devices."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code,
                                                           **placement)

    @classmethod
    def load_processor(cls, source: str, trust_remote_code: bool = False) -> Any:
        """The processor saved with the model at ``source`` (local directory or hub id); with
        ``trust_remote_code`` (given when the model's own code was trusted) a tokenizer or processor
        class in the model's repository may run."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source)

    def __init__(self, model: nn.Module, processor: Any) -> None:
        self.model = model
        self.processor = processor
        #: how queries become tokens; a run sets its preset's form for the method (editors.presets)
        self.form = PromptForm()
        #: reference-form queries seen (their text) -> whether ``tok(answer)`` differs from the
        #: answer's tokens in context (byte-level BPE: no leading space); counted in run.json
        self.reference_targets: dict[str, bool] = {}

    # -- inputs -----------------------------------------------------------------------------
    @abstractmethod
    def encode(self, queries: list[Query]) -> EncodedBatch:
        """Teacher-forced inputs: prompt(context, image, question) followed by the answer."""

    @abstractmethod
    def generate(self, queries: list[Query], max_new_tokens: int = 16) -> list[str]:
        """Greedy answers (prompt without the answer), decoded and stripped."""

    @abstractmethod
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """``(len(images), hidden)``: each image's tokens as the language model receives them
        (vision tower + projector), averaged; differentiable, for training the vision side alone."""

    # -- modules a method may edit ----------------------------------------------------------
    @abstractmethod
    def decoder_layers(self) -> nn.ModuleList:
        """The language model's decoder layers, bottom to top.

        The engine captures each layer's inputs (forward pre-hooks with kwargs) during one full
        forward and then re-runs only ``decoder_layers()[i:]`` + :meth:`head` per optimisation
        step, so ``head(last layer's output)`` must equal the model's logits.
        """

    @abstractmethod
    def mlp(self, layer: int) -> nn.Module:
        """The MLP block of decoder layer ``layer`` (negative indices count from the top)."""

    @abstractmethod
    def vision_side_module(self) -> nn.Module:
        """What FT-vision trains: projector (LLaVA), Q-Former (BLIP-2), last vision block (Qwen2-VL)."""

    def reference_mlp_parameters(self, layer: int) -> list[nn.Parameter]:
        """The weights of layer ``layer``'s MLP that the reference's FT trains (``hparams/FT/*.yaml``
        ``inner_params``); the default: every parameter of :meth:`mlp`."""
        return list(self.mlp(layer).parameters())

    def reference_vision_parameters(self) -> list[nn.Parameter]:
        """What the reference's FT-vision trains (``hparams/FT/*_{mmproj,qformer,vit}.yaml``);
        the default: every parameter of :meth:`vision_side_module`."""
        return list(self.vision_side_module().parameters())

    @abstractmethod
    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Final norm (and projection) + LM head applied to the last decoder layer's output."""

    def last_hidden_states(self, inputs: dict[str, Any]) -> torch.Tensor:
        """``(rows, positions, hidden)``: the language model's last hidden states (after its final
        norm) for the forward ``inputs``."""
        return self.model(**inputs, output_hidden_states=True).hidden_states[-1]

    def image_tokens(self) -> int:
        """Positions one image takes in a row (what ``kebench plan`` sizes activations with): by
        default a ViT's patch grid, read from the config."""
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings (the first layer), also when a
        ``device_map`` spreads the model over several devices (accelerate's hooks move the rest)."""
        device = self.input_embeddings().weight.device
        if device.type != "meta":
            return device
        # offloaded to the disk: accelerate runs it on the map's first device
        placement = getattr(self.model, "hf_device_map", {})
        first = next((where for where in placement.values() if where not in ("disk", "meta")), "cpu")
        return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
