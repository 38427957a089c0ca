"""Throughput and memory of the local hub server, against a plain file copy on the same disk.

Starts ``python -m kebench_hf.testing.hub_server`` as a child process, then for each size uploads
one random (incompressible) file through ``HfApi.upload_file`` (preupload + LFS PUT + commit) and
downloads it with ``hf_hub_download``; the baseline is ``shutil.copyfile`` of the same file, run in
the same process. Also pushes a folder of many small files with ``kebench_hf.hub.push_folder``.
Prints absolute times, ratios to the baseline, and the server's peak RSS (``VmHWM``) after each
size: it streams uploads and downloads, so its memory should not grow with the file size.

    python benchmarks/bench_hub_server.py [--sizes-mb 32 128] [--small-files 500] [--workdir /tmp/kebench-hub-bench]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

TOKEN = "hf_kebench_test_token"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--small-files", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kebench-hub-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(HF_ENDPOINT=endpoint, HF_TOKEN=TOKEN, HF_HUB_DISABLE_XET="1", HF_UPDATE_DOWNLOAD_COUNTS="0",
                      HF_HOME=str(args.workdir / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    server = subprocess.Popen([sys.executable, "-m", "kebench_hf.testing.hub_server", "--port", str(port),
                               "--root", str(args.workdir / "storage")], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        from huggingface_hub import HfApi, hf_hub_download

        from kebench_hf.hub import push_folder

        api = HfApi()
        api.create_repo("bench/files", repo_type="dataset")
        print(f"{'size':>8} {'copy s':>8} {'upload s':>9} {'x copy':>7} {'download s':>11} {'x copy':>7} "
              f"{'server peak RSS MB':>19}")
        for size_mb in args.sizes_mb:
            source = args.workdir / f"blob-{size_mb}.bin"
            with source.open("wb") as handle:
                for _ in range(size_mb):
                    handle.write(os.urandom(1 << 20))
            copy = _timed(lambda: shutil.copyfile(source, args.workdir / "copy.bin"))  # noqa: B023
            upload = _timed(lambda: api.upload_file(path_or_fileobj=str(source), path_in_repo=source.name,  # noqa: B023
                                                    repo_id="bench/files", repo_type="dataset"))
            download = _timed(lambda: hf_hub_download("bench/files", source.name, repo_type="dataset"))  # noqa: B023
            print(f"{size_mb:>6}MB {copy:>8.2f} {upload:>9.2f} {upload / copy:>7.1f} {download:>11.2f} "
                  f"{download / copy:>7.1f} {_peak_rss_mb(server.pid):>19.0f}")

        folder = args.workdir / "small"
        for index in range(args.small_files):
            path = folder / f"part-{index // 100}" / f"file-{index:05d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f'{{"index": {index}}}\n')
        copy = _timed(lambda: shutil.copytree(folder, args.workdir / "small-copy"))
        push = _timed(lambda: push_folder(folder, "bench/small"))
        listing = _timed(lambda: api.list_repo_files("bench/small", repo_type="dataset"))
        print(f"push of {args.small_files} small files: {push:.2f} s ({push / copy:.0f}x copytree {copy:.3f} s); "
              f"recursive listing {listing:.3f} s; server peak RSS {_peak_rss_mb(server.pid):.0f} MB")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
