"""``kebench plan``: the peak memory of a method on a model, from the model's config alone.

The model is built on the meta device (``accelerate.init_empty_weights``: shapes, no storage), wrapped
in its family's adapter, and the method's own pieces are sized from it: which weights FT trains, the
MEND / KE hypernetworks (built on the meta device too), SERAC's counterfactual layers and scope
classifier. The working memory of each phase of an edit is counted term by term (the engine runs them
one after the other: pre-edit pass, edit, post-edit pass), and the peak is the weights plus the
largest phase.

What the terms assume (and so what the estimate is not): attention through SDPA without a
``rows x heads x tokens x tokens`` score matrix, logits in the model's dtype, the trained editor
loaded (``--editor``; its meta-training is not planned), SERAC's sentence encoder on the CPU, and a
workload (:class:`Workload`): how many queries a case scores at once, how long they are, how long
IKE's in-context prompt is. The defaults are KEBench's: 6 queries of a case, 48 text tokens each
(plus the model's image tokens), 32 demonstrations of about 32 tokens, an edit fact of 32 (SERAC).

:func:`measured_peak` is what the estimate is checked against on the CPU: the peak of the bytes
torch allocates in a block (its profiler's allocation records), not the process's RSS.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from editors.adapters.base import ModelAdapter

GIB = 2**30
FLOAT32 = 4
#: Adam's two moments per trained weight, kept in float32 (editors.methods.base.fine_tune)
ADAM_MOMENTS = 2 * FLOAT32


@dataclass(frozen=True)
class Workload:
    """The sizes of the data side: ``rows`` queries of a case scored in one batch, ``query_tokens``
    text tokens each (the model's image tokens come on top), an in-context prompt of
    ``context_tokens`` tokens (IKE), the edit's fact of ``fact_tokens`` tokens in front of each query
    SERAC's counterfactual model answers, ``image_tokens`` per image (None: the adapter's figure)."""

    rows: int = 6
    query_tokens: int = 48
    context_tokens: int = 32 * 32
    fact_tokens: int = 32
    image_tokens: int | None = None


@dataclass
class Plan:
    """Bytes of the weights and of each phase's working memory; ``peak`` = weights + largest phase."""

    model: str
    method: str
    dtype: str
    weights: int
    phases: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def phase_bytes(self) -> dict[str, int]:
        return {name: sum(terms.values()) for name, terms in self.phases.items()}

    @property
    def working(self) -> int:
        return max(self.phase_bytes.values(), default=0)

    @property
    def peak(self) -> int:
        return self.weights + self.working

    def fits(self, memory: int) -> bool:
        return self.peak <= memory

    def format(self, memory: int | None = None) -> str:
        lines = [f"{self.model}, {self.method}, {self.dtype}", f"  weights: {_gib(self.weights)}"]
        for name, terms in self.phases.items():
            lines.append(f"  {name}: {_gib(sum(terms.values()))}")
            lines += [f"    {term}: {_gib(size)}" for term, size in terms.items()]
        lines.append(f"expected peak: {_gib(self.peak)}")
        if memory is not None:
            verdict = "fits" if self.fits(memory) else "does NOT fit"
            lines.append(f"{verdict} in {_gib(memory)} ({_gib(memory - self.peak)} to spare)")
        return "\n".join(lines)


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if abs(size) >= GIB / 10 else f"{size / 2**20:.1f} MiB"


def parse_memory(text: str) -> int:
    """``80GiB``, ``24GB``, ``512MiB`` or a plain byte count -> bytes."""
    units = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise ValueError(f"memory {text!r}: expected a size such as 80GiB, 24GB or 512MiB")
    return int(float(match.group(1)) * units[match.group(2).lower()])


