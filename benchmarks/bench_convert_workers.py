"""Benchmark: the converter's parallel encoding (--workers N) against the floor and against an earlier converter.

    .venv/bin/python benchmarks/bench_convert_workers.py CACHE_DIR [--episodes 8] [--frames 224] [--workers 2]
        [--baseline-rev a0bb68f]

Generates the sample episodes once into CACHE_DIR (reused by later runs), then, on the same episodes and in the same
run, measures per converted frame
  floor     decode every JPEG of the three cameras and PNG-encode it at the converter's level, in --workers processes,
            no lerobot: what any converter that stores these PNGs must spend;
  baseline  the converter as committed at --baseline-rev (default a0bb68f, the last one before the workers encoded:
            workers decode, lerobot's writer threads encode), run as a command with its own defaults;
  ours      this worktree's converter with --workers N.
The converters are timed by the "write" stage they print (validation and the lerobot import are excluded, and are the
same for both), the floor around its pool. Prints the seconds per frame, load average before and after, and the ratios
ours / floor (goal <= 1.5) and baseline / ours (goal >= 4). Both datasets are compared column by column (images
decoded) and the benchmark fails if they differ.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import PIL.Image
import pyarrow.parquet as pq

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import convert_robotwin_democlean_to_lerobot as converter  # noqa: E402
import generate_robotwin_samples  # noqa: E402
import robotwin_episodes  # noqa: E402

SEED = 0
# The converter's modules; the baseline revision's copies are checked out together so that it runs as it was.
CONVERTER_FILES = ("convert_robotwin_democlean_to_lerobot.py", "robotwin_episodes.py", "atomic_files.py")
# The last converter before the workers encoded PNGs themselves: the one the "4x today's converter" means.
BASELINE_REV = "a0bb68f"
WRITE_STAGE = re.compile(r"write ([\d.]+) s")


def floor_episode(source: converter.EpisodeFile) -> int:
    """Decode and PNG-encode every converted frame of every default camera; returns the frame count."""
    with robotwin_episodes.Episode(source) as episode:
        length = episode.read_pairs().length
        cameras = [episode.jpegs(episode.camera_name(role))[:length] for role in converter.DEFAULT_CAMERAS]
    for buffers in cameras:
        for buffer in buffers:
            image = converter.decode_jpeg(bytes(buffer), cv2.IMREAD_COLOR)
            PIL.Image.fromarray(image).save(io.BytesIO(), format="PNG", compress_level=converter.DEFAULT_PNG_LEVEL)
    return length


def time_floor(sources: list[converter.EpisodeFile], workers: int) -> tuple[int, float]:
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        list(pool.map(int, range(workers)))  # start the workers outside the timing, as the converters' write stage does
        started = time.perf_counter()
        frames = sum(pool.map(floor_episode, sources))
    return frames, time.perf_counter() - started


def checkout(rev: str, folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True)
    for name in CONVERTER_FILES:
        text = subprocess.run(["git", "-C", str(REPO_ROOT), "show", f"{rev}:{name}"], check=True, capture_output=True)
        (folder / name).write_bytes(text.stdout)
    return folder / CONVERTER_FILES[0]


def time_converter(script: pathlib.Path, root: pathlib.Path, output: pathlib.Path, extra: list[str]) -> float:
    """Run a converter as a command; returns the seconds of its write stage."""
    command = [sys.executable, str(script), "--root", str(root), "--repo-id", "bench/d", "--output-root", str(output)]
    result = subprocess.run([*command, *extra], capture_output=True, text=True, cwd=script.parent)
    if result.returncode != 0:
        raise SystemExit(f"{script}: failed: {result.stderr.strip()}")
    return float(WRITE_STAGE.search(result.stdout.splitlines()[-1]).group(1))


def assert_equal_datasets(first: pathlib.Path, second: pathlib.Path) -> None:
    """Every parquet column equal, images compared as decoded pixels (PNG bytes may differ between encoders)."""
    files = sorted(p.relative_to(first) for p in first.rglob("*.parquet"))
    if files != sorted(p.relative_to(second) for p in second.rglob("*.parquet")):
        raise SystemExit(f"{first} and {second} hold different parquet files")
    for name in files:
        a, b = pq.read_table(first / name).to_pydict(), pq.read_table(second / name).to_pydict()
        for key in a:
            if key.startswith(converter.IMAGE_PREFIX):
                pixels = lambda column: [np.asarray(PIL.Image.open(io.BytesIO(c["bytes"]))) for c in column]  # noqa: E731
                same = all(np.array_equal(x, y) for x, y in zip(pixels(a[key]), pixels(b[key])))
            else:
                same = a[key] == b.get(key)
            if not same:
                raise SystemExit(f"{name}: column {key} differs between the baseline and ours")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=pathlib.Path, help="folder for the generated episodes (kept) and outputs")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2, help="processes of the floor and of ours")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the baseline converter")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = generate_robotwin_samples.cached_demo_clean(args.cache, args.episodes, args.frames, SEED, 0, args.workers)
    sources = converter.find_episodes(root)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-workers-", dir=args.cache))
    try:
        load_before = os.getloadavg()
        frames, floor = time_floor(sources, args.workers)
        print(f"floor ({args.workers} processes): {floor:.1f} s for {frames} frames", flush=True)
        baseline_script = checkout(args.baseline_rev, work / "baseline-code")
        baseline = time_converter(baseline_script, root, work / "baseline", [])
        print(f"baseline ({args.baseline_rev}, its defaults): write {baseline:.1f} s", flush=True)
        ours = time_converter(REPO_ROOT / CONVERTER_FILES[0], root, work / "ours", ["--workers", str(args.workers)])
        print(f"ours (--workers {args.workers}): write {ours:.1f} s", flush=True)
        assert_equal_datasets(work / "baseline" / "bench/d", work / "ours" / "bench/d")
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_frame = lambda seconds: f"{1000 * seconds / frames:.2f} ms/frame"  # noqa: E731
    print(f"{len(sources)} episodes, {frames} frames, 3 cameras at 320x240, PNG level {converter.DEFAULT_PNG_LEVEL}")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"  floor     {per_frame(floor)}")
    print(f"  baseline  {per_frame(baseline)}")
    print(f"  ours      {per_frame(ours)}")
    print(f"ours / floor {ours / floor:.2f} (goal <= 1.5), baseline / ours {baseline / ours:.2f} (goal >= 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
