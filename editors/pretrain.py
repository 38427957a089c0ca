"""Pretrain a tiny LVLM on the *pre-edit* world, so that editing it has something to change.

The training data is what the model should "know" before any edit, from the train AND test
splits: every edit question and its rephrase answered with the old answer ``pred`` on both the
edit image and the I-Generality image, the I-Locality questions on their images, the text-only
T-Locality questions; with the world's knowledge graph (``<data>/../kg``), every fact as a text
question and the "the <type> in the image" chains from e1 that portability asks about; and
in-context examples in IKE's prompt format (a new fact in the context, answered from it) so that
the model learns to use facts it reads, as real LLMs do.

Two stages, as real LVLMs are made (a pretrained vision encoder, then the language model trained
on top): first the vision side alone (vision tower + projector) learns to tell the world's
entities apart, a classifier over each image's mean projected token, for ``vision_steps`` cheap
steps; then the whole model learns the queries. Without the first stage the language-model loss
has to discover the entities through four narrow layers and takes several times longer.

The second loop is nanoGPT-short: sample a batch, teacher-forced loss on the answer tokens (+ end
of answer, + the context's tokens in in-context batches), AdamW with warmup and cosine decay, clip,
step; a checkpoint (safetensors + JSON, no pickle) every ``checkpoint_every`` steps lets a killed
run resume where it stopped.

Reading a fact in context is learnt late and at a seed-dependent step (a phase change, as
induction is in larger models): one seed reads 93% of the new answers after the schedule, another
80%. So the result is checked, not trusted: the abilities the methods need
(:mod:`editors.abilities`) are measured at the end, and while one is short training goes on for at
most ``max_extensions`` bounded extensions; a model still short fails loudly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from editors.abilities import MissingAbilityError, shortfalls
from editors.adapters import ModelAdapter, Query, load_adapter
from editors.cases import CaseSequence, EditCase
from editors.forward import full_logits, prefix_then_rows, shared_prefix_length
from editors.losses import answer_accuracies
from editors.methods.ike import case_demonstrations, in_context_prompt
from editors.queries import spec
from editors.tiny import BUILDERS, TinySpec, build_tiny_model
from kebench_hf.construct.mmkg import KnowledgeGraph, read_mmkg
from kebench_hf.construct.questions import image_subject, relation_noun, relation_question
from kebench_hf.construct.report import Report
from kebench_hf.hub import is_hub_id
from kebench_hf.world import world_fingerprint

logger = logging.getLogger(__name__)

#: a killed run's state: tensors (model, optimizer) as safetensors, the rest as JSON; never pickle
CHECKPOINT_TENSORS = "pretrain-checkpoint.safetensors"
CHECKPOINT_STATE = "pretrain-checkpoint.json"
SUMMARY = "pretrain.json"
#: bump when the data or the loop changes, so cached default models are rebuilt
RECIPE = 12
#: contexts this long or longer are read once per case in training (shorter ones, a fact alone at
#: ~18 tokens, cost less repeated in one forward than read in two: measured break-even 18-50 tokens)
SHARED_CONTEXT_MIN_TOKENS = 32
#: how often each group of plain queries is drawn, relative to the others
GROUP_WEIGHTS = {"pre_edit": 0.7, "knowledge": 0.1, "chains": 0.2}


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = "llava"
    steps: int = 2200
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 250
    #: every ``ike_every``-th step trains in-context edits (IKE's prompt format); 0: never
    ike_every: int = 2
    ike_cases_per_step: int = 12
    max_demonstrations: int = 32
    #: share of in-context batches with the new fact alone, no demonstrations: cheap, and where
    #: reading a fact from the context is learnt first
    fact_only_fraction: float = 0.7
    #: share of training demonstrations taken from cases asking the same question as the edit, as
    #: IKE's retrieval returns them: the model must read the *last* fact, not any fact that fits
    same_question_fraction: float = 0.75
    #: in-context training reads facts on the cases of every split, not only the train split's
    #: (random answers, never a case's own edit target)
    read_on_every_case: bool = True
    #: stage 1: steps (batches of ``vision_batch_size`` images) training the vision side alone
    vision_steps: int = 1000
    vision_batch_size: int = 64
    vision_lr: float = 3e-3
    #: every ``probe_every`` steps the abilities are measured on ``probe_cases`` test cases (0: never)
    probe_every: int = 0
    probe_cases: int = 40
    #: after the schedule, measure the abilities the methods need (``editors.abilities``) and while
    #: one is short train on, up to ``max_extensions`` times ``extension_steps`` steps; then fail
    check_abilities: bool = True
    extension_steps: int = 400
    max_extensions: int = 3
    extension_lr: float = 1e-3


#: a recipe of minutes on the ``tiny`` world: the old answers, little reading of facts in context
#: (the test fixture ``tiny_llava``; ``benchmarks/bench_families.py``); at most 8 demonstrations,
#: which every family's positions hold
SHORT_RECIPE = PretrainConfig(steps=300, max_demonstrations=8, vision_steps=200, ike_every=4, ike_cases_per_step=2,
                              fact_only_fraction=0.0, same_question_fraction=0.0, check_abilities=False)


def pre_edit_queries(case: EditCase) -> list[Query]:
    """What the model must answer before the edit: the old answer and the locality answers."""
    old = [spec(name).query(case, answer=case.pred) for name in ("reliability", "t_generality", "i_generality")]
    # the rephrase on the other image too, which no metric asks
    return [*old, Query(case.rephrase, case.pred, case.image_rephrase),
            *(spec(name).query(case) for name in ("i_locality", "t_locality"))]


#: the queries read after an IKE context, by name (in the order pretraining has always drawn them)
IN_CONTEXT = ("reliability", "t_generality", "i_generality", "i_locality", "t_locality")


def in_context_queries(case: EditCase, context: str) -> list[Query]:
    """``case``'s queries read after an IKE context holding its new fact (:data:`IN_CONTEXT`): the
    edited ones answer ``alt``, the unrelated ones keep their answers."""
    return [spec(name).query(case, context=context) for name in IN_CONTEXT]


@dataclass
class World:
    """The edit cases of a KEBench directory, and the knowledge graph it was built from, if any."""

    cases: dict[str, list[EditCase]]
    #: the same splits as dataset rows (IKE's retrieval reads the train split's texts)
    rows: dict[str, object]
    #: entity id (the image's directory, as in MMKG) of each case's e1, parallel to ``cases``
    subjects: dict[str, list[str]]
    kg: KnowledgeGraph | None
    #: every distinct image of the cases (edit, I-Generality, I-Locality) by its path, with its entity
    images: dict[str, tuple[Image.Image, str]]


#: the columns holding the paths of a case's edit, I-Generality and I-Locality images
IMAGE_PATH_COLUMNS = ("image_path", "image_rephrase_path", "m_loc_path")


def read_world(data_dir: str | Path) -> World:
    """The ``edit`` config's cases per split (images decoded) and the sibling ``kg/`` if present."""
    from kebench_hf.builder import load_kebench

    if not Path(data_dir).exists() and not is_hub_id(str(data_dir)):
        raise FileNotFoundError(f"KEBench data {data_dir}: no such directory, and not a hub repo id (owner/name)")
    splits = load_kebench(data_dir, "edit")
    cases = {split: list(CaseSequence(rows)) for split, rows in splits.items()}
    subjects = {split: [_entity(p) for p in rows["image_path"]] for split, rows in splits.items()}
    images = {}
    for split, rows in splits.items():
        paths = zip(*(rows[column] for column in IMAGE_PATH_COLUMNS), strict=True)
        for case, case_paths in zip(cases[split], paths, strict=True):
            for image, path in zip((case.image, case.image_rephrase, case.m_loc), case_paths, strict=True):
                images[path] = (image, _entity(path))
    kg_dir = Path(data_dir).parent / "kg"
    kg = read_mmkg(kg_dir, Report()) if (kg_dir / "names.tsv").exists() else None
    if kg is None:
        logger.info("no knowledge graph at %s: pretraining on the edit cases only", kg_dir)
    return World(cases, splits, subjects, kg, images)


