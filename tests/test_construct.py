"""Each construction step alone, on small hand-made inputs, and bad knowledge-graph input."""

from __future__ import annotations

import io
import json
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kebench_hf.construct import ConstructConfig, construct, read_mmkg
from kebench_hf.construct.embed import ClipEmbedder, ImageIndex, PixelEmbedder, drop_duplicates, embed_images
from kebench_hf.construct.locality import assign_text_locality, image_locality, text_locality_pool
from kebench_hf.construct.matching import match_entities, split_entities
from kebench_hf.construct.mmkg import Entity, KnowledgeGraph
from kebench_hf.construct.pairs import image_pairs
from kebench_hf.construct.portability import image_fact_questions, onehop_edit, portability_chains
from kebench_hf.construct.questions import (
    LanguageModelQuestions,
    TemplateQuestions,
    contains_answer,
    relation_question,
)
from kebench_hf.construct.report import Report
from kebench_hf.world.render import Identity, jpeg_bytes, render_view


def _kg(names: list[tuple[str, str, str]], triples: list[tuple[str, str, str]]) -> KnowledgeGraph:
    return KnowledgeGraph({i: Entity(i, n, t) for i, n, t in names}, triples)


def _write_kg(
    root: Path, names: list[tuple[str, ...]], triples: list[tuple[str, ...]], views: dict[str, int]
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "names.tsv").write_text("".join("\t".join(row) + "\n" for row in names))
    (root / "triples.tsv").write_text("".join("\t".join(row) + "\n" for row in triples))
    shapes = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond"]
    for index, (entity_id, count) in enumerate(sorted(views.items())):
        (root / "images" / entity_id).mkdir(parents=True)
        identity = Identity(shapes[index % 8], "solid", (index * 0.13) % 1.0, 0.5)
        for n in range(count):
            image = render_view(identity, np.random.default_rng([index, n]))
            (root / "images" / entity_id / f"google_{n + 1}.jpg").write_bytes(jpeg_bytes(image))
    return root


# ---- reading the KG -------------------------------------------------------------------------


def test_read_mmkg_counts_dangling_ids_imageless_entities_and_ambiguous_relations(tmp_path: Path) -> None:
    names = [("a", "Alpha", "person"), ("b", "Beta", "person"), ("c", "Gamma", "city")]
    triples = [("a", "born_in", "c"), ("b", "born_in", "zz"), ("a", "likes", "b"), ("a", "likes", "c")]
    root = _write_kg(tmp_path / "kg", names, triples, {"a": 2, "b": 1, "ghost": 1})
    report = Report()
    kg = read_mmkg(root, report)
    assert report.skipped("read", "triple names an entity missing from names.tsv") == 1
    assert report.skipped("read", "image directory of an entity missing from names.tsv") == 1
    assert (
        report.skipped("read", "entity has no images (answer only, never an edit or I-Locality image)") == 1
    )
    assert report.skipped("read", "relation with several tails (no unique answer)") == 1
    assert kg.functional == {("a", "born_in"): "c"}
    assert sorted(kg.images) == ["a", "b"] and len(kg.images["a"]) == 2


@pytest.mark.parametrize(
    ("names", "triples", "message"),
    [
        ("a\t\tperson\n", "a\tr\ta\n", r"names.tsv:1: entity 'a': missing name"),
        ("a\tAlpha\t\n", "a\tr\ta\n", r"names.tsv:1: entity 'a': missing type"),
        ("a\tAlpha\tperson\na\tAlf\tperson\n", "a\tr\ta\n", r"names.tsv:2: entity 'a': duplicate entity id"),
        ("a\tAlpha\tperson\n", "a\tr\n", r"triples.tsv:1: expected 3 tab-separated fields, found 2"),
        ("a\tAlpha\tperson\n", "\n", r"triples.tsv: empty file"),
    ],
)
def test_read_mmkg_rejects_malformed_input_naming_file_and_line(
    tmp_path: Path, names: str, triples: str, message: str
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "names.tsv").write_text(names)
    (tmp_path / "triples.tsv").write_text(triples)
    with pytest.raises(ValueError, match=message):
        read_mmkg(tmp_path, Report())


