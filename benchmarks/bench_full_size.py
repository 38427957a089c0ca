"""A full-size run, measured: FT-LLM and IKE with the tiny LLaVA over the test split of the ``default``
and ``full`` worlds (the full one: 3,174 test cases), in 1 and 2 processes (``kebench run --processes``).

``python benchmarks/bench_full_size.py [--limit N] [--out DIR]``: each run is ``kebench run`` in its own
process tree (a fresh peak RSS each); prints a Markdown table of wall time, seconds per edit, and the peak
RSS of each process. ``--limit`` runs the first N test cases of each world (a machine shared with others
cannot give the whole split its time).

Resumable: a run directory left by an interrupted bench is continued (``kebench run --resume``), one that
finished is read back; ``--report`` only prints the table of what the run directories hold (a run still
going or stopped: the cases written so far). The wall time of a run is the sum of its sessions' (each
session's start and end are kept next to its run directory; a session stopped before its end counts until
its last sample, see :func:`session_wall`). Seconds per edit: the mean of each case's own time in the
process that edited it, over every session (run.json's, or the written cases' while unfinished), so a
resumed run's are those of its cases (each session's first case also carries the skipping of the cases
done before it). CPU seconds per edit: the editing processes' CPU time over the cases they wrote, start-up
excluded (:func:`cpu_seconds_per_edit`): what a machine shared with others does not inflate. Peak RSS per
process: each editing process's high-water mark (``VmHWM``, read every few seconds while it runs; of the
last session, which edited the last cases), and the main process's ``ru_maxrss`` at the end, after merging and scoring
every case (run.json's ``peak_memory_mib``; finished runs only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from kebench_hf.paths import cache_dir
from kebench_hf.world import cached_world

POLL_SECONDS = 5
SAMPLE_SECONDS = 30


def session_wall(session: dict, out: Path, next_started: float | None) -> float:
    """A session's seconds; one stopped before its end: until the last case written, or once another
    session has started, until its last sample (none: until the next session started, an upper bound)."""
    if "ended" in session:
        return session["ended"] - session["started"]
    if next_started is not None:
        return max((sample[0] for sample in session.get("samples", [])), default=next_started) - session["started"]
    written = [path.stat().st_mtime for path in [*out.glob("*.jsonl"), *out.glob("shards/*.jsonl")]]
    return max([session["started"], *written]) - session["started"]


def high_water_mib(process: psutil.Process) -> float:
    """The process's peak RSS so far (Linux's VmHWM; elsewhere its RSS now)."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return process.memory_info().rss / 2**20


def lines(out: Path) -> int:
    """The cases written so far (lines of the run's and the shards' predictions files)."""
    return sum(path.read_bytes().count(b"\n") for path in [*out.glob("*.jsonl"), *out.glob("shards/*.jsonl")])


def watch(child: subprocess.Popen, out: Path, session: dict, save: Callable[[], None]) -> int:
    """Wait for ``child``, recording every few seconds the peak RSS of each process that edits (the
    leaves of its tree: the run itself, or accelerate's workers) in ``session["peaks"]``, and every
    :data:`SAMPLE_SECONDS` ``[time, cases written, CPU seconds of the editing processes]`` in
    ``session["samples"]``."""
    peaks, samples = session.setdefault("peaks", {}), session.setdefault("samples", [])
    parents: set[str] = set()  # a launcher is a leaf until it starts its workers
    cpu: dict[str, float] = {}  # each editing process's CPU seconds when last seen (one that ended keeps its own)
    while child.poll() is None:
        try:
            tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
            for process in tree:
                pid = str(process.pid)
                if process.children():
                    parents.add(pid)
                    peaks.pop(pid, None)
                elif pid not in parents:
                    peaks[pid] = max(peaks.get(pid, 0.0), high_water_mib(process))
                    times = process.cpu_times()
                    cpu[pid] = times.user + times.system
        except psutil.Error:  # a process ended between listing and reading
            continue
        if not samples or time.time() - samples[-1][0] >= SAMPLE_SECONDS:
            samples.append([time.time(), lines(out), sum(cpu.values())])
            save()
        time.sleep(POLL_SECONDS)
    return child.returncode


def cpu_seconds_per_edit(sessions: list[dict]) -> float | None:
    """CPU seconds per case, all editing processes together: the slope of their CPU time over the cases
    written, between each session's first sample with a case written and its last (start-up excluded)."""
    cpu = cases = 0.0
    for session in sessions:
        editing = [sample for sample in session.get("samples", []) if sample[1] > 0]
        if len(editing) > 1 and editing[-1][1] > editing[0][1]:
            cpu += editing[-1][2] - editing[0][2]
            cases += editing[-1][1] - editing[0][1]
    return cpu / cases if cases else None


