"""The generated world and the KEBench data built from it: the paper's invariants on the output."""

from __future__ import annotations

import hashlib
import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kebench_hf.cli import main
from kebench_hf.construct import read_mmkg
from kebench_hf.construct.portability import chain_question, follow
from kebench_hf.construct.questions import contains_answer, image_subject
from kebench_hf.construct.report import Report
from kebench_hf.world import build_world
from kebench_hf.world.kg import generate_world
from kebench_hf.world.render import Identity, render_view

RELEASE_FILES = ("train.json", "eval.json", "eval_multihop.json", "eval_edit_onehop.json")


def _records(release: Path, file_name: str) -> list[dict]:
    return json.loads((release / file_name).read_text())


@pytest.fixture(scope="module")
def world(tiny_world: Path):
    kg = read_mmkg(tiny_world.parent / "kg", Report())
    ids_by_name = {entity.name: entity.id for entity in kg.entities.values()}
    return kg, ids_by_name


def test_release_layout_and_report(tiny_world: Path) -> None:
    for file_name in RELEASE_FILES:
        assert _records(tiny_world, file_name), file_name
    report = json.loads((tiny_world / "report.json").read_text())
    for file_name in RELEASE_FILES:
        assert report["output"][file_name] == len(_records(tiny_world, file_name))
    images = sorted(
        p.relative_to(tiny_world / "mmkb_images").as_posix()
        for p in (tiny_world / "mmkb_images").rglob("*.jpg")
    )
    referenced = {
        r[f]
        for name in RELEASE_FILES
        for r in _records(tiny_world, name)
        for f in ("image", "image_rephrase", "m_loc")
    }
    assert set(images) == referenced  # every referenced image is there, and nothing else
    # The world's duplicates were found and dropped.
    assert sum(entry["count"] for entry in report["deduplicate"]["skipped"].values()) >= 1


def test_edit_images_show_e1_and_generality_is_another_picture(tiny_world: Path, world) -> None:
    kg, ids_by_name = world
    for name in RELEASE_FILES:
        for record in _records(tiny_world, name):
            e1 = ids_by_name[record["pred"]]
            assert record["image"].split("/")[0] == e1
            assert record["image_rephrase"].split("/")[0] == e1  # same entity ...
            edit = (tiny_world / "mmkb_images" / record["image"]).read_bytes()
            generality = (tiny_world / "mmkb_images" / record["image_rephrase"]).read_bytes()
            assert edit != generality  # ... different picture
            assert record["alt"] != record["pred"]
            assert kg.entities[ids_by_name[record["alt"]]].type == kg.entities[e1].type


def test_image_locality_entities_are_never_edited(tiny_world: Path, world) -> None:
    kg, ids_by_name = world
    records = [r for name in RELEASE_FILES for r in _records(tiny_world, name)]
    edited = {ids_by_name[r[field]] for r in records for field in ("pred", "alt")}
    for record in records:
        loc_entity = record["m_loc"].split("/")[0]
        assert loc_entity not in edited
        assert kg.entities[loc_entity].name == record["m_loc_a"]
        assert record["loc_ans"] not in (record["pred"], record["alt"])


def test_train_and_test_edit_entities_are_disjoint(tiny_world: Path) -> None:
    def entities(file_name: str) -> set[str]:
        return {r[f] for r in _records(tiny_world, file_name) for f in ("pred", "alt")}

    train = entities("train.json")
    for file_name in RELEASE_FILES[1:]:
        assert not train & entities(file_name)


def _chain_of(kg, e2: str, question: str, hops: int) -> tuple[str, ...]:
    """The relation path whose composed question is ``question`` (there is exactly one)."""
    subject = image_subject(kg.entities[e2].type)
    relations = sorted({relation for _, relation in kg.functional})
    matches = [path for path in product(relations, repeat=hops) if chain_question(path, subject) == question]
    assert len(matches) == 1, question
    return matches[0]


def test_portability_follows_the_kg_from_e2_not_e1(tiny_world: Path, world) -> None:
    kg, ids_by_name = world
    checked = {1: 0, 2: 0, 3: 0, 4: 0}
    for file_name in ("eval.json", "eval_multihop.json"):
        for record in _records(tiny_world, file_name):
            e1, e2 = ids_by_name[record["pred"]], ids_by_name[record["alt"]]
            for item in record.get("port_new", []):
                hops = int(item["port_type"].split("-")[0])
                question, answer = item["Q&A"]["Question"], item["Q&A"]["Answer"]
                path = _chain_of(kg, e2, question, hops)
                assert kg.entities[follow(kg, e2, path)].name == answer
                from_e1 = follow(kg, e1, path)
                assert from_e1 is None or kg.entities[from_e1].name != answer
                assert not contains_answer(question, answer)
                checked[hops] += 1
    assert all(checked.values()), checked  # every hop count occurs


def test_edit_onehop_answers_follow_the_edited_fact(tiny_world: Path, world) -> None:
    kg, ids_by_name = world
    for record in _records(tiny_world, "eval_edit_onehop.json"):
        e2 = ids_by_name[record["alt"]]
        (item,) = record["port_new"]
        new_object = ids_by_name[item["port_edit_a"]]
        first = _chain_of(kg, e2, item["port_edit_q"], 1)
        assert kg.functional[(e2, first[0])] != new_object  # a real (counterfactual) edit of e2's fact
        second = _chain_of(kg, e2, item["port_q"], 2)
        assert second[0] == first[0]
        assert kg.entities[kg.functional[(new_object, second[1])]].name == item["port_a"]
        assert kg.functional.get((kg.functional[(e2, first[0])], second[1])) != ids_by_name[item["port_a"]]


