"""An independent re-implementation of the reference's evaluation loop (VLKEB/VLKEB), for LLaVA,
BLIP-2 and Qwen-VL (as the tiny Qwen2-VL).

Written from the reference's code, not from ours: it imports nothing of ``editors`` or ``metric``,
only torch, transformers, sentence-transformers and the model. It reads the release files as the
reference's ``CaptionDataset`` does (``easyeditor/dataset/coco_caption.py``) and scores one case at
a time, batch size 1, every query tokenized on its own:

* input: ``tokenizer(question + " " + answer)`` with the image tokens right after BOS
  (``trainer/llava/model/language_model/llava_llama.py``, ``prepare_inputs_from_batch``);
* labels: ``tokenizer(answer, add_special_tokens=False)``, compared with
  ``logits[:-1][-len(labels):].argmax(-1)`` (``trainer/losses.py``, ``multiclass_log_probs``);
* Qwen-VL (``coco_caption.py``): ``tok(f"Picture 1: <img>{path}</img>\\n{q} {a}")``, text only
  ``tok(f"{q} {a}")``, each string whole, with Qwen2-VL's vision markers for ``<img>``/``</img>``;
* FT (``trainer/algs/FT.py``): torch AdamW at ``edit_lr`` on the yaml's ``inner_params`` (LLaVA:
  ``up_proj``/``down_proj`` of the last layer; FT-vision: the projector, BLIP-2's Q-Former,
  Qwen-VL's last ViT block's MLP) for a fixed number of steps; the weights are put back only
  when the *next* edit starts, after that case's pre-edit locality logits were taken
  (``stale_baseline=True``, the reference as written) or right after scoring
  (``stale_baseline=False``, the corrected loop);
* trainer-path locality (``trainer/MultimodalTrainer.py``, ``edit_step``): top-1 (text) / top-10
  (image) of every logits position, pre vs post, element-wise;
* IKE (``easyeditor/models/ike/``, ``easyeditor/evaluate/evaluate.py``): k demonstrations by
  ``util.semantic_search`` dot score, most similar first, then the edit's own; locality over the
  answer positions only;
* edit-one-hop (``edit_onehop`` branch: ``test_edit_onehop.py``, ``trainer/MultimodalTrainer.py``
  ``edit_step``, ``dataset/coco_caption.py``): FT edits ``src -> alt`` on the image, then, on the
  model it left, the text-only ``port_edit_q -> port_edit_a`` with a fresh optimizer, whose labels
  LLaVA builds as ``tok([port_edit_a])`` (special tokens: BOS first); ``port_q`` on the edit image is
  scored against ``tok(port_a, add_special_tokens=False)``; the weights are put back when the next
  case's first edit starts;
* the sequential gap protocol (``multihop_and_sequential`` branch: ``test_sequential_editing.py``,
  ``MultimodalTrainer.test_sequencial``): the locality logits of the first ``test_num`` cases on
  the unedited model first; then FT (or FT-vision) edits every case in order and never restores (``FT.py`` there
  has the restore commented out); once edit ``s >= gap`` is made, case ``s - gap`` is scored on the
  six scores against its stored locality logits; it stops when every stored case is scored;
* each score is the mean over cases of the per-case accuracy, in percent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

SCORE_NAMES = ("reliability", "t_generality", "i_generality", "t_locality", "i_locality", "portability")


def _edit_records(data_dir: Path, file: str, size: int | None) -> list[dict[str, Any]]:
    """What both branches' ``CaptionDataset`` start from: the first ``size`` records of ``file``,
    those without a new answer (``alt == ""``) left out."""
    records = json.loads((Path(data_dir) / file).read_text())
    return [record for record in records[:size] if record["alt"] != ""]


def load_records(data_dir: Path, file: str, size: int | None, hop: int | None) -> list[dict[str, Any]]:
    """``CaptionDataset(file, size=size, hop=hop)``: the first ``size`` records; with a hop, those
    with a ``{hop}-hop`` item, keeping the first such item."""
    kept = []
    for record in _edit_records(data_dir, file, size):
        if hop:
            items = [item for item in record.get("port_new", []) if item["port_type"] == f"{hop}-hop"]
            if not items:
                continue
            record = {**record, "port": (items[0]["Q&A"]["Question"], items[0]["Q&A"]["Answer"])}
        kept.append(record)
    return kept


def load_onehop_records(data_dir: Path, file: str, size: int | None) -> list[dict[str, Any]]:
    """The ``edit_onehop`` branch's ``CaptionDataset(file, size=size)``: each kept record's
    ``port_new`` items as (``port_edit_q``, ``port_edit_a``) second edits and (``port_q``,
    ``port_a``) questions; ``edit_step`` asserts there is exactly one of each."""
    kept = []
    for record in _edit_records(data_dir, file, size):
        items = record["port_new"]
        assert len(items) == 1, "edit twice only support one portability edit"
        kept.append({**record, "second_edit": (items[0]["port_edit_q"], items[0]["port_edit_a"]),
                     "port": (items[0]["port_q"], items[0]["port_a"])})
    return kept


class ReferenceLLaVA:
    """The tiny LLaVA driven the way the reference drives LLaVA-1.5."""

    #: IKE's labels are ``tok(ike_answer_prefix + answer, add_special_tokens=False)``
    #: (``evaluate.py``, ``prepare_multimodal_edit``: a leading space for Qwen-VL only)
    ike_answer_prefix = ""

    def ft_parameter_names(self) -> set[str]:
        """``hparams/FT/llava.yaml`` ``inner_params``: up/down projections of the last layer."""
        last = len(self.model.model.language_model.layers) - 1
        return {f"model.language_model.layers.{last}.mlp.up_proj.weight",
                f"model.language_model.layers.{last}.mlp.down_proj.weight"}

    def ft_vision_parameter_names(self) -> set[str]:
        """``hparams/FT/llava_mmproj.yaml`` ``inner_params: [mm_projector]``: every parameter whose
        name holds it (``FT.edit``), weights and biases; HF LLaVA calls it ``multi_modal_projector``."""
        return {name for name, _ in self.model.named_parameters() if "multi_modal_projector" in name}

    def __init__(self, model: Any, processor: Any, images_root: Path) -> None:
        self.model = model
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.images_root = Path(images_root)
        vision = model.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2
        # HF LLaVA drops the CLS token's feature unless the strategy is "full"
        self.image_tokens = tokens + (1 if model.config.vision_feature_select_strategy == "full" else 0)

    def image(self, path: str) -> torch.Tensor:
        picture = Image.open(self.images_root / path).convert("RGB")
        return self.image_processor(picture, return_tensors="pt")["pixel_values"]

    def logits(self, text: str, image: str | None) -> torch.Tensor:
        """``(positions, vocab)`` logits of one sample."""
        ids = self.tokenizer(text)["input_ids"]
        inputs: dict[str, torch.Tensor] = {}
        if image is not None:
            ids = ids[:1] + [self.model.config.image_token_index] * self.image_tokens + ids[1:]
            inputs["pixel_values"] = self.image(image)
        return self.model(input_ids=torch.tensor([ids]), **inputs).logits[0]

    def labels(self, answer: str, special_tokens: bool = False, prefix: str = "") -> torch.Tensor:
        return torch.tensor(self.tokenizer(prefix + answer, add_special_tokens=special_tokens)["input_ids"])

    def answer_logits(self, text: str, image: str | None, answer: str, special_tokens: bool = False,
                      prefix: str = "") -> torch.Tensor:
        labels = self.labels(answer, special_tokens, prefix)
        return self.logits(f"{text} {answer}", image)[:-1][-len(labels):]

    def predicted(self, text: str, image: str | None, answer: str, prefix: str = "") -> list[int]:
        """The argmax ids at the label positions."""
        return self.answer_logits(text, image, answer, prefix=prefix).argmax(-1).tolist()

    def accuracy(self, text: str, image: str | None, answer: str, prefix: str = "",
                 predicted: list[list[int]] | None = None) -> float:
        """The fraction of label positions whose argmax is the label; ``predicted`` collects the ids."""
        ids = self.predicted(text, image, answer, prefix)
        if predicted is not None:
            predicted.append(ids)
        return float((torch.tensor(ids) == self.labels(answer, prefix=prefix)).float().mean())


class ReferenceBLIP2(ReferenceLLaVA):
    """The tiny BLIP-2 driven as the reference drives BLIP-2 OPT (``trainer/blip2_models/blip2_opt.py``
    ``forward``): with an image, the Q-Former's query embeddings, then ``opt_tokenizer(text)`` (BOS
    first); without one, the OPT model alone on ``opt_tokenizer(text)``."""

    def __init__(self, model: Any, processor: Any, images_root: Path) -> None:
        self.model = model
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.images_root = Path(images_root)

    def ft_parameter_names(self) -> set[str]:
        """``hparams/FT/blip2.yaml`` ``inner_params``: ``fc1``/``fc2`` weights of OPT's last layer."""
        last = len(self.model.language_model.model.decoder.layers) - 1
        return {f"language_model.model.decoder.layers.{last}.fc1.weight",
                f"language_model.model.decoder.layers.{last}.fc2.weight"}

    def ft_vision_parameter_names(self) -> set[str]:
        """``hparams/FT/blip2_qformer.yaml`` ``inner_params: [Qformer]``: every parameter whose name
        holds it (``FT.edit``): LAVIS's ``Qformer.bert``, i.e. its embeddings' LayerNorm and each
        layer's self- and cross-attention and query-branch MLP (``blip2_opt.py`` sets the word and
        position embeddings and the text branch to None); not ``query_tokens``, not ``opt_proj``.
        HF BLIP-2 calls that module ``qformer`` (its ``layernorm`` is LAVIS's embeddings LayerNorm)
        and the two others ``query_tokens`` and ``language_projection``."""
        return {name for name, _ in self.model.named_parameters() if name.startswith("qformer.")}

    def logits(self, text: str, image: str | None) -> torch.Tensor:
        ids = self.tokenizer(text)["input_ids"]
        if image is None:
            return self.model.language_model(input_ids=torch.tensor([ids])).logits[0]
        queries = [self.model.config.image_token_index] * self.model.config.num_query_tokens
        return self.model(input_ids=torch.tensor([queries + ids]), pixel_values=self.image(image)).logits[0]