# -- the model without weights ---------------------------------------------------------------------
#: real models' configs, offline (the sizes of their published config.json files)
def _llava_1_5_7b() -> Any:
    from transformers import LlavaConfig

    from editors.bench import LLAVA_1_5_7B as spec

    return LlavaConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": spec.vision_hidden_size,
                       "num_hidden_layers": spec.vision_layers, "num_attention_heads": spec.vision_heads,
                       "intermediate_size": spec.vision_intermediate_size, "image_size": spec.image_size,
                       "patch_size": spec.patch_size, "projection_dim": 768},
        text_config={"model_type": "llama", "hidden_size": spec.hidden_size, "num_hidden_layers": spec.text_layers,
                     "num_attention_heads": spec.heads, "num_key_value_heads": spec.heads,
                     "intermediate_size": spec.intermediate_size, "vocab_size": spec.embedding_rows,
                     "max_position_embeddings": spec.max_positions},
        image_seq_length=(spec.image_size // spec.patch_size) ** 2,
    )


def _blip2_opt_2_7b() -> Any:
    from transformers import Blip2Config

    return Blip2Config(  # ViT-g/14 at 224 px, the Q-Former's 32 queries, OPT-2.7B
        text_config={"model_type": "opt", "hidden_size": 2560, "num_hidden_layers": 32, "ffn_dim": 10240,
                     "num_attention_heads": 32, "vocab_size": 50272, "word_embed_proj_dim": 2560,
                     "max_position_embeddings": 2048},
        num_query_tokens=32,
    )


def _minigpt4_7b() -> Any:
    from transformers import Blip2Config

    from editors.convert import EVA_VIT_G_HEADS

    return Blip2Config(  # what kebench convert minigpt4 builds: EVA ViT-g/14 at 224 px, BLIP-2's Q-Former, Vicuna-7B
        vision_config={"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                       "num_attention_heads": EVA_VIT_G_HEADS, "patch_size": 14, "image_size": 224, "qkv_bias": True},
        text_config={"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
                     "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32001,
                     "max_position_embeddings": 2048},
        num_query_tokens=32,
    )


def _qwen2_vl_7b() -> Any:
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={"hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944,
                     "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                     "max_position_embeddings": 32768},
        vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4,
                       "patch_size": 14, "spatial_merge_size": 2},
        tie_word_embeddings=False,
    )


KNOWN_MODELS: dict[str, Callable[[], Any]] = {
    "llava-1.5-7b": _llava_1_5_7b,
    "blip2-opt-2.7b": _blip2_opt_2_7b,
    "minigpt4-7b": _minigpt4_7b,
    "qwen2-vl-7b": _qwen2_vl_7b,
}


def model_config(model: str) -> Any:
    """A :data:`KNOWN_MODELS` name's config, or the config of a model directory / hub id (no weights)."""
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        known = ", ".join(KNOWN_MODELS)
        raise ValueError(f"model {model!r}: cannot load its config ({error}); offline shapes: {known}") from None


class _NoTokenizer:
    """The adapter's module lookups need no tokens: the planner never encodes."""

    pad_token_id = 0


def meta_adapter(config: Any) -> ModelAdapter:
    """The model of ``config`` on the meta device, in its family's adapter (module lookups only)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForImageTextToText

    from editors.adapters import adapter_class

    family = adapter_class(config.model_type, config)
    with init_empty_weights(include_buffers=True):
        model = AutoModelForImageTextToText.from_config(config)
    return family(model, SimpleNamespace(tokenizer=_NoTokenizer()))


def _numel(params: Any) -> int:
    return sum(param.numel() for param in params)


# -- the phases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shape:
    """What the terms read from the model's text config."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_width: int  # key/value heads x head size
    image_tokens: int
    prefix_cache: bool


def _shape(adapter: ModelAdapter, workload: Workload) -> _Shape:
    text = adapter.model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    intermediate = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) or 4 * text.hidden_size
    image_tokens = workload.image_tokens if workload.image_tokens is not None else adapter.image_tokens()
    return _Shape(text.hidden_size, len(adapter.decoder_layers()), intermediate,
                  adapter.input_embeddings().num_embeddings, heads, kv_heads * head_dim, image_tokens,
                  adapter.supports_prefix_cache)


