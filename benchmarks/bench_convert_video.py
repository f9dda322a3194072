"""Benchmark: images as PNG inside parquet (the default) against lerobot's video features (--video): size, write
time, and the cost of decoding frames back, every frame in order and a random sample as a training loader draws them.

    .venv/bin/python benchmarks/bench_convert_video.py CACHE_DIR [--episodes 2] [--frames 224] [--workers 2]
        [--random-frames 200]

On the same generated episodes, in the same run: the converter writes both datasets (timed by its "write" stage);
then every image of each is decoded: the PNG bytes in the parquet files by PIL (as lerobot's reader does), the mp4
files by PyAV (lerobot's own readers cannot run here: torchcodec lacks FFmpeg's libraries, and lerobot 0.3.2's PyAV
path needs torchvision.io.VideoReader, which torchvision 0.29 removed), and the seconds per frame are printed. The video
frames are compared with the PNG ones (lossless, the source after JPEG decoding): mean and largest mean absolute
difference per frame, in grey levels.

Random access: the same --random-frames (episode, frame) picks, drawn with a fixed seed, are read one at a time from
each dataset, the image of every camera as a training loader's item holds them: one PNG cell from parquet tables
already in memory (a loader keeps them memory-mapped), or, per image, open the mp4, seek to the keyframe at or before
the frame and decode up to it (as lerobot's readers do per item). Every randomly read image must equal the same image
of the sequential pass, or the benchmark fails. All figures are per frame, that is for the three cameras' images.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import shutil
import sys
import tempfile
import time

import av
import numpy as np
import PIL.Image
import pyarrow.parquet as pq

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import bench_convert_workers  # noqa: E402

import convert_robotwin_democlean_to_lerobot as converter  # noqa: E402
import generate_robotwin_samples  # noqa: E402

SEED = 0
REPO_ID = "bench/d"
# A frame a training loader draws: (episode, frame index); it reads the image of every camera at that frame.
Pick = tuple[int, int]


def png_cells(dataset: pathlib.Path) -> dict[tuple[str, int], list[bytes]]:
    """The PNG bytes in the parquet files per (camera, episode), in frame order."""
    cells: dict[tuple[str, int], list[bytes]] = {}
    for path in sorted(dataset.rglob("*.parquet")):
        table = pq.read_table(path).to_pydict()
        for key in (k for k in table if k.startswith(converter.IMAGE_PREFIX)):
            for episode, cell in zip(table["episode_index"], table[key], strict=True):
                cells.setdefault((key, episode), []).append(cell["bytes"])
    return cells


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)))


def png_frames(dataset: pathlib.Path) -> tuple[float, dict[tuple[str, int], list[np.ndarray]]]:
    """Seconds to decode every PNG in the parquet files (PIL, as lerobot does), and the frames per (camera, episode)."""
    started = time.perf_counter()
    frames = {key: [decode_png(data) for data in cells] for key, cells in png_cells(dataset).items()}
    return time.perf_counter() - started, frames


def video_files(dataset: pathlib.Path) -> dict[tuple[str, int], pathlib.Path]:
    """The mp4 per (camera, episode): lerobot names them <camera>/episode_<index>.mp4."""
    return {(path.parent.name, int(path.stem.rsplit("_", 1)[1])): path for path in sorted(dataset.rglob("*.mp4"))}


def video_frames(dataset: pathlib.Path) -> tuple[float, dict[tuple[str, int], list[np.ndarray]]]:
    """Seconds to decode every mp4 (PyAV, true RGB), and the frames per (camera, episode)."""
    started = time.perf_counter()
    frames = {}
    for key, path in video_files(dataset).items():
        with av.open(str(path)) as container:
            frames[key] = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return time.perf_counter() - started, frames


def video_frame_at(path: pathlib.Path, index: int) -> tuple[np.ndarray, int]:
    """Frame `index` of an mp4 decoded from the keyframe at or before it, and how many frames that decoded."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        target = (stream.start_time or 0) + round(index / stream.average_rate / stream.time_base)
        container.seek(target, stream=stream, backward=True, any_frame=False)
        for decoded, frame in enumerate(container.decode(stream), start=1):
            if frame.pts >= target:
                return frame.to_ndarray(format="rgb24"), decoded
    raise SystemExit(f"{path}: no frame {index} after seeking to its keyframe")


def random_picks(frames: dict[tuple[str, int], list[np.ndarray]], count: int) -> list[Pick]:
    """`count` distinct frames of the episodes, the same for every run with these episodes."""
    lengths = {episode: len(images) for (_, episode), images in frames.items()}
    every = [(episode, index) for episode in sorted(lengths) for index in range(lengths[episode])]
    chosen = np.random.default_rng(SEED).choice(len(every), size=min(count, len(every)), replace=False)
    return [every[i] for i in chosen]