class ReferenceQwenVL(ReferenceLLaVA):
    """The tiny Qwen2-VL driven as the reference drives Qwen-VL (``easyeditor/dataset/coco_caption.py``
    ``collate_fn``, ``trainer/algs/FT.py`` ``forward``/``edit``: ``self.model(batch["inputs"])``):
    with an image ``tok(f"Picture 1: <img>{path}</img>\\n{q} {a}")``, Qwen2-VL's
    ``<|vision_start|>``/``<|vision_end|>`` standing for ``<img>``/``</img>`` and its processor
    expanding the image pads between them; without one ``tok(f"{q} {a}")``. Each string goes to the
    tokenizer (or processor) whole, with its default special tokens."""

    ike_answer_prefix = " "

    def __init__(self, model: Any, processor: Any, images_root: Path) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.images_root = Path(images_root)

    def ft_parameter_names(self) -> set[str]:
        """``hparams/FT/qwenvl.yaml`` ``inner_params``: ``w1``, ``w2``, ``c_proj`` of the last layer,
        Qwen-VL's whole MLP (up, gate, down: here ``up_proj``, ``gate_proj``, ``down_proj``)."""
        last = len(self.model.model.language_model.layers) - 1
        return {f"model.language_model.layers.{last}.mlp.{name}.weight" for name in ("gate_proj", "up_proj", "down_proj")}

    def ft_vision_parameter_names(self) -> set[str]:
        """``hparams/FT/qwenvl_vit.yaml``: the last ViT block's MLP, weights and biases."""
        last = len(self.model.model.visual.blocks) - 1
        return {name for name, _ in self.model.named_parameters() if name.startswith(f"model.visual.blocks.{last}.mlp.")}

    def logits(self, text: str, image: str | None) -> torch.Tensor:
        if image is None:
            return self.model(input_ids=torch.tensor([self.tokenizer(text)["input_ids"]])).logits[0]
        picture = Image.open(self.images_root / image).convert("RGB")
        inputs = self.processor(text=[f"Picture 1: <|vision_start|><|image_pad|><|vision_end|>\n{text}"],
                                images=[picture], return_tensors="pt")
        return self.model(**inputs).logits[0]


