"""An independent re-implementation of the reference's evaluation loop (VLKEB/VLKEB), for LLaVA.

Written from the reference's code, not from ours: it imports nothing of ``editors`` or ``metric``,
only torch, transformers, sentence-transformers and the model. It reads the release files as the
reference's ``CaptionDataset`` does (``easyeditor/dataset/coco_caption.py``) and scores one case at
a time, batch size 1, every query tokenized on its own:

* input: ``tokenizer(question + " " + answer)`` with the image tokens right after BOS
  (``trainer/llava/model/language_model/llava_llama.py``, ``prepare_inputs_from_batch``);
* labels: ``tokenizer(answer, add_special_tokens=False)``, compared with
  ``logits[:-1][-len(labels):].argmax(-1)`` (``trainer/losses.py``, ``multiclass_log_probs``);
* FT (``trainer/algs/FT.py``): torch AdamW at ``edit_lr`` on ``up_proj``/``down_proj`` of the last
  layer for a fixed number of steps; the weights are put back only when the *next* edit starts,
  after that case's pre-edit locality logits were taken (``stale_baseline=True``, the reference
  as written) or right after scoring (``stale_baseline=False``, the corrected loop);
* trainer-path locality (``trainer/MultimodalTrainer.py``, ``edit_step``): top-1 (text) / top-10
  (image) of every logits position, pre vs post, element-wise;
* IKE (``easyeditor/models/ike/``, ``easyeditor/evaluate/evaluate.py``): k demonstrations by
  ``util.semantic_search`` dot score, most similar first, then the edit's own; locality over the
  answer positions only;
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


def load_records(data_dir: Path, file: str, size: int | None, hop: int | None) -> list[dict[str, Any]]:
    """``CaptionDataset(file, size=size, hop=hop)``: the first ``size`` records; with a hop, those
    with a ``{hop}-hop`` item, keeping the first such item."""
    records = json.loads((Path(data_dir) / file).read_text())
    if size is not None:
        records = records[:size]
    kept = []
    for record in records:
        if record["alt"] == "":
            continue
        if hop:
            items = [item for item in record.get("port_new", []) if item["port_type"] == f"{hop}-hop"]
            if not items:
                continue
            record = {**record, "port": (items[0]["Q&A"]["Question"], items[0]["Q&A"]["Answer"])}
        kept.append(record)
    return kept


class ReferenceLLaVA:
    """The tiny LLaVA driven the way the reference drives LLaVA-1.5."""

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

    def labels(self, answer: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer(answer, add_special_tokens=False)["input_ids"])

    def answer_logits(self, text: str, image: str | None, answer: str) -> torch.Tensor:
        labels = self.labels(answer)
        return self.logits(f"{text} {answer}", image)[:-1][-len(labels):]

    def accuracy(self, text: str, image: str | None, answer: str) -> float:
        return float((self.answer_logits(text, image, answer).argmax(-1) == self.labels(answer)).float().mean())


def topk_agreement(pre: torch.Tensor, post: torch.Tensor, k: int) -> float:
    """``sum(post_topk.view(-1) == pre_topk.view(-1)) / n`` (top-k of the softmax, as the reference)."""
    pre_top = torch.topk(torch.softmax(pre.float(), dim=-1), k=k, dim=-1).indices.view(-1)
    post_top = torch.topk(torch.softmax(post.float(), dim=-1), k=k, dim=-1).indices.view(-1)
    return float((pre_top == post_top).float().mean())


def _means(per_case: list[dict[str, float]]) -> dict[str, float | None]:
    return {name: (100 * sum(c[name] for c in per_case) / len(per_case) if per_case and name in per_case[0] else None)
            for name in SCORE_NAMES}


def reference_ft(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]], steps: int, lr: float,
                 stale_baseline: bool) -> dict[str, float | None]:
    """The reference's FT-LLM on LLaVA (``hparams/FT/llava.yaml``), scored as ``MultimodalTrainer``."""
    model = copy.deepcopy(model).float()
    llava = ReferenceLLaVA(model, processor, images_root)
    last = len(model.model.language_model.layers) - 1
    names = {f"model.language_model.layers.{last}.mlp.up_proj.weight",
             f"model.language_model.layers.{last}.mlp.down_proj.weight"}
    weights = {name: param for name, param in model.named_parameters() if name in names}
    assert set(weights) == names, f"missing {names - set(weights)}"
    for name, param in model.named_parameters():
        param.requires_grad_(name in weights)
    saved: dict[str, torch.Tensor] | None = None
    per_case = []
    for record in records:
        model.eval()
        with torch.no_grad():
            base_text = llava.logits(f"{record['loc']} {record['loc_ans']}", None)
            base_image = llava.logits(f"{record['m_loc_q']} {record['m_loc_a']}", record["m_loc"])
        # FT.edit: restore the previous edit's weights only now, then train
        if saved is not None:
            with torch.no_grad():
                for name, value in saved.items():
                    weights[name].copy_(value)
        saved = {name: param.detach().clone() for name, param in weights.items()}
        model.train()
        optimizer = torch.optim.AdamW(list(weights.values()), lr=lr)
        labels = llava.labels(record["alt"])
        for _ in range(steps):
            optimizer.zero_grad()
            logits = llava.answer_logits(record["src"], record["image"], record["alt"])
            torch.nn.functional.cross_entropy(logits, labels).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            scores = {
                "reliability": llava.accuracy(record["src"], record["image"], record["alt"]),
                "t_generality": llava.accuracy(record["rephrase"], record["image"], record["alt"]),
                "i_generality": llava.accuracy(record["src"], record["image_rephrase"], record["alt"]),
                "t_locality": topk_agreement(base_text, llava.logits(f"{record['loc']} {record['loc_ans']}", None), 1),
                "i_locality": topk_agreement(
                    base_image, llava.logits(f"{record['m_loc_q']} {record['m_loc_a']}", record["m_loc"]), 10
                ),
            }
            if "port" in record:
                scores["portability"] = llava.accuracy(record["port"][0], record["image"], record["port"][1])
        per_case.append(scores)
        if not stale_baseline:
            with torch.no_grad():
                for name, value in saved.items():
                    weights[name].copy_(value)
            saved = None
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


