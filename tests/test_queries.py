"""The query table (editors.queries) is the one definition of a case's queries: everything follows it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL import Image

from editors import engine, queries, report, training
from editors.cases import EditCase, OneHopEdit, PortabilityQuestion
from editors.pretrain import in_context_queries, pre_edit_queries
from editors.queries import QUERIES, QuerySpec, case_queries, config_metrics, query_table, spec


def image(shade: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (shade, shade, shade))


CASE = EditCase(
    case_id="eval-00000", src="Who is this?", rephrase="Name the person.", pred="Messi", alt="Ronaldo",
    image=image(1), image_rephrase=image(2), loc="Capital of France?", loc_ans="Paris", m_loc=image(3),
    m_loc_q="What animal is this?", m_loc_a="cat",
    portability=(PortabilityQuestion(1, "Club of the person?", "Al Nassr"), PortabilityQuestion(2, "Its country?", "Saudi Arabia")),
)
ONEHOP = replace(CASE, portability=(), onehop=(OneHopEdit("Nationality of Ronaldo?", "France", "Nationality of the person?", "France"),))


def test_a_case_is_asked_each_spec_of_its_config_in_table_order():
    listed = case_queries(CASE, "edit")
    assert [(s.name, hop) for s, hop, _ in listed] == [
        ("reliability", 0), ("t_generality", 0), ("i_generality", 0), ("t_locality", 0), ("i_locality", 0),
        ("portability", 1), ("portability", 2),
    ]
    built = [query for _, _, query in listed]
    assert (built[0].question, built[0].answer, built[0].image) == ("Who is this?", "Ronaldo", CASE.image)
    assert (built[2].question, built[2].image) == ("Who is this?", CASE.image_rephrase)
    assert (built[3].question, built[3].answer, built[3].image) == ("Capital of France?", "Paris", None)
    assert (built[6].question, built[6].answer, built[6].image) == ("Its country?", "Saudi Arabia", CASE.image)
    assert [s.topk for s, _, _ in listed] == [0, 0, 0, 1, 10, 0, 0]
    # the edit-one-hop file is scored on its two-edit question only, as the reference scores it
    assert [(s.name, hop, q.question, q.answer, q.image) for s, hop, q in case_queries(ONEHOP, "edit_onehop")] == [
        ("edit_onehop", 0, "Nationality of the person?", "France", CASE.image)
    ]
    assert config_metrics("edit") == ("reliability", "t_generality", "i_generality", "t_locality", "i_locality", "portability")
    assert [row["metric"] for row in engine.failed_rows("x", "edit_onehop")] == ["edit_onehop"]


def test_an_added_spec_shows_up_in_the_engine_the_trained_editors_and_the_table(monkeypatch):
    added = QuerySpec("old_answer", "reliability", "src", "pred", "image", "Old", in_scope=False)
    monkeypatch.setattr(queries, "QUERIES", (*QUERIES[:3], added, *QUERIES[3:]))
    labels, built, topk, _ = engine.case_queries(CASE, engine.EngineOptions())
    assert labels[3] == ("reliability", 0) and (built[3].question, built[3].answer) == ("Who is this?", "Messi")
    assert [query.answer for query in training.trained_queries(CASE)] == ["Ronaldo", "Ronaldo", "Ronaldo", "Messi", "Paris", "cat"]
    assert training.in_scope_rows() == (0, 1, 2) and training.out_of_scope_rows() == (3, 4, 5)
    # the pretraining queries look specs up by name: an added one changes nothing there
    assert len(pre_edit_queries(CASE)) == 6 and len(in_context_queries(CASE, "c")) == 5


def test_a_changed_spec_changes_every_consumer(monkeypatch):
    # T-Locality moved to the rephrase question and compared on top-3: the engine, the trained editors'
    # queries, pretraining and the table all follow
    changed = replace(spec("t_locality"), question="rephrase", topk=3, title="T-L")
    monkeypatch.setattr(queries, "QUERIES", tuple(changed if s.name == "t_locality" else s for s in QUERIES))
    labels, built, topk, _ = engine.case_queries(CASE, engine.EngineOptions())
    assert built[3].question == "Name the person." and topk[3] == 3
    assert training.trained_queries(CASE)[3].question == "Name the person."
    assert in_context_queries(CASE, "c")[4].question == "Name the person."
    assert report.table_columns()[1] == ("Rel.", "T-Gen.", "I-Gen.", "T-L", "I-Loc.", "Port.")


def test_the_engine_reads_the_positions_compared_from_the_presets_query_table(monkeypatch):
    from editors.methods import make_method
    from editors.presets import KEBENCH, VLKEB

    ft, ike = make_method("ft-llm", {}), make_method("ike", {})
    assert query_table(KEBENCH, ft) == query_table(KEBENCH, ike) == QUERIES  # every spec's own positions
    for method, positions in ((ft, "all"), (ike, "answer")):  # the reference's trainer path, its IKE
        table = query_table(VLKEB, method)
        assert [(s.name, s.positions) for s in table if s.topk] == [("t_locality", positions), ("i_locality", positions)]
        assert [s for s in table if not s.topk] == [s for s in QUERIES if not s.topk]
        *_, compared = engine.case_queries(CASE, engine.EngineOptions(queries=table))
        assert compared == [positions if s.topk else s.positions for s in queries.config_specs("edit", table)
                            for _ in s.build(CASE)]
    # the spec's own value is what the engine reads when no preset's table is given
    changed = replace(spec("i_locality"), positions="answer")
    monkeypatch.setattr(queries, "QUERIES", tuple(changed if s.name == "i_locality" else s for s in QUERIES))
    *_, compared = engine.case_queries(CASE, engine.EngineOptions())
    assert compared[4] == "answer" and compared[3] == "all_but_last"


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown query 'nope'"):
        spec("nope")
    with pytest.raises(ValueError, match="unknown positions 'odd'"):
        QuerySpec("x", "reliability", "src", "alt", None, "X", positions="odd")
    from editors.presets import Preset

    with pytest.raises(ValueError, match="preset 'x': unknown locality positions 'odd'"):
        Preset(name="x", context_locality_positions="odd")
    with pytest.raises(ValueError, match="one query per 'portability' item"):
        spec("portability").query(CASE)
