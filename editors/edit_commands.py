"""``kebench edit``: edit a model with one method and write the edited model to a directory."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from editors.commands import parse_method_options
from kebench_hf.constants import MODEL_DTYPES


def _edit(args: argparse.Namespace) -> int:
    from editors.adapters import check_device, load_adapter
    from editors.editing import EditedModel, edit, edit_record, read_facts, save_edited

    one = (args.image, args.question, args.answer)
    if args.edits is not None and any(value is not None for value in one):
        raise ValueError("give one fact (--image/--question/--answer) or --edits FILE, not both")
    # every fact is read and its image decoded before the model is loaded
    facts = read_facts(args.edits if args.edits is not None else
                       {"image": args.image, "question": args.question, "answer": args.answer})
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: already exists and is not an empty directory")
    check_device(args.device)
    adapter = load_adapter(args.model, device=args.device, dtype=args.dtype)
    edited = edit(adapter.model, adapter.processor, facts, method=args.method, editor=args.editor,
                  train=args.data, **parse_method_options(args.set or []))
    record = edit_record(edited)
    batch = record.batches[-1]
    after = record.generate([fact.query for fact in batch.facts])
    # written next to --out and moved there at the end: a failure leaves nothing at --out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_edited(edited, partial)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for fact, before, answer in zip(batch.facts, batch.answers_before, after, strict=True):
        print(f"{fact.source}: {fact.question}{' [image]' if fact.image is not None else ''}")
        print(f"  before: {before}")
        print(f"  after:  {answer}  (new answer: {fact.answer})")
    how = (f"EditedModel.from_pretrained({str(out)!r}) (from editors)" if isinstance(edited, EditedModel)
           else f"transformers: AutoModelForImageTextToText.from_pretrained({str(out)!r})")
    print(f"{args.method}: {len(facts)} fact(s) edited; saved to {out} with edits.json; load with {how}")
    return 0


def _add_edit(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edit", help="edit facts into a model with one method and save the edited model",
        description="Writes OUT with save_pretrained (safetensors), the processor, edits.json (the facts, the "
        "method and its hyper-parameters, the base model's identity and weight hash, versions) and the facts' "
        "images, then prints the model's answers to the edited questions before and after. IKE and SERAC "
        "keep their edits outside the weights: OUT then holds the base model under base/ and what the "
        "method needs, and loads with editors.EditedModel.from_pretrained(OUT). Bad input writes nothing.",
    )
    parser.add_argument("--method", required=True, help="editing method (ft-llm, ft-vision, ike, ke, mend, serac)")
    parser.add_argument("--model", required=True, help="model directory or hub id to edit (never changed)")
    parser.add_argument("--image", help="image of the fact (omit for a text-only fact)")
    parser.add_argument("--question", help="question of the fact")
    parser.add_argument("--answer", help="new answer of the fact")
    parser.add_argument("--edits", help='JSON Lines file of facts, one {"image": path or null, "question": ..., '
                        '"answer": ...} per line (image paths relative to the file)')
    parser.add_argument("--out", required=True, help="directory to write the edited model to (new or empty)")
    parser.add_argument("--editor", help="trained editor directory (KE, SERAC, MEND: kebench train-editor)")
    parser.add_argument("--data", help="KEBench directory or hub dataset whose train split IKE retrieves "
                        "demonstrations from (default: the default world)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES, help="model dtype (default float32)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="method hyper-parameter over its default, repeatable (e.g. --set steps=20)")
    parser.set_defaults(func=_edit)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_edit(subparsers)