def _entity(image_path: str) -> str:
    """The entity an image shows: its directory, as in MMKG (``m.0abc/google_1.jpg``)."""
    return Path(image_path).parts[0]


def knowledge_queries(kg: KnowledgeGraph) -> list[Query]:
    """Every unambiguous fact of the graph as a text question (T-Locality asks these)."""
    names = kg.entities
    return [
        Query(relation_question(relation, names[head].name), names[tail].name)
        for (head, relation), tail in kg.functional.items()
    ]


def chain_queries(kg: KnowledgeGraph, subject: str, images: list[Image.Image], max_hops: int = 4) -> list[Query]:
    """Questions about "the <type> in the image" along every relation path from ``subject``,
    answered from the pre-edit graph: what portability questions ask, before the edit."""
    found = []
    frontier: list[tuple[str, str]] = [(image_subject(kg.entities[subject].type), subject)]
    for _ in range(max_hops):
        extended = []
        for phrase, entity in frontier:
            for relation in sorted(kg.relations_of(entity)):
                tail = kg.functional[(entity, relation)]
                answer = kg.entities[tail].name
                found += [Query(relation_question(relation, phrase), answer, image) for image in images]
                extended.append((relation_noun(relation, phrase), tail))
        frontier = extended
    return found


def answer_token_accuracy(adapter: ModelAdapter, queries: list[Query], batch_size: int = 64) -> float:
    """Mean over queries of the fraction of answer tokens predicted by argmax (teacher forced)."""
    scores = []
    adapter.model.eval()
    with torch.no_grad():
        for start in range(0, len(queries), batch_size):
            batch = adapter.encode(queries[start : start + batch_size]).to(adapter.device)
            scores += answer_accuracies(full_logits(adapter, batch), batch, range(len(batch.target_ids)))
    return sum(scores) / len(scores)


