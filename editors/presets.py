"""Presets: how queries are built and compared, and which hyper-parameters a method starts from.

Two presets (see ``docs/protocols.md`` for every difference, with the reference's file and line):

* ``kebench`` (default): each family's own prompt format, answer tokens as read in context,
  locality over every position that predicts a next token but the last, our method defaults;
* ``vlkeb``: the reference code's evaluation (``VLKEB/VLKEB``): no chat template
  (``"{question} {answer}"`` tokenized as one string, the image where the reference's model puts
  it), targets ``tok(answer, add_special_tokens=False)`` read at the last positions before the
  end, locality over every logits position (the last included) for methods that change weights
  and over answer positions only for in-context methods (IKE), the per-family hyper-parameters of
  the reference's ``hparams/*/*.yaml`` taken literally, KE micro-averaged over tokens,
  portability scored one hop per run. What it still does not reproduce is listed there too
  ("Not reproduced under vlkeb").

A preset only holds what differs; the adapters read its prompt form, the engine its query table
(:func:`editors.queries.query_table`: the query specs with the preset's locality positions) and the method
configs its hyper-parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: which positions of a locality query are compared (top-``k`` ids, pre- against post-edit); the
#: query table (:mod:`editors.queries`) and the presets name one of these
POSITIONS = {
    # every position that predicts a next token of the query, image positions included, up to the
    # one predicting the answer's last token (the position after it predicts nothing of the query)
    "all_but_last": "every position predicting a token of the query",
    # the reference's trainer path (trainer/MultimodalTrainer.py): the top-k of every logits position
    "all": "every position of the row, the last one included",
    # the reference's IKE (easyeditor/evaluate/evaluate.py): logits[:, :-1][:, -len(labels):]
    "answer": "the positions predicting the answer's tokens",
}


@dataclass(frozen=True)
class PromptForm:
    """How an adapter turns a query into tokens (one per run: the preset's, for that method).

    ``reference``: the reference's text form (no chat template, one string
    ``context + question + " " + answer`` tokenized at once, the image placed as the reference's
    model places it) with targets ``tok(answer_prefix + answer, add_special_tokens=False)`` read
    at the last ``len(targets)`` positions before the row's end, as the reference reads its labels;
    otherwise the family's own prompt with the answer tokens as they are in context.
    ``second_edit_special_tokens`` (reference form only): edit-one-hop's second edit (a query with
    ``second_edit``) targets ``tok(answer)`` with the tokenizer's special tokens (BOS first), read
    at the last ``len(targets)`` positions before the row's end as every reference label: the
    reference's ``edit_onehop`` branch does so for LLaVA (``easyeditor/dataset/coco_caption.py``,
    ``self.tok([port_edit_a], return_tensors="pt")``), so that edit also trains the position
    predicting the question's last token towards BOS.
    """

    reference: bool = False
    answer_prefix: str = ""
    second_edit_special_tokens: bool = False


#: the reference's FT recipe shared by FT-LLM and FT-vision (``easyeditor/trainer/algs/FT.py``):
#: torch's AdamW with its defaults, every step taken, the lr of the yaml as written
_REFERENCE_FT = {"optimizer": "adamw", "stop_loss": None, "reference_width": None, "parameters": "reference"}


@dataclass(frozen=True)
class Preset:
    """What differs between the two presets (field docs: what ``vlkeb`` sets)."""

    name: str
    #: build queries in the reference's text form (:class:`PromptForm`)
    reference_prompt: bool = False
    #: locality positions of methods that change the model's weights (FT, MEND, KE, SERAC)
    weight_locality_positions: str = "all_but_last"
    #: locality positions of methods that change the prompt (IKE)
    context_locality_positions: str = "all_but_last"
    #: families whose reference IKE labels carry a leading space (``evaluate.py``: Qwen-VL's
    #: ``tok(" " + target)``); the trainer path never does
    context_answer_prefix: Mapping[str, str] = field(default_factory=dict)
    #: families whose edit-one-hop second edit targets ``tok(answer)`` with special tokens
    #: (:class:`PromptForm`; the reference's ``edit_onehop`` branch: LLaVA)
    second_edit_special_tokens: tuple[str, ...] = ()
    #: methods averaged over tokens instead of cases (the metric's ``average="token"``)
    token_averaged: tuple[str, ...] = ()
    #: portability one hop per run (``--hop k``), as the reference's argv; else every hop pooled
    one_hop_portability: bool = False
    #: method -> family -> config values, applied over the method's defaults (``--set`` wins)
    method_settings: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    #: families the preset can build queries for (None: every family with an adapter)
    families: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for positions in (self.weight_locality_positions, self.context_locality_positions):
            if positions not in POSITIONS:
                raise ValueError(f"preset {self.name!r}: unknown locality positions {positions!r}; "
                                 f"expected one of {sorted(POSITIONS)}")

    def prompt_form(self, method: Any, family: str) -> PromptForm:
        """The prompt form of ``method`` (an :class:`~editors.methods.base.EditMethod`) on ``family``."""
        self.check_family(family)
        prefix = self.context_answer_prefix.get(family, "") if _in_context(method) else ""
        return PromptForm(reference=self.reference_prompt, answer_prefix=prefix,
                          second_edit_special_tokens=family in self.second_edit_special_tokens)

    def locality_positions(self, method: Any) -> str:
        """The positions the locality queries of ``method`` compare under this preset."""
        return self.context_locality_positions if _in_context(method) else self.weight_locality_positions

    def settings(self, method: str, family: str) -> dict[str, Any]:
        """The preset's config values for ``method`` on ``family`` (empty: the method's defaults)."""
        self.check_family(family)
        per_family = self.method_settings.get(method, {})
        return dict(per_family.get(family, per_family.get("*", {})))

    def check_family(self, family: str) -> None:
        if self.families is not None and family not in self.families:
            raise ValueError(
                f"preset {self.name!r} covers the reference's families ({', '.join(self.families)}), "
                f"not {family!r}; use --preset kebench"
            )

    def average(self, method: str) -> str:
        """The metric's ``average`` for ``method``: ``token`` or ``case``."""
        return "token" if method in self.token_averaged else "case"

    def describe(self) -> dict[str, Any]:
        """What run.json records of the preset."""
        return {
            "name": self.name,
            "reference_prompt": self.reference_prompt,
            "weight_locality_positions": self.weight_locality_positions,
            "context_locality_positions": self.context_locality_positions,
            "one_hop_portability": self.one_hop_portability,
            "second_edit_special_tokens": list(self.second_edit_special_tokens),
            "token_averaged": list(self.token_averaged),
        }