def topk_agreement(pre: torch.Tensor, post: torch.Tensor, k: int) -> float:
    """``sum(post_topk.view(-1) == pre_topk.view(-1)) / n`` (top-k of the softmax, as the reference)."""
    pre_top = torch.topk(torch.softmax(pre.float(), dim=-1), k=k, dim=-1).indices.view(-1)
    post_top = torch.topk(torch.softmax(post.float(), dim=-1), k=k, dim=-1).indices.view(-1)
    return float((pre_top == post_top).float().mean())


def _means(per_case: list[dict[str, float]], names: tuple[str, ...] = SCORE_NAMES) -> dict[str, float | None]:
    return {name: (100 * sum(c[name] for c in per_case) / len(per_case) if per_case and name in per_case[0] else None)
            for name in names}


class ReferenceFT:
    """``trainer/algs/FT.py`` on LLaVA (``hparams/FT/llava.yaml``), BLIP-2 (``blip2.yaml``,
    ``family=ReferenceBLIP2``) or Qwen-VL (``qwenvl.yaml``, ``family=ReferenceQwenVL``): the model
    cast to float32, the yaml's ``inner_params`` trained by a fresh torch AdamW per edit; with
    ``vision=True`` the FT-vision yaml's (``llava_mmproj.yaml``, ``blip2_qformer.yaml``,
    ``qwenvl_vit.yaml``)."""

    def __init__(self, model: Any, processor: Any, images_root: Path, steps: int, lr: float,
                 family: type[ReferenceLLaVA] = ReferenceLLaVA, vision: bool = False) -> None:
        self.model = copy.deepcopy(model).float()
        self.llava = family(self.model, processor, images_root)
        self.steps, self.lr = steps, lr
        names = self.llava.ft_vision_parameter_names() if vision else self.llava.ft_parameter_names()
        self.weights = {name: param for name, param in self.model.named_parameters() if name in names}
        assert set(self.weights) == names, f"missing {names - set(self.weights)}"
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in self.weights)

    def save(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().clone() for name, param in self.weights.items()}

    def load(self, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in saved.items():
                self.weights[name].copy_(value)

    def edit(self, text: str, image: str | None, answer: str, special_tokens: bool = False) -> None:
        """``num_steps`` steps on the NLL of ``labels`` read at ``logits[:-1][-len(labels):]``."""
        self.model.train()
        optimizer = torch.optim.AdamW(list(self.weights.values()), lr=self.lr)
        labels = self.llava.labels(answer, special_tokens)
        for _ in range(self.steps):
            optimizer.zero_grad()
            logits = self.llava.answer_logits(text, image, answer, special_tokens)
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
        self.model.eval()

    @torch.no_grad()
    def locality_logits(self, record: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.llava.logits(f"{record['loc']} {record['loc_ans']}", None),
                self.llava.logits(f"{record['m_loc_q']} {record['m_loc_a']}", record["m_loc"]))

    @torch.no_grad()
    def scores(self, record: dict[str, Any], base: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """The six scores of ``record`` on the model as it is, locality against ``base``."""
        llava = self.llava
        text, image = self.locality_logits(record)
        scores = {
            "reliability": llava.accuracy(record["src"], record["image"], record["alt"]),
            "t_generality": llava.accuracy(record["rephrase"], record["image"], record["alt"]),
            "i_generality": llava.accuracy(record["src"], record["image_rephrase"], record["alt"]),
            "t_locality": topk_agreement(base[0], text, 1),
            "i_locality": topk_agreement(base[1], image, 10),
        }
        if "port" in record:
            scores["portability"] = llava.accuracy(record["port"][0], record["image"], record["port"][1])
        return scores


def reference_ft(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]], steps: int, lr: float,
                 stale_baseline: bool, family: type[ReferenceLLaVA] = ReferenceLLaVA,
                 vision: bool = False) -> dict[str, float | None]:
    """The reference's FT-LLM (FT-vision with ``vision``) on LLaVA, BLIP-2 or Qwen-VL, scored as
    ``MultimodalTrainer`` (main branch)."""
    ft = ReferenceFT(model, processor, images_root, steps, lr, family, vision)
    saved: dict[str, torch.Tensor] | None = None
    per_case = []
    for record in records:
        base = ft.locality_logits(record)
        # FT.edit: restore the previous edit's weights only now, then train
        if saved is not None:
            ft.load(saved)
        saved = ft.save()
        ft.edit(record["src"], record["image"], record["alt"])
        per_case.append(ft.scores(record, base))
        if not stale_baseline:
            ft.load(saved)
            saved = None
    return _means(per_case)