def training_loss(adapter: ModelAdapter, queries: list[Query]) -> torch.Tensor:
    """Cross-entropy of the answer tokens (+ end of answer), plus that of the context tokens when
    there is a context: predicting the demonstrations' answers teaches copying from a fact in context.

    Rows that share a long context (a case's queries after its demonstrations) read it once,
    through its KV cache: the same loss and gradients as one full forward of every row (the
    context's tokens count once per row, as there), at a fraction of the cost.
    """
    batch = adapter.encode(queries, with_eos=True)
    batches = [batch]
    share = adapter.supports_prefix_cache and max(batch.extra["context_lengths"]) >= SHARED_CONTEXT_MIN_TOKENS
    if share:
        groups: dict[str, list[Query]] = {}
        for query in queries:
            groups.setdefault(query.context, []).append(query)
        batches = [adapter.encode(group, with_eos=True) for group in groups.values()]
    sums = {"answers": 0.0, "context": 0.0}
    counts = {"answers": 0, "context": 0}

    def add(part: str, logits: torch.Tensor, targets: torch.Tensor, weight: int = 1) -> None:
        sums[part] = sums[part] + weight * F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(),
                                                           reduction="sum")
        counts[part] += weight * int((targets >= 0).sum())

    for batch in batches:
        batch = batch.to(adapter.device)
        ids = batch.inputs["input_ids"]
        prefix = shared_prefix_length(adapter, batch) if share else 0
        if prefix:
            prefix_logits, logits = prefix_then_rows(adapter, batch, prefix, keep_prefix_logits=True)
            add("context", prefix_logits[0], ids[0, 1 : prefix + 1], weight=len(ids))
        else:
            logits = full_logits(adapter, batch)
        answers = torch.full(logits.shape[:2], -100, dtype=torch.long, device=ids.device)
        context = torch.full_like(answers, -100)
        for row, (span, target, valid) in enumerate(
            zip(batch.answer_slices, batch.target_ids, batch.valid_positions, strict=True)
        ):
            answers[row, span.start - prefix : span.stop - prefix] = torch.tensor(target, device=ids.device)
            before_query = valid.start  # 0 without context
            context[row, : max(before_query - prefix, 0)] = ids[row, prefix + 1 : before_query + 1]
        add("answers", logits, answers)
        add("context", logits, context)
    loss = sums["answers"] / counts["answers"]
    return loss + sums["context"] / counts["context"] if counts["context"] else loss


