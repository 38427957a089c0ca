"""``kebench`` sub-commands of the editors package (each group adds its parsers in ``add_commands``)."""

from __future__ import annotations

import argparse
import json
import os

from kebench_hf.constants import MODEL_DTYPES


def _pretrain(args: argparse.Namespace) -> int:
    from editors.pretrain import PretrainConfig, pretrain

    given = {name: getattr(args, name) for name in ("arch", "steps", "batch_size", "lr", "vision_steps", "seed")}
    config = PretrainConfig(**{name: value for name, value in given.items() if value is not None},
                            check_abilities=not args.no_check)
    if args.data is None:
        from kebench_hf.world import default_world

        args.data = default_world()
    summary = pretrain(args.data, args.out, config)
    print(json.dumps(summary, indent=2))
    print(f"saved to {args.out} (load with AutoModelForImageTextToText / AutoProcessor.from_pretrained)")
    return 0


def _add_pretrain(subparsers: argparse._SubParsersAction) -> None:
    # Defaults live in PretrainConfig; importing it here would load torch for every command.
    parser = subparsers.add_parser(
        "pretrain", help="build a tiny LVLM of a real architecture and train it on a pre-edit KEBench world"
    )
    parser.add_argument("--arch", help="tiny architecture (default llava; an unknown name is answered with the list)")
    parser.add_argument("--data", help="KEBench directory (release layout or exported dataset; default: the default world)")
    parser.add_argument("--out", required=True, help="model directory to write (resumes if a checkpoint is there)")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="queries per step (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    parser.add_argument("--vision-steps", type=int,
                        help="steps of the first stage, training the vision side alone (default: the recipe's)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check of the abilities the methods need (and the extra training it may ask for)")
    parser.set_defaults(func=_pretrain)