def test_construct_command_reports_a_missing_kg_in_one_line(tmp_path: Path, capsys) -> None:
    from kebench_hf.cli import main

    assert main(["construct", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    assert "names.tsv: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_read_mmkg_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="names.tsv: missing"):
        read_mmkg(tmp_path, Report())
    (tmp_path / "names.tsv").write_text("a\tAlpha\tperson\n")
    (tmp_path / "triples.tsv").write_text("a\tr\ta\n")
    with pytest.raises(FileNotFoundError, match="missing images directory"):
        read_mmkg(tmp_path, Report())


# ---- step 1: embeddings and duplicates ------------------------------------------------------


def test_pixel_embedder_rows_are_unit_vectors_and_views_beat_other_entities() -> None:
    star = Identity("star", "solid", 0.0, 0.5)
    ring = Identity("ring", "dots", 0.6, 0.1)
    images = [
        render_view(identity, np.random.default_rng(i)) for i, identity in enumerate([star, star, ring])
    ]
    vectors = PixelEmbedder().embed(images)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_duplicates_are_dropped_and_unreadable_images_counted(tmp_path: Path) -> None:
    root = _write_kg(tmp_path / "kg", [("a", "Alpha", "person")], [("a", "r", "a")], {"a": 2})
    folder = root / "images" / "a"
    original = Image.open(folder / "google_1.jpg").convert("RGB")
    (folder / "yahoo_2.jpg").write_bytes((folder / "google_1.jpg").read_bytes())  # exact copy
    (folder / "yahoo_3.jpg").write_bytes(jpeg_bytes(original, quality=60))  # re-encoded
    resized = io.BytesIO()
    original.resize((48, 48)).save(resized, format="PNG")
    (folder / "yahoo_4.png").write_bytes(resized.getvalue())  # resized
    (folder / "yahoo_1.jpg").write_bytes(b"not a jpeg")
    report = Report()
    index = embed_images(read_mmkg(root, report), PixelEmbedder(), report)
    assert report.skipped("embed", "unreadable image") == 1
    kept = drop_duplicates(index, 0.995, report)
    assert sorted(p.name for p in kept.paths) == ["google_1.jpg", "google_2.jpg"]
    assert report.skipped("deduplicate", "exact duplicate") == 1
    assert report.skipped("deduplicate", "near duplicate (thumbnail)") == 2


def _tiny_clip(directory: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory
    )
    return directory


def test_clip_embedder_from_a_local_directory(tmp_path: Path) -> None:
    embedder = ClipEmbedder(_tiny_clip(tmp_path / "clip"))
    images = [render_view(Identity("circle", "solid", h, 0.5), np.random.default_rng(0)) for h in (0.0, 0.5)]
    vectors = embedder.embed(images)
    assert vectors.shape == (2, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    with pytest.raises(FileNotFoundError, match="CLIP model directory not found"):
        ClipEmbedder(tmp_path / "missing")


# ---- step 2: image pairs --------------------------------------------------------------------


def _index(owners: list[str], vectors: list[list[float]]) -> ImageIndex:
    matrix = np.array(vectors, dtype=np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    paths = [Path(f"{owner}/img_{i}.jpg") for i, owner in enumerate(owners)]
    return ImageIndex(
        paths, owners, matrix, [str(i) for i in range(len(owners))], np.zeros((len(owners), 1, 1, 3))
    )


def test_image_pairs_are_the_most_similar_below_identical() -> None:
    # a: img_0 ~ img_1 identical-ish (0.9999), img_0 ~ img_2 similar (0.8), img_3 far away.
    index = _index(
        ["a", "a", "a", "a", "b"],
        [[1, 0, 0], [1, 0.01, 0], [1, 0.75, 0], [0, 0, 1], [0, 1, 0]],
    )
    report = Report()
    pairs = image_pairs(index, pairs_per_entity=2, near_duplicate=0.995, min_similarity=0.5, report=report)
    assert [(p.edit.name, p.generality.name) for p in pairs["a"]] == [("img_1.jpg", "img_2.jpg")]
    assert pairs["a"][0].similarity == pytest.approx(0.8, abs=0.01)
    assert "b" not in pairs
    assert report.skipped("image_pairs", "entity has fewer than two distinct images") == 1


# ---- steps 3 and 8: matching and split ------------------------------------------------------


def _people_kg() -> KnowledgeGraph:
    names = [(f"p{i}", f"Person {c}", "person") for i, c in enumerate("ABCDE")]
    names += [
        ("c0", "Club X", "club"),
        ("c1", "Club Y", "club"),
        ("t0", "Town", "city"),
        ("r0", "Rome", "city"),
    ]
    triples = [
        ("p0", "plays_for", "c0"), ("p0", "born_in", "t0"), ("p0", "coached_by", "p4"),
        ("p1", "plays_for", "c1"), ("p1", "born_in", "r0"),
        ("p2", "plays_for", "c0"),
        ("p3", "born_in", "t0"), ("p3", "coached_by", "p2"),
        ("p4", "plays_for", "c1"),
        ("c0", "based_in", "t0"), ("c1", "based_in", "r0"),
    ]  # fmt: skip
    return _kg(names, triples)


def test_matching_is_a_maximum_weight_assignment_on_shared_relations() -> None:
    kg = _people_kg()
    people = [f"p{i}" for i in range(5)]
    pairs = match_entities(kg, people + ["c0", "c1"], rounds=1, seed=0, report=Report())
    persons = [p for p in pairs if p.e1.startswith("p")]
    assert all(kg.entities[p.e1].type == kg.entities[p.e2].type and p.e1 != p.e2 for p in pairs)
    assert len({p.e1 for p in persons}) == len(persons) and len({p.e2 for p in persons}) == len(persons)

    def shared(a: str, b: str) -> int:
        return len(kg.relations_of(a) & kg.relations_of(b))

    # Brute force over all derangements: the matching reaches the best total of shared relations.
    best = max(
        sum(shared(a, b) for a, b in zip(people, perm, strict=True))
        for perm in permutations(people)
        if all(a != b and shared(a, b) > 0 for a, b in zip(people, perm, strict=True))
    )
    assert sum(p.shared_relations for p in persons) == best
    assert {(p.e1, p.e2) for p in pairs if p.e1.startswith("c")} == {("c0", "c1"), ("c1", "c0")}


def test_matching_rounds_give_new_partners() -> None:
    kg = _people_kg()
    pairs = match_entities(kg, [f"p{i}" for i in range(5)], rounds=2, seed=1, report=Report())
    assert len({(p.e1, p.e2) for p in pairs}) == len(pairs)
    assert {p.round for p in pairs} == {0, 1}


def test_split_is_disjoint_per_type_and_seeded() -> None:
    kg = _people_kg()
    candidates = [f"p{i}" for i in range(5)] + ["c0", "c1", "t0", "r0"]
    split = split_entities(kg, candidates, test_fraction=0.5, untouched_fraction=0.2, seed=0)
    groups = [set(split.train), set(split.test), set(split.untouched)]
    assert sum(len(g) for g in groups) == len(candidates)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert split == split_entities(kg, candidates, 0.5, 0.2, seed=0)


# ---- step 4: questions ----------------------------------------------------------------------


def test_template_questions_rephrase_differs_for_every_variant() -> None:
    generator = TemplateQuestions()
    for entity_type in ("person", "city", "country", "club", "river", "mountain_range"):
        for variant in range(24):
            question, rephrase = generator.entity_questions(entity_type, variant)
            assert question != rephrase and question.endswith(("?", "."))
    assert "mountain range" in generator.entity_questions("mountain_range", 0)[0]


def test_contains_answer_matches_whole_words_only() -> None:
    assert contains_answer("Where was Laredo, Texas founded?", "Laredo,_Texas")
    assert contains_answer("who is ada lovelace?", "Ada Lovelace")
    assert not contains_answer("Who is Adam?", "Ada")
    assert relation_question("plays_for", "Ada") == "Which club does Ada play for?"
    assert relation_question("home_port", "the ship") == "What is the home port of the ship?"


def test_language_model_questions_fall_back_to_templates_on_unusable_output(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocabulary = {word: i for i, word in enumerate(["<unk>", "Which", "person", "is", "shown", "?", "photo"])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>").save_pretrained(
        tmp_path
    )
    GPT2LMHeadModel(GPT2Config(vocab_size=7, n_embd=8, n_layer=1, n_head=2, n_positions=128)).save_pretrained(
        tmp_path
    )
    generator = LanguageModelQuestions(tmp_path, max_new_tokens=4)
    question, rephrase = generator.entity_questions("person", 0)
    if generator.fallbacks:
        assert (question, rephrase) == TemplateQuestions().entity_questions("person", 0)
    assert question != rephrase and question.endswith("?")
    assert generator.entity_questions("person", 0) == (question, rephrase)  # greedy: deterministic


# ---- steps 5 and 6: locality ----------------------------------------------------------------


def test_image_locality_picks_the_most_similar_untouched_image() -> None:
    kg = _kg([("a", "Alpha", "person"), ("b", "Beta", "person"), ("c", "Gamma", "city")], [])
    index = _index(["a", "b", "c"], [[1, 0, 0], [1, 0.2, 0], [0.9, 0, 1]])
    found = image_locality([index.paths[0]], index, {"b", "c"}, kg, TemplateQuestions(), [0])
    assert found[0].entity == "b" and found[0].answer == "Beta"
    assert found[0].question == TemplateQuestions().entity_questions("person", 0)[0]
    only_city = image_locality([index.paths[0]], index, {"c"}, kg, TemplateQuestions(), [0])
    assert only_city[0].entity == "c" and "city" in only_city[0].question
    with pytest.raises(ValueError, match="no image of an unedited entity"):
        image_locality([index.paths[0]], index, set(), kg, TemplateQuestions(), [0])


def test_text_locality_uses_untouched_subjects_and_avoids_the_case_entities() -> None:
    kg = _people_kg()
    pool = text_locality_pool(kg, {"p0", "c1"}, Report())
    assert {q for q, _, _ in pool} == {
        "Which club does Person A play for?", "In which city was Person A born?",
        "What is the coached by of Person A?", "In which city is Club Y based?",
    }  # fmt: skip
    chosen = assign_text_locality(pool, [{"p4"}, {"t0", "p4", "r0"}], np.random.default_rng(0))
    assert chosen[0][1] != "Person E"
    assert chosen[1] == (
        "Which club does Person A play for?",
        "Club X",
    )  # the only fact not answered by the case
    with pytest.raises(ValueError, match="every T-Locality fact is answered by one of"):
        assign_text_locality(pool, [{"c0", "t0", "p4", "r0"}], np.random.default_rng(0))
    with pytest.raises(ValueError, match="no fact about an unedited entity"):
        text_locality_pool(kg, {"t0"}, Report())


# ---- step 7: portability --------------------------------------------------------------------


def _chain_kg() -> KnowledgeGraph:
    names = [("e1", "Old Guy", "person"), ("e2", "New Guy", "person"), ("k1", "Club One", "club"),
             ("k2", "Club Two", "club"), ("c1", "Alton", "city"), ("c2", "Bexley", "city"),
             ("n1", "Norland", "country"), ("n2", "Sudland", "country")]  # fmt: skip
    triples = [
        ("e1", "plays_for", "k1"), ("e2", "plays_for", "k2"),
        ("k1", "based_in", "c1"), ("k2", "based_in", "c2"),
        ("c1", "located_in", "n1"), ("c2", "located_in", "n1"),  # both clubs are in Norland
        ("n1", "capital", "c1"), ("n2", "capital", "c2"),
    ]  # fmt: skip
    return _kg(names, triples)


def test_portability_chains_follow_e2_drop_same_answers_and_cycles() -> None:
    kg = _chain_kg()
    report = Report()
    chains = portability_chains(kg, "e1", "e2", 4, np.random.default_rng(0), report)
    assert (
        chains[1].answer == "Club Two"
        and chains[1].question == "Which club does the person in the image play for?"
    )
    assert chains[2].answer == "Bexley"
    # 3 hops reach Norland from both e1 and e2: the edit would not change it, so it is dropped,
    # and hop 4 (capital of Norland = Alton) would revisit nothing but equals e1's too.
    assert 3 not in chains and 4 not in chains
    assert report.skipped("portability", "e1 reaches the same answer (the edit would not matter)") >= 1
    cyclic = _kg([("a", "A", "country"), ("b", "B", "country"), ("x", "Xo", "city")],
                 [("a", "capital", "x"), ("x", "located_in", "a")])  # fmt: skip
    report = Report()
    assert set(portability_chains(cyclic, "b", "a", 4, np.random.default_rng(0), report)) == {1}
    assert report.skipped("portability", "chain returns to an entity already on it (cycle) or to e1") == 1


def test_image_fact_questions_list_every_acyclic_chain_of_the_pre_edit_world() -> None:
    chains = image_fact_questions(_chain_kg(), "e1")
    assert [(c.hops, c.answer) for c in chains] == [(1, "Club One"), (2, "Alton"), (3, "Norland")]
    assert chains[2].question == (
        "In which country is the city where the club the person in the image plays for is based located?"
    )  # the 4th hop (capital of Norland = Alton) would return to Alton: a cycle, left out


def test_onehop_edit_changes_a_fact_of_e2_and_asks_through_it() -> None:
    kg = _chain_kg()
    found = onehop_edit(kg, "e2", kg.by_type(), np.random.default_rng(0))
    assert found.edit_question == "Which club does the person in the image play for?"
    assert found.edit_answer == "Club One"  # the one other club
    assert found.question == "In which city is the club the person in the image plays for based?"
    assert found.answer == "Alton"  # Club One's city, not Club Two's (Bexley)


# ---- the whole pipeline ---------------------------------------------------------------------


def test_construct_on_a_hand_made_kg_with_bad_parts(tmp_path: Path) -> None:
    names = [(f"p{i}", f"Player {c}", "person") for i, c in enumerate("ABCDEFGH")]
    names += [("k0", "Club North", "club"), ("k1", "Club South", "club"), ("k2", "Club East", "club")]
    triples = [(f"p{i}", "plays_for", f"k{i % 3}") for i in range(8)] + [("p0", "plays_for", "nobody")]
    triples += [("k0", "rival_of", "k1"), ("k1", "rival_of", "k2"), ("k2", "rival_of", "k0")]
    root = _write_kg(tmp_path / "kg", names, triples, {**{f"p{i}": 3 for i in range(8)}, "k0": 2, "k1": 2})
    (root / "images" / "p7" / "broken.jpg").write_bytes(b"")
    config = ConstructConfig(seed=0, test_fraction=0.5, untouched_fraction=0.25, cases_per_entity=1)
    release = construct(root, tmp_path / "out", config)
    report = json.loads((release / "report.json").read_text())
    assert report["read"]["skipped"]["triple names an entity missing from names.tsv"]["count"] == 1
    assert (
        report["read"]["skipped"]["entity has no images (answer only, never an edit or I-Locality image)"][
            "count"
        ]
        == 1
    )
    assert report["embed"]["skipped"]["unreadable image"]["count"] == 1
    train = json.loads((release / "train.json").read_text())
    test = json.loads((release / "eval.json").read_text())
    assert train and test
    assert not {r["pred"] for r in train} & {r["pred"] for r in test}
    assert report["output"]["train.json"] == len(train)
    # A second run over an existing output replaces it (no stale files) and is byte-identical.
    (release / "stale.txt").write_text("x")
    again = construct(root, tmp_path / "out", config)
    assert not (again / "stale.txt").exists()
    assert json.loads((again / "train.json").read_text()) == train