def write_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """The model's and the optimizer's tensors as safetensors, the rest (rng, step, config) as JSON;
    the JSON is written last and names the step, so a crash mid-write leaves the previous checkpoint."""
    from safetensors.torch import save_file

    tensors = {f"model.{name}": value.detach().contiguous().clone() for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{key}": torch.as_tensor(value).clone() for key, value in values.items()})
    save_file(tensors, out / (CHECKPOINT_TENSORS + ".partial"))
    os.replace(out / (CHECKPOINT_TENSORS + ".partial"), out / CHECKPOINT_TENSORS)
    version, internal, gauss = state["rng"]
    document = {**state, "rng": [version, list(internal), gauss], "param_groups": optimizer_state["param_groups"]}
    (out / (CHECKPOINT_STATE + ".partial")).write_text(json.dumps(document))
    os.replace(out / (CHECKPOINT_STATE + ".partial"), out / CHECKPOINT_STATE)


def read_checkpoint_state(out: Path) -> dict | None:
    """The JSON half of ``out``'s checkpoint (rng state as :func:`random.setstate` takes it), or None."""
    path = out / CHECKPOINT_STATE
    if not path.exists() or not (out / CHECKPOINT_TENSORS).exists():
        return None
    try:
        state = json.loads(path.read_text())
        version, internal, gauss = state["rng"]
        state["rng"] = (version, tuple(internal), gauss)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        logger.warning("%s is unreadable (%s); starting over", path, error)
        return None
    return state


def load_checkpoint_tensors(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Restore the model's and optimizer's tensors written by :func:`write_checkpoint` (no pickle)."""
    from safetensors.torch import load_file

    tensors = load_file(out / CHECKPOINT_TENSORS)
    model.load_state_dict({name[len("model."):]: value for name, value in tensors.items() if name.startswith("model.")})
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            optimizer_state.setdefault(int(index), {})[key] = value
    groups = json.loads((out / CHECKPOINT_STATE).read_text())["param_groups"]
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})


def learning_rate(step: int, steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to zero at ``steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train_vision_side(adapter: ModelAdapter, world: World, config: PretrainConfig) -> float:
    """Stage 1: train the vision tower and projector to tell the entities of ``world.images``
    apart (a linear classifier, thrown away after, over each image's mean projected token).
    Returns the classifier's accuracy over all the images at the end."""
    paths = sorted(world.images)
    images = [world.images[path][0] for path in paths]
    entities = {entity: index for index, entity in enumerate(sorted({entity for _, entity in world.images.values()}))}
    labels = torch.tensor([entities[world.images[path][1]] for path in paths], device=adapter.device)
    model = adapter.model
    # image features are language-model input embeddings
    classifier = torch.nn.Linear(adapter.input_embeddings().embedding_dim, len(entities)).to(adapter.device)
    # Only the vision side gets gradients; AdamW leaves parameters without one untouched.
    optimizer = torch.optim.AdamW([*model.parameters(), *classifier.parameters()], lr=config.vision_lr,
                                  weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for step in tqdm(range(config.vision_steps), desc=f"pretrain {config.arch}: vision side"):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.vision_steps, config.vision_lr, config.warmup_steps)
        batch = torch.randint(len(images), (config.vision_batch_size,), generator=generator).tolist()
        logits = classifier(adapter.image_features([images[index] for index in batch]))
        F.cross_entropy(logits, labels[batch]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([classifier(adapter.image_features(images[start : start + 256])).argmax(-1)
                               for start in range(0, len(images), 256)])
    return round((predicted == labels).float().mean().item(), 4)


class Mixture:
    """Samples training batches: plain queries drawn from weighted groups, and every
    ``ike_every``-th step a batch of in-context queries (IKE's prompt, random demonstrations)."""

    def __init__(self, world: World, config: PretrainConfig) -> None:
        every = [(case, subject) for split in world.cases for case, subject in
                 zip(world.cases[split], world.subjects[split], strict=True)]
        self.groups: dict[str, list[Query]] = {
            "pre_edit": [query for case, _ in every for query in pre_edit_queries(case)],
        }
        if world.kg is not None:
            self.groups["knowledge"] = knowledge_queries(world.kg)
            self.groups["chains"] = [
                query for case, subject in every if subject in world.kg.entities
                for query in chain_queries(world.kg, subject, [case.image])
            ]
        self.ike_cases = world.cases.get("train", [])
        #: the cases read after a new fact in training: with ``read_on_every_case`` every split's
        #: (their images too must learn that a fact in context overrides what the model knows); the
        #: demonstrations always come from the train split, as IKE retrieves them
        self.reading_cases = [case for case, _ in every] if config.read_on_every_case else self.ike_cases
        self.ike_cases_by_question: dict[str, list[EditCase]] = {}
        for case in self.ike_cases:
            self.ike_cases_by_question.setdefault(case.src, []).append(case)
        self.demonstrations = [demo for case in self.ike_cases for demo in case_demonstrations(_record(case))]
        #: every entity name the cases answer with: the new facts of in-context training draw from them
        self.answers = sorted({answer for split in world.cases.values() for case in split
                               for answer in (case.pred, case.alt)})
        self.config = config

    def counts(self) -> dict[str, int]:
        return {**{name: len(queries) for name, queries in self.groups.items()}, "in_context_cases": len(self.ike_cases)}

    def texts(self) -> list[str]:
        """Every text the model will read, for training its tokenizer."""
        queries = [query for group in self.groups.values() for query in group]
        texts = [text for query in queries for text in (query.question, " " + query.answer)]
        return texts + self.demonstrations + [" " + case.alt for case in self.ike_cases]

    def _other_answer(self, case: EditCase, rng: random.Random) -> str:
        """A random entity name other than ``case``'s old answer and its edit target."""
        while True:
            answer = rng.choice(self.answers)
            if answer not in (case.pred, case.alt) or len(self.answers) <= 2:
                return answer

    def _in_context_training(self, case: EditCase, rng: random.Random, demonstrations: int) -> list[Query]:
        """``case``'s queries after ``demonstrations`` train demonstrations and its new fact, every
        fact (the case's and the demonstrations') with a random answer: a fixed ``alt`` could be
        memorised, a random one can only be read."""
        demos = []
        for _ in range(demonstrations):
            # (no draw when the option is off: a recipe without it keeps its random stream)
            similar = self.config.same_question_fraction and rng.random() < self.config.same_question_fraction
            shown = rng.choice(self.ike_cases_by_question.get(case.src, self.ike_cases) if similar else self.ike_cases)
            record = {**_record(shown), "alt": self._other_answer(shown, rng)}
            demos.append(rng.choice(case_demonstrations(record)))
        case = replace(case, alt=self._other_answer(case, rng))
        return in_context_queries(case, in_context_prompt(demos, case.src, case.alt))

    def batch(self, step: int, rng: random.Random) -> list[Query]:
        config = self.config
        if self.ike_cases and config.ike_every and step % config.ike_every == config.ike_every - 1:
            # log-uniform over 0..max: mostly short contexts (cheap, where copying is learnt first)
            most = min(config.max_demonstrations, len(self.demonstrations))
            demonstrations = int(2 ** rng.uniform(0, math.log2(most + 1))) - 1
            if config.fact_only_fraction and rng.random() < config.fact_only_fraction:  # no draw when off
                demonstrations = 0
            cases = rng.sample(self.reading_cases, min(config.ike_cases_per_step, len(self.reading_cases)))
            return [query for case in cases for query in self._in_context_training(case, rng, demonstrations)]
        names = list(self.groups)
        weights = [GROUP_WEIGHTS[name] for name in names]
        return [rng.choice(self.groups[group]) for group in rng.choices(names, weights, k=config.batch_size)]


def _record(case: EditCase) -> dict[str, str]:
    return {"src": case.src, "alt": case.alt, "rephrase": case.rephrase, "loc": case.loc, "loc_ans": case.loc_ans}


def pretrain(
    data_dir: str | Path, out_dir: str | Path, config: PretrainConfig | None = None, spec: TinySpec | None = None
) -> dict:
    """Build a tiny ``config.arch`` model in ``out_dir`` and train it on the pre-edit world of ``data_dir``.

    Resumes from ``out_dir``'s checkpoint when one exists for the same configuration. Returns
    (and writes to ``out_dir/pretrain.json``) the accuracies, time and peak memory.
    """
    config = config or PretrainConfig()
    if config.arch not in BUILDERS:
        raise ValueError(f"unknown tiny architecture {config.arch!r}; known: {', '.join(sorted(BUILDERS))}")
    out = Path(out_dir)
    started = time.perf_counter()
    world = read_world(data_dir)
    mixture = Mixture(world, config)

    checkpoint = read_checkpoint_state(out)
    if checkpoint is not None and checkpoint["config"] != asdict(config):
        logger.warning("%s was made with another configuration; starting over", out / CHECKPOINT_STATE)
        checkpoint = None
    if checkpoint is None:
        build_tiny_model(config.arch, mixture.texts(), out, spec=spec, seed=config.seed)
    adapter = load_adapter(out)
    model = adapter.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(config.seed)
    curve: list[dict] = []
    probe_contexts = None

    def save_checkpoint(step: int) -> None:
        write_checkpoint(out, model, optimizer, {"rng": rng.getstate(), "step": step, "config": asdict(config),
                                                 "vision_accuracy": vision_accuracy, "curve": curve})

    if checkpoint is None:
        vision_accuracy = train_vision_side(adapter, world, config) if config.vision_steps else None
        first_step = 0
        save_checkpoint(first_step)
    else:
        vision_accuracy = checkpoint["vision_accuracy"]
        curve = checkpoint["curve"]
        load_checkpoint_tensors(out, model, optimizer)
        rng.setstate(checkpoint["rng"])
        first_step = checkpoint["step"]
        logger.info("resuming %s pretraining at step %d", config.arch, first_step)

    def train_phase(start: int, stop: int, peak_lr: float, name: str) -> None:
        nonlocal probe_contexts
        model.train()
        progress = tqdm(range(max(start, first_step), stop), desc=f"pretrain {config.arch}: {name}",
                        initial=max(0, first_step - start), total=stop - start)
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step - start, stop - start, peak_lr, config.warmup_steps)
            loss = training_loss(adapter, mixture.batch(step, rng))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if config.probe_every and (step + 1) % config.probe_every == 0:
                if probe_contexts is None:
                    probe_contexts = ike_contexts(adapter, world, world.cases["test"][: config.probe_cases])
                curve.append({"step": step + 1, **evaluate_pretraining(adapter, world, config.probe_cases,
                                                                         probe_contexts)})
                logger.info("pretrain probe: %s", curve[-1])
                model.train()
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < stop:
                save_checkpoint(step + 1)
        model.eval()

    # The schedule, then (when the abilities are checked) bounded extensions, each its own warmup
    # and cosine decay, trained only while an ability is still short. A checkpoint never falls on
    # a phase's end, so a resumed run knows from its step which phase it is in.
    extension = config.extension_steps
    phases = [(0, config.steps, config.lr)]
    if config.check_abilities:
        phases += [(config.steps + k * extension, config.steps + (k + 1) * extension, config.extension_lr)
                   for k in range(config.max_extensions)]
    accuracy: dict[str, float] | None = None
    extensions = 0
    for index, (start, stop, peak_lr) in enumerate(phases):
        if stop <= first_step:
            extensions = index
            continue
        if index and first_step <= start:
            accuracy = evaluate_pretraining(adapter, world)
            if not shortfalls(accuracy):
                break
            logger.warning("after %d steps the model still lacks: %s; training %d steps more", start,
                           "; ".join(shortfalls(accuracy)), stop - start)
        train_phase(start, stop, peak_lr, "language model" if index == 0 else f"extension {index}")
        accuracy, extensions = None, index
    train_seconds = time.perf_counter() - started

    model.save_pretrained(out)
    accuracy = accuracy or evaluate_pretraining(adapter, world)
    short = shortfalls(accuracy)
    summary = {
        "recipe": RECIPE,
        "config": asdict(config),
        "examples": {**mixture.counts(), "images": len(world.images)},
        "vision_accuracy": vision_accuracy,
        "accuracy": accuracy,
        "extensions": extensions,
        "passed": not short,
        "curve": curve,
        "seconds": round(train_seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "parameters": model.num_parameters(),
        "data_fingerprint": world_fingerprint(data_dir) if Path(data_dir).is_dir() else None,
        "machine": machine_description(),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    for name in (CHECKPOINT_TENSORS, CHECKPOINT_STATE):
        (out / name).unlink(missing_ok=True)
    logger.info("pretrained %s: %s", config.arch, summary)
    if short and config.check_abilities:
        raise MissingAbilityError(f"pretraining {out} (seed {config.seed}) ended without what the methods need "
                                  f"after {extensions} extension(s): {'; '.join(short)}")
    return summary


def machine_description() -> dict[str, object]:
    """Where a model was trained: other CPUs and thread counts round differently."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def ike_contexts(adapter: ModelAdapter, world: World, cases: list[EditCase]) -> list[str]:
    """IKE's own context for each case: its retrieved train demonstrations, then the new fact."""
    from editors.methods.ike import IKE

    ike = IKE()
    ike.prepare(adapter, CaseSequence(world.rows["train"]))
    return [ike.apply(adapter, case).context for case in cases]


def evaluate_pretraining(adapter: ModelAdapter, world: World, limit: int | None = None,
                         contexts: list[str] | None = None) -> dict[str, float]:
    """Token accuracies on the first ``limit`` test cases (the train split if there is none): what
    the model knows before editing, what it must not know yet, and whether it reads a new fact in
    context, after IKE's own retrieved demonstrations (``contexts``, computed when not given) and
    alone, as SERAC's counterfactual model reads it."""
    cases = (world.cases.get("test") or [case for split in world.cases.values() for case in split])[:limit]
    if contexts is None and world.rows.get("train") is not None and len(world.rows["train"]):
        contexts = ike_contexts(adapter, world, cases)

    def asked(name: str, answer: str | None = None, context: str = "") -> list[Query]:
        return [spec(name).query(case, answer=answer and getattr(case, answer), context=context) for case in cases]

    probes = {
        "reliability_old_answer": asked("reliability", answer="pred"),
        "i_generality_old_answer": asked("i_generality", answer="pred"),
        "reliability_new_answer": asked("reliability"),
        "t_locality_answer": asked("t_locality"),
        "i_locality_answer": asked("i_locality"),
        "fact_alone_new_answer": [spec("reliability").query(case, context=in_context_prompt([], case.src, case.alt))
                                  for case in cases],
    }
    if contexts:
        probes["in_context_new_answer"] = [spec("reliability").query(case, context=context)
                                           for case, context in zip(cases, contexts, strict=False)]
        probes["in_context_locality_answer"] = [spec("t_locality").query(case, context=context)
                                                for case, context in zip(cases, contexts, strict=False)]
    # long contexts: small batches keep the attention's memory in bounds
    return {name: round(answer_token_accuracy(adapter, queries, batch_size=16 if "in_context" in name else 64), 4)
            for name, queries in probes.items() if queries}