def reference_ft_onehop(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]], steps: int,
                        lr: float, predicted: list[list[int]] | None = None) -> dict[str, float | None]:
    """The ``edit_onehop`` branch's FT-LLM on LLaVA: both edits, then ``port_q`` (``edit_step``).

    The second edit's labels are ``tok([port_edit_a])`` with BOS, as the branch builds them for LLaVA
    (for BLIP-2 and MiniGPT-4 it builds them without). ``predicted`` collects each case's argmax ids
    at ``port_a``'s positions."""
    ft = ReferenceFT(model, processor, images_root, steps, lr)
    original = ft.save()
    per_case = []
    for record in records:
        ft.load(original)  # the first edit's FT.edit restores what it saved for the case before
        ft.edit(record["src"], record["image"], record["alt"])
        question, answer = record["second_edit"]
        ft.edit(question, None, answer, special_tokens=True)
        with torch.no_grad():
            per_case.append({"edit_onehop": ft.llava.accuracy(record["port"][0], record["image"], record["port"][1],
                                                              predicted=predicted)})
    ft.load(original)
    return _means(per_case, ("edit_onehop",))


def reference_ft_gap(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]], steps: int,
                     lr: float, gap: int, test_num: int, vision: bool = False) -> dict[str, float | None]:
    """``MultimodalTrainer.test_sequencial(test_num=test_num, gap_num=gap)`` with FT-LLM (or, with
    ``vision``, FT-vision: ``test_LLaVA_FT_VIS``, ``hparams/FT/llava_mmproj.yaml``) on LLaVA."""
    ft = ReferenceFT(model, processor, images_root, steps, lr, vision=vision)
    stored = [(record, ft.locality_logits(record)) for record in records[:test_num]]
    per_case = []
    for step, record in enumerate(records):
        ft.edit(record["src"], record["image"], record["alt"])  # never restored on that branch
        if step >= gap:
            scored, base = stored.pop(0)
            per_case.append(ft.scores(scored, base))
        if not stored:
            break
    return _means(per_case)


