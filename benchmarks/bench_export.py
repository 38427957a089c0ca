"""Export time and peak memory vs the number of cases: streaming shards vs an in-memory baseline.

Writes a release-layout directory of generated images (two per case: edit + I-Generality image; the
I-Locality image is another case's edit image, as in the release) for each size, then exports it in a
fresh child process per (size, writer) so that each peak RSS (``ru_maxrss``) and peak Arrow memory is
that export's own. ``streaming`` is ``kebench export``; ``in-memory`` builds one Arrow table of every
row and writes it at once, which is what streaming avoids. Sizes count edit cases (60 % train.json,
40 % eval.json); eval_multihop.json and eval_edit_onehop.json add a quarter of the eval cases each.

    python benchmarks/bench_export.py [--sizes 2000 10000] [--workdir /tmp/kebench-bench] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

IMAGE_SIZE = 128


def _image(rng: np.random.Generator) -> Image.Image:
    """A smooth gradient with a few shapes and mild noise: compresses like a small photo, not like noise."""
    ramp = np.linspace(0, 1, IMAGE_SIZE)[None, :, None] * rng.integers(0, 255, 3)[None, None, :]
    pixels = ramp + rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, IMAGE_SIZE - 16, 2)
        w, h = rng.integers(8, 48, 2)
        draw.ellipse([int(x), int(y), int(x + w), int(y + h)], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return image


def make_release(directory: Path, cases: int, seed: int = 0) -> None:
    """A release-layout directory with ``cases`` edit cases; reused when already complete."""
    if (directory / "complete").is_file():
        return
    rng = np.random.default_rng(seed)
    images = directory / "mmkb_images"
    records = []
    for case in tqdm(range(cases), desc=f"images for {cases} cases", unit="case"):
        entity = f"m.bench{case:05d}"
        (images / entity).mkdir(parents=True, exist_ok=True)
        for name in ("google_1.jpg", "bing_2.jpg"):
            _image(rng).save(images / entity / name, quality=85)
        records.append({
            "src": f"Which entity {case} is shown in this image?", "rephrase": f"Name entity {case} in the photo.",
            "pred": f"Entity_{case}", "alt": f"Entity_{(case * 7 + 3) % cases}",
            "image": f"{entity}/google_1.jpg", "image_rephrase": f"{entity}/bing_2.jpg",
            "loc": f"unrelated question number {case}", "loc_ans": f"answer {case}",
            "m_loc": f"m.bench{(case + 1) % cases:05d}/google_1.jpg",
            "m_loc_q": "Which entity is in this picture?", "m_loc_a": f"Entity_{(case + 1) % cases}",
        })
    train = int(cases * 0.6)
    evaluation = records[train:]
    quarter = evaluation[: len(evaluation) // 4]
    multihop = [{**r, "port_new": [{"port_type": f"{hop}-hop", "Q&A": {"Question": f"hop {hop}?", "Answer": "o"}}
                                   for hop in (1, 2)]} for r in quarter]
    onehop = [{**r, "port_new": [{"port_edit_q": "q?", "port_edit_a": "a", "port_q": "q2?", "port_a": "a2"}]}
              for r in quarter]
    for name, content in [("train.json", records[:train]), ("eval.json", evaluation),
                          ("eval_multihop.json", multihop), ("eval_edit_onehop.json", onehop)]:
        (directory / name).write_text(json.dumps(content))
    (directory / "complete").write_text("")


def _export_in_memory(data_dir: Path, out_dir: Path) -> None:
    """The baseline: every row of a split in one Arrow table, written at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kebench_hf.release import ImagesRoot, ReleaseFile, find_images_root, release_files
    from kebench_hf.schema import CONFIGS, features

    images = ImagesRoot(find_images_root(data_dir))
    for config in CONFIGS:
        schema = features(config).arrow_schema
        for split, path in release_files(data_dir, config).items():
            rows = list(ReleaseFile(path, config).rows(images, embed_images=True))
            (out_dir / "data" / config).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), out_dir / "data" / config / f"{split}.parquet",
                           row_group_size=100)


def _child(writer: str, data_dir: Path, out_dir: Path) -> None:
    """Runs one export and prints its measurements as JSON (the parent compares them)."""
    import pyarrow as pa

    from kebench_hf.export import export_release

    rss_after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if writer == "streaming":
        export_release(data_dir, out_dir)
    else:
        _export_in_memory(data_dir, out_dir)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mib": rss_after_imports / 1024,
        "peak_arrow_mib": pa.default_memory_pool().max_memory() / 2**20,
        "parquet_mib": sum(p.stat().st_size for p in out_dir.rglob("*.parquet")) / 2**20,
    }))


def _measure(writer: str, data_dir: Path, out_dir: Path) -> dict:
    shutil.rmtree(out_dir, ignore_errors=True)
    result = subprocess.run([sys.executable, __file__, "--child", writer, str(data_dir), str(out_dir)],
                            capture_output=True, text=True, check=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kebench-bench"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the in-memory writer")
    parser.add_argument("--child", nargs=3, metavar=("WRITER", "DATA_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    writers = ["streaming"] + ([] if args.no_baseline else ["in-memory"])
    results = {}
    for cases in args.sizes:
        data_dir = args.workdir / f"release-{cases}"
        make_release(data_dir, cases)
        for writer in writers:
            results[cases, writer] = _measure(writer, data_dir, args.workdir / "export")
    smallest = args.sizes[0]
    print(f"\nexport of a generated release ({IMAGE_SIZE}x{IMAGE_SIZE} JPEGs, 2 files per case, every config);"
          f" ratios vs {smallest} cases with the same writer")
    print(f"{'cases':>7} {'writer':>10} {'seconds':>8} {'ms/case':>8} {'peak RSS MiB':>13} {'x':>6} "
          f"{'peak Arrow MiB':>15} {'x':>6} {'Parquet MiB':>12}")
    for (cases, writer), r in results.items():
        base = results[smallest, writer]
        print(f"{cases:>7} {writer:>10} {r['seconds']:>8.1f} {1000 * r['seconds'] / cases:>8.2f} "
              f"{r['peak_rss_mib']:>13.0f} {r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f} "
              f"{r['peak_arrow_mib']:>15.1f} {r['peak_arrow_mib'] / base['peak_arrow_mib']:>6.2f} "
              f"{r['parquet_mib']:>12.1f}")
    print(f"(RSS after imports, before exporting: {results[smallest, 'streaming']['rss_after_imports_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