def test_questions_never_contain_their_answers(tiny_world: Path) -> None:
    for file_name in RELEASE_FILES:
        for record in _records(tiny_world, file_name):
            for question in (record["src"], record["rephrase"]):
                assert not contains_answer(question, record["pred"])
                assert not contains_answer(question, record["alt"])
            assert record["src"] != record["rephrase"]
            assert not contains_answer(record["loc"], record["loc_ans"])
            assert not contains_answer(record["m_loc_q"], record["m_loc_a"])
            for item in record.get("port_new", []):
                if "port_q" in item:
                    assert not contains_answer(item["port_q"], item["port_a"])
                    assert not contains_answer(item["port_edit_q"], item["port_edit_a"])


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path, tiny_world: Path) -> None:
    assert main(["world", str(tmp_path / "again"), "--seed", "0", "--scale", "tiny"]) == 0

    def digests(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "report.json"
        }

    original = tiny_world.parent
    assert digests(tmp_path / "again") == digests(original)
    other = build_world(tmp_path / "other", seed=1, scale="tiny")
    assert (other / "train.json").read_bytes() != (tiny_world / "train.json").read_bytes()


def test_an_interrupted_build_resumes_to_the_same_bytes(tmp_path: Path, tiny_world: Path) -> None:
    import shutil

    shutil.copytree(tiny_world.parent / "kg", tmp_path / "kg")
    lost = sorted((tmp_path / "kg" / "images").rglob("*.jpg"))[5]
    lost.unlink()  # as if the run had been killed before writing it
    (tmp_path / "kg" / "names.tsv").unlink()
    release = build_world(tmp_path, seed=0, scale="tiny")
    assert lost.read_bytes() == (tiny_world.parent / "kg" / lost.relative_to(tmp_path / "kg")).read_bytes()
    for file_name in RELEASE_FILES:
        assert (release / file_name).read_bytes() == (tiny_world / file_name).read_bytes()


def test_construct_command_on_the_generated_kg_reproduces_the_world(tmp_path: Path, tiny_world: Path) -> None:
    out = tmp_path / "rebuilt"
    assert main(["construct", str(tiny_world.parent / "kg"), str(out), "--seed", "0"]) == 0
    for file_name in RELEASE_FILES:
        assert (out / file_name).read_bytes() == (tiny_world / file_name).read_bytes()


def test_output_loads_through_the_dataset_builder(tiny_world: Path) -> None:
    from kebench_hf.builder import load_kebench

    edit = load_kebench(tiny_world)
    assert edit["train"].num_rows == len(_records(tiny_world, "train.json"))
    assert edit["test"].num_rows == len(_records(tiny_world, "eval.json"))
    multihop = load_kebench(tiny_world, "multihop", split="test")
    first = _records(tiny_world, "eval_multihop.json")[0]
    assert [item["answer"] for item in multihop[0]["portability"]] == [
        i["Q&A"]["Answer"] for i in first["port_new"]
    ]
    onehop = load_kebench(tiny_world, "edit_onehop", split="test")
    assert onehop.num_rows == len(_records(tiny_world, "eval_edit_onehop.json"))
    assert (
        onehop[0]["onehop"][0]["answer"]
        == _records(tiny_world, "eval_edit_onehop.json")[0]["port_new"][0]["port_a"]
    )


def test_world_structure_chains_up_to_four_hops() -> None:
    world = generate_world({"country": 3, "city": 6, "river": 2, "club": 4, "person": 8}, 2, seed=3)
    facts = {(h, r): t for h, r, t in world.triples}
    types = {e.id: e.type for e in world.entities}
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names)
    for entity in world.entities:
        if entity.type == "person":
            club = facts[(entity.id, "plays_for")]
            city = facts[(club, "based_in")]
            country = facts[(city, "located_in")]
            capital = facts[(country, "capital")]
            assert [types[x] for x in (club, city, country, capital)] == ["club", "city", "country", "city"]
            assert facts[(capital, "located_in")] == country  # a capital lies in its own country
    assert all(e.identity is None for e in world.entities if e.type == "language")


def test_views_of_one_identity_differ_and_are_small_rgb() -> None:
    identity = Identity("star", "checker", 0.1, 0.6)
    first = render_view(identity, np.random.default_rng(0))
    second = render_view(identity, np.random.default_rng(1))
    assert first.size == (64, 64) and first.mode == "RGB"
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    again = render_view(identity, np.random.default_rng(0))
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_generated_images_decode(tiny_world: Path) -> None:
    for path in list((tiny_world.parent / "kg" / "images").rglob("*.jpg"))[:20]:
        with Image.open(path) as image:
            assert image.size == (64, 64)


def test_unknown_scale_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown world scale 'huge'"):
        build_world(tmp_path, scale="huge")
    with pytest.raises(SystemExit):
        main(["world", str(tmp_path), "--scale", "huge"])
    assert "invalid choice" in capsys.readouterr().err


def test_processes_sharing_a_cache_build_the_world_once_and_alike(tmp_path: Path, tiny_world: Path) -> None:
    import os
    import subprocess
    import sys

    # Without the lock, the second process would remove or overwrite files the first is writing.
    script = "from kebench_hf.world import cached_world; print(cached_world('tiny'))"
    env = {**os.environ, "KEBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate()[0].strip() for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    assert outputs[0] == outputs[1] == str(tmp_path / "cache" / "worlds" / "tiny" / "kebench")
    for file_name in RELEASE_FILES:
        assert (Path(outputs[0]) / file_name).read_bytes() == (tiny_world / file_name).read_bytes()