def parse_method_options(pairs: list[str]) -> dict[str, object]:
    """``--set steps=20 --set lr=1e-3`` -> ``{"steps": "20", "lr": "1e-3"}``: the method's config
    reads each value as its field's type (``MethodConfig.from_dict``), naming a bad one."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects NAME=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editors import run as runs
    from editors.report import score_table
    from editors.run_dir import RunSettings

    explicit = [name for name in _RUN_OPTIONS if getattr(args, name) not in (None, False, [])]
    if args.method is None:
        if explicit:
            raise ValueError("--method is required (run `kebench run` with no arguments for the main job)")
        root = runs.main_job()
        print((root / "table.md").read_text())
        print(f"runs, table and plot in {root} (plot: {root / 'scores.png'})")
        return 0
    if args.out is None:
        raise ValueError("--out RUN_DIR is required with --method")
    if args.processes is not None and args.processes > 1 and "WORLD_SIZE" not in os.environ:
        from editors.parallel import launch

        return launch(args.processes, ["run", *_run_arguments(args)])
    settings = RunSettings(
        method=args.method, out=Path(args.out), model=args.model, data=args.data, config=args.config or "edit",
        split=args.split or "test", limit=args.limit, device=args.device or "cpu", dtype=args.dtype or "float32",
        sequential=args.sequential or 1, resume=args.resume, editor=Path(args.editor) if args.editor else None,
        seed=args.seed or 0, generate=not args.no_generate, method_options=parse_method_options(args.set or []),
        preset=args.preset or "kebench", hop=args.hop, trust_remote_code=args.trust_remote_code,
        device_map=args.device_map, max_memory=args.max_memory, streaming=args.streaming,
    )
    if args.sequential_gap:
        root = runs.lifelong(settings, args.sequential_gap)
        print((root / runs.LIFELONG_TABLE).read_text())
        print(f"one run per gap in {root}/gap-G; table and curves: {root / runs.LIFELONG_TABLE}, {root / runs.LIFELONG_PLOT}")
        return 0
    scores = runs.run(settings)
    if not scores:  # a process of several other than the main one: the main one reports
        return 0
    for protocol in settings.protocols:
        print(score_table({args.method: scores}, protocol))
    print(f"predictions, scores.json and run.json in {args.out}")
    return 0


def _run_arguments(args: argparse.Namespace) -> list[str]:
    """The ``kebench run`` options of ``args`` as command-line arguments (for the launched processes)."""
    arguments: list[str] = []
    for name in _RUN_OPTIONS:
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if value is None or value is False or name == "processes":
            continue
        if value is True:
            arguments.append(flag)
        elif name == "set":
            arguments += [part for pair in value for part in (flag, pair)]
        elif isinstance(value, list):
            arguments += [flag, *map(str, value)]
        else:
            arguments += [flag, str(value)]
    return arguments


_RUN_OPTIONS = ("method", "model", "data", "config", "split", "limit", "device", "dtype", "sequential",
                "sequential_gap", "resume", "editor", "out", "seed", "no_generate", "set", "preset", "hop",
                "trust_remote_code", "processes", "device_map", "max_memory", "streaming")


def _add_run(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="edit a model with one method over a KEBench split and score it (no arguments: the main job)",
        description="With no arguments: build (once, cached) the default world and tiny LLaVA, run every "
        "registered method on the test split and print the six scores per method, plus a PNG plot.",
    )
    parser.add_argument("--method", help="editing method (`kebench methods` lists them; none: the unedited model)")
    parser.add_argument("--model", help="model directory or hub id (default: the built-in tiny LLaVA)")
    parser.add_argument("--data", help="KEBench directory or hub dataset repo (default: the default world)")
    parser.add_argument("--config", help="dataset config: edit (default), multihop, edit_onehop")
    parser.add_argument("--split", help="split to edit (default: test)")
    parser.add_argument("--limit", type=int, help="edit only the first N cases")
    parser.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=MODEL_DTYPES, help="model dtype (default float32)")
    parser.add_argument("--sequential", type=int,
                        help="our protocol: apply N edits without restoring, score all N, restore (not the reference's)")
    parser.add_argument("--sequential-gap", type=int, nargs="+", metavar="G",
                        help="VLKEB's protocol: edits accumulate, case i is scored after G further edits; --limit "
                             "counts the cases scored (the reference: 200). Several G: one run each in OUT/gap-G, "
                             "a table and curves (score against edits in the model) in OUT")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished cases")
    parser.add_argument("--editor", help="editor directory of a trained method (made by `kebench train-editor`)")
    parser.add_argument("--out", help="run directory to write")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--no-generate", action="store_true", help="token protocol only (skip greedy generation)")
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="method hyper-parameter over the preset's value, repeatable (e.g. --set lr=5e-3)")
    parser.add_argument("--preset", choices=("kebench", "vlkeb"),
                        help="kebench (default: our protocol) or vlkeb (the reference code's evaluation); "
                             "docs/protocols.md lists every difference")
    parser.add_argument("--hop", type=int, choices=(1, 2, 3, 4),
                        help="portability of this hop only; cases without such a question are dropped from "
                             "every metric (the reference's one run per hop)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model whose repository ships its own code (auto_map) run it; recorded in run.json")
    parser.add_argument("--streaming", action="store_true",
                        help="read the split as a stream (an exported dataset or hub repo): one case's images in "
                             "memory at a time")
    parser.add_argument("--device-map", choices=("auto",),
                        help="a model larger than one device: spread over the GPUs, the CPU and the disk (accelerate)")
    parser.add_argument("--max-memory", metavar="DEVICE=SIZE,...",
                        help="with --device-map: each device's bound, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="edit the cases in N processes (accelerate's launcher: one per GPU with --device cuda, "
                             "else on the CPU, gloo); the same as `accelerate launch -m kebench_hf.cli run ...`")
    parser.set_defaults(func=_run)


def _train_editor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from editors.adapters import check_device, load_adapter
    from editors.cases import CaseSequence, load_split
    from editors.defaults import default_model
    from editors.methods import make_method, method_spec, trained_method_names
    from editors.runtime import seed_everything
    from kebench_hf.world import default_world

    if not method_spec(args.method).trained:
        raise ValueError(f"method {args.method!r} has nothing to train; trained methods: {', '.join(trained_method_names())}")
    method = make_method(args.method, parse_method_options(args.set or []))
    check_device(args.device)  # before building the default world or model
    data = args.data or str(default_world())
    train = CaseSequence(load_split(data, "edit", "train"))
    seed_everything(method.config.seed)
    adapter = load_adapter(args.model or default_model(), device=args.device, dtype=args.dtype,
                           trust_remote_code=args.trust_remote_code)
    for parameter in adapter.model.parameters():
        parameter.requires_grad_(False)
    report = method.train(adapter, train, Path(args.out))
    print(json.dumps(report, indent=2))
    print(f"editor saved to {args.out}; use it with: kebench run --method {args.method} --editor {args.out} ...")
    return 0


def _add_train_editor(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-editor",
        help="train the editor of a trained method (KE, SERAC, MEND, ...) on a KEBench train split (resumable) and save it",
        description="Trains on the train split with validation on held-out train cases and early stopping; "
        "a checkpoint in OUT/checkpoint lets an interrupted run resume. Saves OUT/editor.safetensors + "
        "OUT/editor.json (config, base model identity, training report).",
    )
    parser.add_argument("--method", required=True, help="a trained method (`kebench methods` lists them)")
    parser.add_argument("--model", help="model directory or hub id (default: the built-in tiny LLaVA)")
    parser.add_argument("--data", help="KEBench directory or hub dataset repo (default: the default world)")
    parser.add_argument("--out", required=True, help="editor directory to write")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES)
    parser.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="editor setting (e.g. max_steps=200, layers=[-1]), repeatable")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model whose repository ships its own code (auto_map) run it")
    parser.set_defaults(func=_train_editor)


def _bench(args: argparse.Namespace) -> int:
    from editors.bench import run_bench

    print(run_bench(methods=args.method, limit=args.limit, shapes=args.shape, device=args.device, dtype=args.dtype,
                    preset=args.preset))
    return 0


def _add_bench(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="our engine vs a loop run the reference's way: same scores, speed ratio, memory"
    )
    parser.add_argument("--method", action="append",
                        help="method(s) to time, any that needs no training (default: ft-llm and ike)")
    parser.add_argument("--shape", action="append",
                        help="model shape(s): tiny, deep-narrow, llava-7b (random weights, all of LLaVA-1.5-7B's "
                             "dimensions: a GPU shape) (default: tiny and deep-narrow)")
    parser.add_argument("--limit", type=int, default=10, help="test cases per measurement (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES,
                        help="model dtype; outside float32 the loops' score difference is reported, not checked")
    parser.add_argument("--preset", default="kebench", choices=("kebench", "vlkeb"),
                        help="prompt form and method settings of both loops (default kebench)")
    parser.set_defaults(func=_bench)


def _convert(args: argparse.Namespace) -> int:
    from editors.convert import convert_minigpt4

    report = convert_minigpt4(args.checkpoint, args.llama, args.out, vision_heads=args.vision_heads,
                              qformer_heads=args.qformer_heads)
    print(f"MiniGPT-4 saved to {args.out} as Blip2ForConditionalGeneration ({report['mapped_keys']} keys mapped, "
          f"{len(report['dropped_keys'])} dropped as MiniGPT-4 drops them); use it with: kebench run --model {args.out}")
    return 0


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a model outside transformers into a transformers class (minigpt4)",
        description="minigpt4: MiniGPT-4's checkpoints (its llama_proj; BLIP-2's ViT and Q-Former) and Vicuna's "
        "weights into Blip2ForConditionalGeneration with a Llama text model, saved with save_pretrained.",
    )
    parser.add_argument("source", choices=("minigpt4",), help="the model to convert")
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="checkpoint file(s) in MiniGPT-4's key layout (.safetensors or tensors-only .pth)")
    parser.add_argument("--llama", required=True, help="the Vicuna (Llama) directory: config, safetensors, tokenizer")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--vision-heads", type=int, default=16, help="ViT attention heads (EVA ViT-g: 16)")
    parser.add_argument("--qformer-heads", type=int, default=12, help="Q-Former attention heads (BERT-base: 12)")
    parser.set_defaults(func=_convert)


def _methods(args: argparse.Namespace) -> int:
    from editors.methods import method_names, method_spec

    header = ("method", "trained", "sequential", "summary")
    rows = [(spec.name, "yes" if spec.trained else "no", "yes" if spec.sequential else "no", spec.summary)
            for spec in map(method_spec, method_names())]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(3)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3])
    return 0


def _add_methods(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "methods", help="list the registered editing methods: trained or not, sequential or not, what each does",
        description="The registry of editors.methods, with the methods of installed packages (entry-point group "
        "kebench.methods); docs/methods.md describes each and how to add one.",
    )
    parser.set_defaults(func=_methods)


def _plan(args: argparse.Namespace) -> int:
    from editors.plan import Workload, parse_memory, plan

    memory = parse_memory(args.gpu_memory) if args.gpu_memory else None
    given = {"rows": args.rows, "query_tokens": args.query_tokens, "context_tokens": args.context_tokens,
             "fact_tokens": args.fact_tokens, "image_tokens": args.image_tokens}
    workload = Workload(**{name: value for name, value in given.items() if value is not None})
    print(plan(args.model, args.method, args.dtype, workload).format(memory))
    return 0


def _add_plan(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="expected peak GPU memory of a method on a model, from its config alone (no weights)",
        description="Builds the model on the meta device and counts the weights and each phase of an edit "
        "(pre-edit pass, edit, post-edit pass); docs/models.md says what the terms assume.",
    )
    parser.add_argument("--model", required=True,
                        help="model directory, hub id, or an offline shape: llava-1.5-7b, blip2-opt-2.7b, minigpt4-7b, qwen2-vl-7b")
    parser.add_argument("--method", required=True, help="editing method (ft-llm, ft-vision, ike, mend, ke, serac, none)")
    parser.add_argument("--dtype", default="float32", choices=MODEL_DTYPES, help="model dtype (default float32)")
    parser.add_argument("--gpu-memory", help="the GPU's memory (e.g. 80GiB, 24GB): say whether the run fits")
    parser.add_argument("--rows", type=int, help="queries of a case scored in one batch (default 6)")
    parser.add_argument("--query-tokens", type=int, help="text tokens of the longest query (default 48)")
    parser.add_argument("--context-tokens", type=int, help="tokens of IKE's longest in-context prompt (default 1024)")
    parser.add_argument("--fact-tokens", type=int,
                        help="tokens of the edit's fact SERAC's counterfactual model reads before a query (default 32)")
    parser.add_argument("--image-tokens", type=int, help="positions per image (default: the model's)")
    parser.set_defaults(func=_plan)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_methods(subparsers)
    _add_pretrain(subparsers)
    _add_run(subparsers)
    _add_train_editor(subparsers)
    _add_bench(subparsers)
    _add_convert(subparsers)
    _add_plan(subparsers)