def _in_context(method: Any) -> bool:
    """Whether ``method``'s edits live in the prompt (IKE), not in the weights."""
    return bool(getattr(method, "edits_prompt", False))


KEBENCH = Preset(name="kebench")

VLKEB = Preset(
    name="vlkeb",
    reference_prompt=True,
    # trainer/MultimodalTrainer.py: topk over post_base_logits, every position of the row
    weight_locality_positions="all",
    # evaluate/evaluate.py icl_multimodal_loc_logits: logits[:, :-1][:, -len(labels):]
    context_locality_positions="answer",
    context_answer_prefix={"qwen2-vl": " "},
    # edit_onehop branch, easyeditor/dataset/coco_caption.py: tok([port_edit_a]) unless the model is
    # minigpt4 or blip2 (that branch has no Qwen-VL)
    second_edit_special_tokens=("llava",),
    token_averaged=("ke",),
    one_hop_portability=True,
    families=("llava", "blip2", "qwen2-vl"),
    method_settings={
        # hparams/FT/{llava,blip2,qwenvl}.yaml: num_steps, edit_lr; inner_params = the last layer's
        # up/down (LLaVA), fc1/fc2 (OPT), w1/w2/c_proj (Qwen-VL) weights, which each adapter names
        "ft-llm": {
            "llava": {**_REFERENCE_FT, "steps": 10, "lr": 1e-4},
            "blip2": {**_REFERENCE_FT, "steps": 15, "lr": 2e-4},
            "qwen2-vl": {**_REFERENCE_FT, "steps": 20, "lr": 1e-4},
        },
        # hparams/FT/{llava_mmproj,blip2_qformer,qwenvl_vit}.yaml
        "ft-vision": {
            "llava": {**_REFERENCE_FT, "steps": 10, "lr": 1e-4},
            "blip2": {**_REFERENCE_FT, "steps": 15, "lr": 2e-4},
            "qwen2-vl": {**_REFERENCE_FT, "steps": 25, "lr": 2e-3},
        },
        # hparams/IKE/*.yaml: k = 32 for every family
        # (easyeditor/models/ike/ike_main.py: most similar first, then the edit's own demonstration)
        "ike": {"*": {"reference_prompt": True, "k": 32}},
        # hparams/TRAINING/MEND/*.yaml: edit_lr 1e-4, lr_lr 1e-4, cloc / cedit = 1.0 / 0.1, last 3 layers
        "mend": {"*": {"edit_lr": 1e-4, "lr_lr": 1e-4, "locality_weight": 10.0, "layers": (-3, -2, -1)}},
    },
)

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (KEBENCH, VLKEB)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def select_hop(rows: Any, hop: int) -> Any:
    """The rows of a split that have a ``hop``-hop portability question, each keeping only its first
    one, as the reference's ``CaptionDataset(hop=k)`` (``easyeditor/dataset/coco_caption.py``):
    a case without one is dropped from every metric, not only from portability."""
    if not isinstance(hop, int) or isinstance(hop, bool) or not 1 <= hop <= 4:
        raise ValueError(f"--hop must be 1, 2, 3 or 4, got {hop!r}")

    def first_of_hop(items: list[dict[str, Any]] | None) -> dict[str, Any]:
        return {"portability": [item for item in items or [] if int(item.get("hop") or 1) == hop][:1]}

    kept = [index for index, items in enumerate(rows["portability"])
            if any(int(item.get("hop") or 1) == hop for item in items or [])]
    # only the portability column passes through the function: images stay the stored bytes
    return rows.select(kept).map(first_of_hop, input_columns=["portability"], features=rows.features)


def without_portability(rows: Any) -> Any:
    """The rows with no portability question: the reference without ``hop`` scores none."""
    return rows.map(lambda items: {"portability": []}, input_columns=["portability"], features=rows.features)