def ike_sentences(train: list[dict[str, Any]]) -> list[str]:
    """``encode_ike_facts_multimodal`` (``easyeditor/models/ike/util.py``): three per train record."""
    sentences = []
    for record in train:
        new_fact = record["src"] + " " + record["alt"]
        sentences.append(f"New Fact: {new_fact}\nPrompt: {new_fact}\n\n")
        sentences.append(f"New Fact: {new_fact}\nPrompt: {record['rephrase']} {record['alt']}\n\n")
        sentences.append(f"New Fact: {new_fact}\nPrompt: {record['loc']} {record['loc_ans']}\n\n")
    return sentences


def _ike_case(llava: ReferenceLLaVA, record: dict[str, Any], icl: str,
              predicted: dict[str, list[list[int]]] | None) -> dict[str, float]:
    """``compute_icl_multimodal_edit_quality`` (post-edit) of one record, context ``icl``: every
    label ``tok(llava.ike_answer_prefix + answer)`` (``prepare_multimodal_edit``); ``predicted``
    collects each accuracy score's argmax ids, by score name."""
    src, alt = record["src"], record["alt"]
    prefix = llava.ike_answer_prefix

    def accuracy(name: str, question: str, image: str | None, answer: str) -> float:
        collected = None if predicted is None else predicted.setdefault(name, [])
        return llava.accuracy(prompt(question), image, answer, prefix, collected)

    def prompt(question: str) -> str:
        return icl + f"New Fact: {src} {alt}\nPrompt: {question}"

    def answer_only(question: str, image: str | None, answer: str, topk: int) -> float:
        # icl_multimodal_loc_logits: pre without any context, post with it, answer positions only
        pre = llava.answer_logits(question, image, answer, prefix=prefix)
        post = llava.answer_logits(prompt(question), image, answer, prefix=prefix)
        return topk_agreement(pre, post, topk)

    scores = {
        "reliability": accuracy("reliability", src, record["image"], alt),
        "t_generality": accuracy("t_generality", record["rephrase"], record["image"], alt),
        "i_generality": accuracy("i_generality", src, record["image_rephrase"], alt),
        "t_locality": answer_only(record["loc"], None, record["loc_ans"], 1),
        "i_locality": answer_only(record["m_loc_q"], record["m_loc"], record["m_loc_a"], 10),
    }
    if "port" in record:
        scores["portability"] = accuracy("portability", record["port"][0], record["image"], record["port"][1])
    return scores