def random_png(dataset: pathlib.Path, cameras: list[str], picks: list[Pick]) -> tuple[float, list[np.ndarray], int]:
    """Seconds to decode the picked frames' PNG cells one by one (the parquet tables read beforehand, untimed), the
    images (pick by pick, camera by camera), and the images decoded in all (one per image)."""
    cells = png_cells(dataset)
    started = time.perf_counter()
    images = [decode_png(cells[(camera, episode)][index]) for episode, index in picks for camera in cameras]
    return time.perf_counter() - started, images, len(images)


def random_video(dataset: pathlib.Path, cameras: list[str], picks: list[Pick]) -> tuple[float, list[np.ndarray], int]:
    """Seconds to decode the picked frames one by one, each camera's image from its keyframe, the images (pick by
    pick, camera by camera), and the video frames decoded in all (keyframes and those up to each image included)."""
    files = video_files(dataset)
    started = time.perf_counter()
    results = [video_frame_at(files[(camera, episode)], index) for episode, index in picks for camera in cameras]
    elapsed = time.perf_counter() - started
    return elapsed, [image for image, _ in results], sum(decoded for _, decoded in results)


def folder_mb(path: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=pathlib.Path, help="folder for the generated episodes (kept) and outputs")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--frames", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--random-frames", type=int, default=200, help="frames decoded one by one at random")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = generate_robotwin_samples.cached_demo_clean(args.cache, args.episodes, args.frames, SEED, 0, args.workers)
    script = REPO_ROOT / "convert_robotwin_democlean_to_lerobot.py"
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-video-", dir=args.cache))
    results = {}
    try:
        load_before = os.getloadavg()
        for name, extra in (("png", []), ("video", ["--video"])):
            write = bench_convert_workers.time_converter(
                script, root, work / name, ["--workers", str(args.workers), *extra]
            )
            dataset = work / name / REPO_ID
            read, images = (video_frames if extra else png_frames)(dataset)
            results[name] = (write, folder_mb(dataset), read, images)
            print(f"{name}: write {write:.1f} s, {results[name][1]:.1f} MB, read {read:.1f} s", flush=True)
        if results["png"][3].keys() != results["video"][3].keys():
            raise SystemExit("the PNG and video datasets hold different cameras or episodes")
        picks = random_picks(results["png"][3], args.random_frames)
        cameras = sorted({camera for camera, _ in results["png"][3]})
        wanted = [(camera, episode, index) for episode, index in picks for camera in cameras]
        random_read = {}
        for name, reader in (("png", random_png), ("video", random_video)):
            seconds, picked, decoded = reader(work / name / REPO_ID, cameras, picks)
            for (camera, episode, index), image in zip(wanted, picked, strict=True):
                if not np.array_equal(image, results[name][3][(camera, episode)][index]):
                    where = f"{camera} of episode {episode}, frame {index}"
                    raise SystemExit(f"{name}: the random read of {where} differs from the sequential decode")
            random_read[name] = (seconds, decoded)
            print(f"{name}: random read {seconds:.1f} s for {len(picks)} frames", flush=True)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    frames = sum(len(images) for images in results["png"][3].values()) // len(converter.DEFAULT_CAMERAS)
    errors = [
        np.abs(png.astype(np.int16) - video.astype(np.int16)).mean()
        for key, pngs in results["png"][3].items()
        for png, video in zip(pngs, results["video"][3][key], strict=True)
    ]
    print(f"{args.episodes} episodes, {frames} frames, 3 cameras at 320x240")
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(f"random read: {len(picks)} frames drawn with seed {SEED}, each camera's image decoded alone")
    for name, (write, size, read, _) in results.items():
        per_frame = f"write {1000 * write / frames:.2f} ms/frame, read {1000 * read / frames:.2f} ms/frame"
        seconds, decoded = random_read[name]
        at_random = f"random read {1000 * seconds / len(picks):.2f} ms/frame"
        print(f"  {name:6}{size:.1f} MB, {per_frame}, {at_random} ({decoded / len(wanted):.2f} decoded per image)")
    png, video = results["png"], results["video"]
    print(
        f"video / png: size {video[1] / png[1]:.2f}, write {video[0] / png[0]:.2f}, read {video[2] / png[2]:.2f}, "
        f"random read {random_read['video'][0] / random_read['png'][0]:.2f}"
    )
    print(
        f"video against png: mean abs difference {np.mean(errors):.2f} grey levels (largest frame {np.max(errors):.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