def written_cases(out: Path) -> list[dict]:
    records = {}
    for path in [out / "predictions.jsonl", *sorted(out.glob("shards/predictions-*.jsonl"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a torn last line
                    record = json.loads(line)
                    records[record["case_id"]] = record
    return list(records.values())


def run_once(data: Path, method: str, processes: int, limit: int | None, out: Path) -> None:
    """One session of the run in ``out``: started, or resumed; a finished run is left as it is."""
    sessions_path = out.with_name(out.name + ".sessions.json")
    sessions = json.loads(sessions_path.read_text()) if sessions_path.exists() else []
    if (out / "run.json").exists() and sessions and "ended" in sessions[-1]:
        return
    command = [sys.executable, "-m", "kebench_hf.cli", "run", "--method", method, "--data", str(data),
               "--out", str(out), "--no-generate", "--processes", str(processes)]
    if limit is not None:
        command += ["--limit", str(limit)]
    if out.exists():
        command.append("--resume")
    session = {"started": time.time()}
    sessions.append(session)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        sessions_path.write_text(json.dumps(sessions) + "\n")

    save()
    code = watch(subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}), out, session, save)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {code}); run the bench again to resume it")
    session["ended"] = time.time()
    save()


def measured(out: Path) -> dict | None:
    """The figures of the run in ``out`` (finished or not); None if it has not started."""
    sessions_path = out.with_name(out.name + ".sessions.json")
    if not sessions_path.exists():
        return None
    sessions = json.loads(sessions_path.read_text())
    starts = [session["started"] for session in sessions[1:]] + [None]
    wall = sum(session_wall(session, out, next_started) for session, next_started in zip(sessions, starts, strict=True))
    last = next((session for session in reversed(sessions) if session.get("peaks")), {})
    figures = {"wall": wall, "sessions": len(sessions), "peaks": sorted(last.get("peaks", {}).values()),
               "cpu_per_edit": cpu_seconds_per_edit(sessions),
               "finished": (out / "run.json").exists() and "ended" in sessions[-1]}
    if figures["finished"]:
        info = json.loads((out / "run.json").read_text())
        return {**figures, "cases": info["cases"], "seconds_per_edit": info["seconds_per_edit"],
                "prepare": info["prepare_seconds"], "final_peak": info["peak_memory_mib"]}
    records = written_cases(out)
    seconds = [record["seconds"] for record in records if not record["error"]]
    return {**figures, "cases": len(records), "seconds_per_edit": sum(seconds) / max(1, len(seconds)),
            "prepare": None, "final_peak": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="test cases per run (default: the whole split)")
    parser.add_argument("--out", type=Path, default=cache_dir() / "bench-full-size")
    parser.add_argument("--methods", nargs="+", default=["ft-llm", "ike"])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--scales", nargs="+", default=["default", "full"])
    parser.add_argument("--report", action="store_true", help="only print what the run directories hold")
    args = parser.parse_args(argv)
    runs = [(scale, method, processes) for scale in args.scales for method in args.methods for processes in args.processes]
    if not args.report:
        for scale, method, processes in runs:
            run_once(cached_world(scale), method, processes, args.limit, args.out / name(scale, method, processes, args.limit))
    print("| world | method | processes | cases | finished | sessions | wall s | s/edit (per process) | cases/s "
          "| CPU s/edit | prepare s | peak RSS MiB of each editing process | main process's peak RSS MiB, with scoring |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scale, method, processes in runs:
        m = measured(args.out / name(scale, method, processes, args.limit))
        if m is None:
            continue
        peaks = " / ".join(f"{peak:.0f}" for peak in m["peaks"]) or "-"
        prepare = "-" if m["prepare"] is None else f"{m['prepare']:.0f}"
        final = "-" if m["final_peak"] is None else f"{m['final_peak']:.0f}"
        cpu = "-" if m["cpu_per_edit"] is None else f"{m['cpu_per_edit']:.3f}"
        print(f"| {scale} | {method} | {processes} | {m['cases']} | {'yes' if m['finished'] else 'no'} | {m['sessions']} "
              f"| {m['wall']:.0f} | {m['seconds_per_edit']:.3f} | {m['cases'] / max(m['wall'], 1e-9):.2f} | {cpu} | {prepare} "
              f"| {peaks} | {final} |", flush=True)
    return 0


def name(scale: str, method: str, processes: int, limit: int | None) -> str:
    return f"{scale}-{method}-{processes}-{limit or 'all'}"


if __name__ == "__main__":
    raise SystemExit(main())