def reference_ike(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]],
                  train: list[dict[str, Any]], sentence_model: Any, k: int,
                  family: type[ReferenceLLaVA] = ReferenceLLaVA,
                  predicted: dict[str, list[list[int]]] | None = None) -> dict[str, float | None]:
    """The reference's IKE on LLaVA, BLIP-2 or Qwen-VL (``apply_ike_to_multimodal_model`` +
    ``compute_icl_multimodal_edit_quality``; BLIP-2 through ``prepare_multimodal_edit``'s last
    branch, labels without a prefix, and ``Blip2OPT.forward``: the query embeddings before the
    whole text, context included)."""
    from sentence_transformers import util

    llava = family(model, processor, images_root)
    stored = ike_sentences(train)
    stored_embeddings = util.normalize_embeddings(torch.tensor(sentence_model.encode(stored)))
    per_case = []
    with torch.no_grad():
        for record in records:
            new_fact = f"{record['src']} {record['alt']}"
            query = util.normalize_embeddings(
                torch.tensor(sentence_model.encode(f"New Fact: {new_fact}\nPrompt: {new_fact}\n\n")).unsqueeze(0)
            )
            hit = util.semantic_search(query, stored_embeddings, score_function=util.dot_score, top_k=k)[0]
            icl = "".join([stored[h["corpus_id"]] for h in hit] + [f"New Fact: {new_fact}\nPrompt: {new_fact}\n\n"])
            per_case.append(_ike_case(llava, record, icl, predicted))
    return _means(per_case)


def reference_none(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]],
                   family: type[ReferenceLLaVA] = ReferenceLLaVA,
                   predicted: dict[str, list[list[int]]] | None = None) -> dict[str, float | None]:
    """The unedited model: portability as the reference's ``test_base_portability.py``
    (``multihop_and_sequential`` branch, ``MultimodalTrainer.knowledge_qa``); beside it (ours, in the
    same text form) the edit queries against the old answer, and locality, 100 with nothing edited.
    ``predicted`` collects each accuracy score's argmax ids, by score name."""
    llava = family(model, processor, images_root)
    per_case = []
    with torch.no_grad():
        for record in records:
            queries = {"reliability": (record["src"], record["image"], record["pred"]),
                       "t_generality": (record["rephrase"], record["image"], record["pred"]),
                       "i_generality": (record["src"], record["image_rephrase"], record["pred"])}
            if "port" in record:
                queries["portability"] = (record["port"][0], record["image"], record["port"][1])
            scores = {"t_locality": 1.0, "i_locality": 1.0}
            for name, (question, image, answer) in queries.items():
                collected = None if predicted is None else predicted.setdefault(name, [])
                scores[name] = llava.accuracy(question, image, answer, predicted=collected)
            per_case.append(scores)
    return _means(per_case)


def reference_none_onehop(model: Any, processor: Any, images_root: Path,
                          records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The unedited model on edit-one-hop's question ``port_q`` (ours: the ``edit_onehop`` branch has
    no unedited run; the text form, labels and averaging are the branch's)."""
    llava = ReferenceLLaVA(model, processor, images_root)
    with torch.no_grad():
        per_case = [{"edit_onehop": llava.accuracy(record["port"][0], record["image"], record["port"][1])}
                    for record in records]
    return _means(per_case, ("edit_onehop",))