def _forward(shape: _Shape, rows: int, tokens: int, size: int, keys: int | None = None) -> dict[str, int]:
    """A no-gradient forward of ``rows x tokens``: the larger of its logits and one layer's transient
    activations (the hidden state twice, the MLP's activation, up projection and their product; each
    layer's are freed before the next, and all before the head); continuing ``keys`` cached
    positions (``None``: no cache), the cache of every row too."""
    terms = {"logits or one layer's activations": rows * tokens * size * max(
        shape.vocab, 2 * shape.hidden + 3 * shape.intermediate)}
    if keys is not None:
        terms["key/value cache"] = 2 * shape.layers * rows * (tokens + keys) * shape.kv_width * size
    return terms


def _backward_through(shape: _Shape, layers: int, tokens: int, size: int) -> dict[str, int]:
    """One query trained through its top ``layers`` decoder layers: activations saved for backward
    (about 10 hidden-wide and 4 MLP-wide tensors per layer), the logits and their float32 copy in the loss."""
    return {
        "activations for backward": layers * tokens * (10 * shape.hidden + 4 * shape.intermediate) * size,
        "edit logits + loss": tokens * shape.vocab * (size + 2 * FLOAT32),
    }


def _trained_state(count: int, size: int) -> dict[str, int]:
    """FT on ``count`` weights: the snapshot, their gradients, Adam's moments, float32 masters below float32."""
    masters = 0 if size == FLOAT32 else 2 * FLOAT32  # the master copy and its float32 gradient
    return {"snapshot": count * size, "gradients": count * size, "Adam moments": count * ADAM_MOMENTS,
            "float32 masters": count * masters}


def plan(model: str, method: str, dtype: str = "float32", workload: Workload | None = None,
         config: Any = None) -> Plan:
    """The :class:`Plan` of ``method`` on ``model`` (a directory, hub id or :data:`KNOWN_MODELS` name;
    ``config``: a config already at hand) in ``dtype``."""
    from editors.methods import get_method

    workload = workload or Workload()
    get_method(method)  # an unknown method: the registry's error, before building anything
    if method not in PHASES:
        raise ValueError(f"method {method!r}: kebench plan knows {', '.join(PHASES)}")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; e.g. float32, bfloat16, float16")
    size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    adapter = meta_adapter(config if config is not None else model_config(model))
    shape = _shape(adapter, workload)
    weights = sum(tensor.numel() for tensor in adapter.model.state_dict().values()) * size
    query = workload.query_tokens + shape.image_tokens
    phases = {"pre-edit pass": _forward(shape, workload.rows, query, size)}
    phases.update(PHASES[method](adapter, shape, workload, query, size))
    return Plan(model, method, dtype, weights, phases)


def _ft_llm(adapter: ModelAdapter, shape: _Shape, workload: Workload, query: int, size: int) -> dict[str, dict[str, int]]:
    from editors.methods.ft_llm import FTLLMConfig

    trained = _numel(adapter.mlp(FTLLMConfig.layer).parameters())
    return {"edit": {**_trained_state(trained, size), **_backward_through(shape, 1, query, size)},
            "post-edit pass": {"snapshot": trained * size, **_forward(shape, workload.rows, query, size)}}


def _ft_vision(adapter: ModelAdapter, shape: _Shape, workload: Workload, query: int, size: int) -> dict[str, dict[str, int]]:
    trained = _numel(adapter.vision_side_module().parameters())
    return {"edit": {**_trained_state(trained, size), **_backward_through(shape, shape.layers, query, size)},
            "post-edit pass": {"snapshot": trained * size, **_forward(shape, workload.rows, query, size)}}


def _in_context(shape: _Shape, rows: int, query: int, context: int, size: int) -> dict[str, int]:
    """A no-gradient forward of ``rows`` queries behind the same ``context``: with KV-prefix reuse the
    context runs once and its cache is repeated for every row, layer by layer (one layer's original
    still held); without it every row runs its whole context."""
    if not shape.prefix_cache:
        return _forward(shape, rows, context + query, size)
    terms = _forward(shape, rows, query, size, keys=context)
    terms["key/value cache"] += 2 * context * shape.kv_width * size
    return terms