def _ike_case(llava: ReferenceLLaVA, record: dict[str, Any], icl: str) -> dict[str, float]:
    """``compute_icl_multimodal_edit_quality`` (post-edit) of one record, context ``icl``."""
    src, alt = record["src"], record["alt"]

    def prompt(question: str) -> str:
        return icl + f"New Fact: {src} {alt}\nPrompt: {question}"

    def answer_only(question: str, image: str | None, answer: str, topk: int) -> float:
        # icl_multimodal_loc_logits: pre without any context, post with it, answer positions only
        pre = llava.answer_logits(question, image, answer)
        post = llava.answer_logits(prompt(question), image, answer)
        return topk_agreement(pre, post, topk)

    scores = {
        "reliability": llava.accuracy(prompt(src), record["image"], alt),
        "t_generality": llava.accuracy(prompt(record["rephrase"]), record["image"], alt),
        "i_generality": llava.accuracy(prompt(src), record["image_rephrase"], alt),
        "t_locality": answer_only(record["loc"], None, record["loc_ans"], 1),
        "i_locality": answer_only(record["m_loc_q"], record["m_loc"], record["m_loc_a"], 10),
    }
    if "port" in record:
        scores["portability"] = llava.accuracy(prompt(record["port"][0]), record["image"], record["port"][1])
    return scores


def reference_ike(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]],
                  train: list[dict[str, Any]], sentence_model: Any, k: int) -> dict[str, float | None]:
    """The reference's IKE on LLaVA (``apply_ike_to_multimodal_model`` +
    ``compute_icl_multimodal_edit_quality``)."""
    from sentence_transformers import util

    llava = ReferenceLLaVA(model, processor, images_root)
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
            per_case.append(_ike_case(llava, record, icl))
    return _means(per_case)


def reference_none(model: Any, processor: Any, images_root: Path, records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The unedited model: portability as the reference's ``test_base_portability.py``
    (``multihop_and_sequential`` branch, ``MultimodalTrainer.knowledge_qa``); beside it (ours, in the
    same text form) the edit queries against the old answer, and locality, 100 with nothing edited."""
    llava = ReferenceLLaVA(model, processor, images_root)
    per_case = []
    with torch.no_grad():
        for record in records:
            scores = {
                "reliability": llava.accuracy(record["src"], record["image"], record["pred"]),
                "t_generality": llava.accuracy(record["rephrase"], record["image"], record["pred"]),
                "i_generality": llava.accuracy(record["src"], record["image_rephrase"], record["pred"]),
                "t_locality": 1.0,
                "i_locality": 1.0,
            }
            if "port" in record:
                scores["portability"] = llava.accuracy(record["port"][0], record["image"], record["port"][1])
            per_case.append(scores)
    return _means(per_case)