def _ike(adapter: ModelAdapter, shape: _Shape, workload: Workload, query: int, size: int) -> dict[str, dict[str, int]]:
    return {"post-edit pass": _in_context(shape, workload.rows, query, workload.context_tokens, size)}


def _weight_update(network_params: int, edited: int, layers: int, shape: _Shape, workload: Workload, query: int,
                   size: int) -> dict[str, dict[str, int]]:
    """MEND / KE: the hypernetwork (float32), the edit gradient's backward through the top ``layers``
    decoder layers (from the lowest edited one), the new weight values (float32) and the snapshot."""
    return {"edit": {"hypernetwork": network_params * FLOAT32, "snapshot": edited * size,
                     "weight updates": edited * FLOAT32, **_backward_through(shape, layers, query, size)},
            "post-edit pass": {"hypernetwork": network_params * FLOAT32, "snapshot": edited * size,
                               **_forward(shape, workload.rows, query, size)}}


def _hypernetwork(method_name: str) -> Callable[..., dict[str, dict[str, int]]]:
    def phases(adapter: ModelAdapter, shape: _Shape, workload: Workload, query: int, size: int) -> dict[str, dict[str, int]]:
        from accelerate import init_empty_weights

        from editors.methods import get_method
        from editors.training import edited_weights

        method = get_method(method_name)()
        method.weights = edited_weights(adapter, method.config.layers)
        with init_empty_weights():  # (build() would also move the network to the adapter's device)
            network = method.build_network(adapter)
        backward = shape.layers - method.first_edited_layer(adapter)
        return _weight_update(_numel(network.parameters()), _numel(method.weights.values()), backward, shape, workload,
                              query, size)

    return phases


def _serac(adapter: ModelAdapter, shape: _Shape, workload: Workload, query: int, size: int) -> dict[str, dict[str, int]]:
    from editors.methods.serac import SERAC, ScopeClassifier

    method = SERAC()
    minilm_width = 384  # all-MiniLM-L6-v2's embedding (the encoder itself runs on the CPU)
    with torch.device("meta"):
        classifier = ScopeClassifier(minilm_width + shape.hidden, method.config.classifier_hidden)
    counterfactual_layers = _numel(method.counterfactual_parameters(adapter).values())
    weights = sum(tensor.numel() for tensor in adapter.model.state_dict().values()) * size
    # the counterfactual model is a whole copy of the base model carrying the trained layers
    return {"post-edit pass": {"counterfactual model": weights, "trained layers (float32)": counterfactual_layers * FLOAT32,
                               "scope classifier": _numel(classifier.parameters()) * FLOAT32,
                               # every query in scope: answered with the edit's fact in context
                               **_in_context(shape, workload.rows, query, workload.fact_tokens, size)}}


PHASES: dict[str, Callable[..., dict[str, dict[str, int]]]] = {
    "none": lambda *args: {},
    "ft-llm": _ft_llm,
    "ft-vision": _ft_vision,
    "ike": _ike,
    "mend": _hypernetwork("mend"),
    "ke": _hypernetwork("ke"),
    "serac": _serac,
}


# -- measuring -------------------------------------------------------------------------------------
class MeasuredPeak:
    """``peak``: the most bytes torch held allocated at once in the block, above what it held at its start."""

    peak: int = 0


@contextlib.contextmanager
def measured_peak() -> Iterator[MeasuredPeak]:
    """The block's peak of torch CPU allocations, from the profiler's allocation records (in order)."""
    from torch.profiler import ProfilerActivity, profile

    result = MeasuredPeak()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        yield result
    records = sorted((event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"),
                     key=lambda event: event.start_ns())
    held = 0
    for record in records:
        held += record.nbytes()
        result.peak = max(result.peak, held)


__all__ = ["KNOWN_MODELS", "Plan", "Workload", "measured_peak", "meta_adapter", "model_config", "parse_memory",
           "plan"]
