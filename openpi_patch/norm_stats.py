"""Norm stats once per dataset: openpi's compute_norm_stats for several configs, from the parquet columns alone.

    python openpi_patch/norm_stats.py [--repo-id ID] [--lerobot-home DIR] [--assets-base-dir DIR] [--overwrite]
                                      [--demo] [--debug] CONFIG [CONFIG ...]

Run it with the interpreter that imports the patched openpi (in OPENPI_DIR: `uv run python
/path/to/toolkit/openpi_patch/norm_stats.py ...`; --demo patches a temporary copy of the installed rpent-openpi, as
the CPU demo does). For the named train configs it computes the numbers openpi's scripts/compute_norm_stats.py
writes, without decoding a single image:

- configs whose data pipelines are the same share one pass: the same dataset (repo id),
  the same prompt and action-chunk settings (action_horizon, action_sequence_keys, prompt_from_task), the same
  batch size (openpi's pass drops the last len % batch_size frames and its quantiles depend on the batches), the
  same repack and data transforms (compared by value) and the same norm-stats keys;
- each dataset's non-image columns are read once from its parquet files (pyarrow), in either LeRobot format: v2.1
  through lerobot's metadata (one file per episode), v3.0 (lerobot >= 0.4, XPolicyLab's Pi_05; several episodes
  per file) from its files as lerobot 0.4.4 reads them, whatever lerobot is installed; each frame becomes the item
  lerobot's reader would give openpi (the action chunk built as lerobot's delta_timestamps build it: action_horizon
  rows from this frame on, the episode's last row repeated past its end, with the *_is_pad flags), with each image
  replaced by a black uint8 image of its declared shape (the form a policy gets images in at inference);
- the items go through the configs' own transforms (PromptFromLeRobotTask when prompt_from_task, then repack and
  data transforms), in dataset order, in batches of the config's batch_size, into openpi.shared.normalize.RunningStats
  for 'state' and 'actions', exactly as compute_norm_stats.py feeds them;
- each config's norm_stats.json goes where its training reads it, `config.assets_dirs / asset_id`
  (assets_base_dir defaults to the config's own, ./assets, so run it in OPENPI_DIR), in openpi's own serialisation
  (normalize.serialize_json, what normalize.save writes), through a temporary name. A config that has the file
  already is kept unless --overwrite.

Prints one line per dataset read and per pass, naming the configs that shared it, then each file written.
Exit status 1 with one line on stderr for a missing dataset, a config this tool cannot serve (RLDS data, no repo
id), a dataset smaller than the batch size or a short parquet file.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

# atomic_files one level up; cpu_variants (--demo) next to this file: openpi_patch/ is a folder of scripts.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import cpu_variants

import atomic_files

# The keys openpi's compute_norm_stats.py keeps, in its order.
NORM_STATS_KEYS = ("state", "actions")
NORM_STATS_FILE = "norm_stats.json"
# Feature dtypes lerobot decodes into pixels: never read here.
PIXEL_DTYPES = ("image", "video")


class NormStatsError(Exception):
    """Bad input: main prints it as one line and exits 1."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One config's norm stats: its train config, the data config it creates, and where its training reads them."""

    name: str
    config: Any  # openpi.training.config.TrainConfig
    data_config: Any  # openpi.training.config.DataConfig

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.config.assets_dirs) / self.data_config.asset_id / NORM_STATS_FILE


@dataclasses.dataclass
class Group:
    """Configs whose norm stats are one computation: the same stats_inputs."""

    inputs: tuple
    requests: list[Request]

    @property
    def names(self) -> list[str]:
        return [request.name for request in self.requests]


@dataclasses.dataclass(frozen=True)
class Columns:
    """A dataset's non-image columns in lerobot's frame order, and what its reader adds to every frame."""

    repo_id: str
    root: pathlib.Path
    fps: int
    tasks: dict[int, str]
    values: dict[str, np.ndarray]  # feature -> (frames, *shape); a (1,)-shaped feature is a scalar per frame
    episode_start: np.ndarray  # (frames,) first frame of each frame's episode
    episode_end: np.ndarray  # (frames,) one past its last frame
    placeholders: dict[str, np.ndarray]  # image feature -> black uint8 image of its declared shape

    @property
    def frames(self) -> int:
        return len(self.episode_start)


@dataclasses.dataclass(frozen=True)
class PassResult:
    group: Group
    frames_used: int
    frames_total: int
    seconds: float
    stats: dict  # key -> openpi.shared.normalize.NormStats
    written: list[pathlib.Path]


# ---- configs and their grouping ------------------------------------------------------------------------------


def load_requests(names: list[str], repo_id: str | None, assets_base_dir: pathlib.Path | None) -> list[Request]:
    from openpi.training import config as openpi_config

    requests = []
    for name in names:
        try:
            config = openpi_config.get_config(name)
        except ValueError as e:
            raise NormStatsError(str(e)) from None
        if repo_id is not None:
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, repo_id=repo_id))
        if assets_base_dir is not None:
            config = dataclasses.replace(config, assets_base_dir=str(assets_base_dir))
        with tempfile.TemporaryDirectory(prefix="no-norm-stats.") as empty:
            # create() also loads the norm stats it finds, which this tool never needs: a damaged file must not
            # keep --overwrite from replacing it.
            data_config = config.data.create(pathlib.Path(empty), config.model)
        if data_config.rlds_data_dir is not None:
            raise NormStatsError(f"{name}: reads RLDS data; this tool reads LeRobot datasets only")
        if data_config.repo_id in (None, "fake"):
            raise NormStatsError(f"{name}: has no LeRobot dataset (repo_id {data_config.repo_id!r})")
        requests.append(Request(name, config, data_config))
    return requests


def stats_inputs(request: Request) -> tuple:
    """Everything that decides the numbers compute_norm_stats.py writes for this config (not where it writes them)."""
    data_config = request.data_config
    return (
        data_config.repo_id,
        request.config.model.action_horizon,
        tuple(data_config.action_sequence_keys),
        data_config.prompt_from_task,
        request.config.batch_size,
        tuple(data_config.repack_transforms.inputs),
        tuple(data_config.data_transforms.inputs),
        NORM_STATS_KEYS,
    )


def group_requests(requests: list[Request]) -> list[Group]:
    """Configs with equal stats_inputs, in the order of their first config. Equality, not hashing: a RepackTransform
    holds a dict; a transform without value equality compares by identity and so shares nothing, which is safe."""
    groups: list[Group] = []
    for request in requests:
        inputs = stats_inputs(request)
        group = next((group for group in groups if group.inputs == inputs), None)
        if group is None:
            groups.append(Group(inputs, [request]))
        else:
            group.requests.append(request)
    return groups


# ---- the dataset's columns -----------------------------------------------------------------------------------


def lerobot_dataset_module():
    """lerobot's dataset module at either import path: openpi's pinned rev or lerobot 0.3.x."""
    try:
        from lerobot.common.datasets import lerobot_dataset
    except ImportError:
        from lerobot.datasets import lerobot_dataset
    return lerobot_dataset


def dataset_root(repo_id: str, lerobot_home: pathlib.Path | None) -> pathlib.Path:
    home = lerobot_home if lerobot_home is not None else pathlib.Path(lerobot_dataset_module().HF_LEROBOT_HOME)
    return pathlib.Path(home) / repo_id


def column_values(table, name: str, frames: int, shape: tuple[int, ...]) -> np.ndarray:
    """A parquet column as one array: lists flattened and reshaped to the feature's shape, scalars as they are."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        return column.to_numpy(zero_copy_only=False)
    while pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False).reshape(frames, *shape)


def black_image(feature: dict) -> np.ndarray:
    """A zero-stride black uint8 image in HWC order, whatever order the feature's names declare."""
    shape = tuple(feature["shape"])
    names = feature.get("names") or []
    if len(shape) == 3 and list(names)[:1] == ["channels"]:
        shape = (shape[1], shape[2], shape[0])
    return np.broadcast_to(np.zeros((), np.uint8), shape)


def parquet_files(folder: pathlib.Path, columns: list[str]):
    """The rows of every FOLDER/chunk-*/file-*.parquet in sorted order, as lerobot 0.4's load_nested_dataset
    concatenates them, as one pyarrow table of the given columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = sorted(folder.glob("*/*.parquet"))
    if not paths:
        raise NormStatsError(f"{folder}: no parquet files (chunk-*/file-*.parquet)")
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path, columns=columns))
        except (OSError, KeyError, ValueError, pa.ArrowException) as e:
            raise NormStatsError(f"{path}: cannot read the columns {', '.join(columns)}: {e}") from None
    return pa.concat_tables(tables)


def v3_tasks(path: pathlib.Path) -> dict[int, str]:
    """task_index -> task of meta/tasks.parquet, a pandas frame whose index is the task (lerobot 0.4's write_tasks)."""
    import pyarrow.parquet as pq

    try:
        tasks = pq.read_table(path).to_pandas()
        return {int(index): str(task) for task, index in zip(tasks.index, tasks["task_index"], strict=True)}
    except (OSError, KeyError, ValueError) as e:
        raise NormStatsError(f"{path}: not lerobot's task table ({type(e).__name__}: {e})") from None


def read_v3_columns(repo_id: str, root: pathlib.Path, info: dict) -> Columns:
    """A LeRobot v3.0 dataset (lerobot >= 0.4, XPolicyLab's Pi_05) as lerobot 0.4.4's LeRobotDataset reads it, read
    here without lerobot (the toolkit's lerobot reads v2.x only): frame i is row i of the data files, and its
    episode's frames are meta/episodes' dataset_from_index to dataset_to_index of its episode_index."""
    features = info["features"]
    readable = [key for key, feature in features.items() if feature["dtype"] not in PIXEL_DTYPES]
    episodes = parquet_files(root / "meta" / "episodes", ["episode_index", "length", "dataset_from_index",
                                                          "dataset_to_index"])  # fmt: skip
    table = parquet_files(root / "data", readable)
    frames = table.num_rows
    values = {key: column_values(table, key, frames, tuple(features[key]["shape"])) for key in readable}
    number, length, first, last = (episodes.column(name).to_numpy() for name in episodes.column_names)
    data = root / "data"
    # lerobot looks a frame's episode up by position in meta/episodes and its window up by row
    if not np.array_equal(number, np.arange(len(number))):
        raise NormStatsError(f"{root / 'meta' / 'episodes'}: episodes {number.tolist()}, not 0-{len(number) - 1}")
    if not np.array_equal(values["index"], np.arange(frames)):
        raise NormStatsError(f"{data}: the index column does not count the {frames} rows from 0")
    if int(length.sum()) != frames or not np.array_equal(last - first, length):
        raise NormStatsError(f"{data}: {frames} rows, meta/episodes lists {int(length.sum())} frames")
    episode_of_row = values["episode_index"]
    for episode, start, end in zip(number, first, last, strict=True):
        if not (episode_of_row[start:end] == episode).all():
            raise NormStatsError(f"{data}: rows {start}-{end - 1} are not all episode {episode}, as meta/episodes says")
    return Columns(
        repo_id=repo_id,
        root=root,
        fps=int(info["fps"]),
        tasks=v3_tasks(root / "meta" / "tasks.parquet"),
        values=values,
        episode_start=first[episode_of_row],
        episode_end=last[episode_of_row],
        placeholders={key: black_image(f) for key, f in features.items() if f["dtype"] in PIXEL_DTYPES},
    )


def read_columns(repo_id: str, root: pathlib.Path) -> Columns:
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise NormStatsError(f"{root}: no LeRobot dataset here (meta/info.json missing)")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as e:
        raise NormStatsError(f"{info_path}: not JSON ({e})") from None
    if str(info.get("codebase_version", "")).startswith("v3."):
        return read_v3_columns(repo_id, root, info)
    import pyarrow.parquet as pq

    meta = lerobot_dataset_module().LeRobotDatasetMetadata(repo_id, root=root)
    features = meta.features
    readable = [key for key, feature in features.items() if feature["dtype"] not in PIXEL_DTYPES]
    pieces: dict[str, list[np.ndarray]] = {key: [] for key in readable}
    starts, ends = [], []
    frame = 0
    for episode_index, episode in meta.episodes.items():
        path = root / meta.get_data_file_path(episode_index)
        try:
            table = pq.read_table(path, columns=readable)
        except (OSError, KeyError, ValueError) as e:
            raise NormStatsError(f"{path}: cannot read the columns {', '.join(readable)}: {e}") from None
        length = int(episode["length"])
        if table.num_rows != length:
            raise NormStatsError(f"{path}: {table.num_rows} rows, meta/episodes.jsonl says {length}")
        for key in readable:
            pieces[key].append(column_values(table, key, length, tuple(features[key]["shape"])))
        # lerobot's episode_data_index: each episode's frames lie between the cumulated lengths
        starts.append(np.full(length, frame))
        ends.append(np.full(length, frame + length))
        frame += length
    return Columns(
        repo_id=repo_id,
        root=root,
        fps=meta.fps,
        tasks=dict(meta.tasks),
        values={key: np.concatenate(parts) for key, parts in pieces.items()},
        episode_start=np.concatenate(starts),
        episode_end=np.concatenate(ends),
        placeholders={key: black_image(f) for key, f in features.items() if f["dtype"] in PIXEL_DTYPES},
    )


# ---- one pass --------------------------------------------------------------------------------------------------


def delta_indices(fps: int, action_horizon: int) -> np.ndarray:
    """lerobot's get_delta_indices of openpi's delta_timestamps ([t / fps for t < action_horizon])."""
    return np.array([round(t / fps * fps) for t in range(action_horizon)])


def reader_items(columns: Columns, sequence_keys: tuple[str, ...], action_horizon: int) -> Iterator[dict]:
    """Each frame as LeRobotDataset.__getitem__ gives it, images aside: chunks clamped to the frame's episode."""
    deltas = delta_indices(columns.fps, action_horizon)
    for index in range(columns.frames):
        start, end = columns.episode_start[index], columns.episode_end[index]
        # copies, since openpi's transforms may write into what they get (DeltaActions subtracts in place)
        item = {key: values[index].copy() for key, values in columns.values.items()}
        for key in sequence_keys:
            wanted = index + deltas
            item[key] = columns.values[key][np.clip(wanted, start, end - 1)]
            item[f"{key}_is_pad"] = (wanted < start) | (wanted >= end)
        item.update(columns.placeholders)
        item["task"] = columns.tasks[int(item["task_index"])]
        yield item


def as_loaded(values: list) -> np.ndarray:
    """The collated batch as compute_norm_stats.py sees it: stacked, then through a JAX array (float64 -> float32
    unless jax_enable_x64), then back to numpy."""
    import jax

    stacked = np.stack([np.asarray(value) for value in values])
    return stacked.astype(jax.dtypes.canonicalize_dtype(stacked.dtype), copy=False)


def compute_group(group: Group, columns: Columns) -> tuple[dict, int]:
    """The group's norm stats and the number of frames they cover."""
    from openpi import transforms
    from openpi.shared import normalize

    request = group.requests[0]
    data_config, config = request.data_config, request.config
    batch_size = config.batch_size
    batches = columns.frames // batch_size
    if batches == 0:
        raise NormStatsError(
            f"{columns.root}: {columns.frames} frames, fewer than {request.name}'s batch size {batch_size}"
        )
    steps = [transforms.PromptFromLeRobotTask(columns.tasks)] if data_config.prompt_from_task else []
    transform = transforms.compose([*steps, *data_config.repack_transforms.inputs, *data_config.data_transforms.inputs])
    items = reader_items(columns, tuple(data_config.action_sequence_keys), config.model.action_horizon)
    stats = {key: normalize.RunningStats() for key in NORM_STATS_KEYS}
    for _ in range(batches):
        batch = [transform(item) for item in itertools.islice(items, batch_size)]
        for key in NORM_STATS_KEYS:
            stats[key].update(as_loaded([item[key] for item in batch]))
    return {key: running.get_statistics() for key, running in stats.items()}, batches * batch_size


def write_stats(path: pathlib.Path, stats: dict) -> None:
    from openpi.shared import normalize

    # normalize.save writes exactly this text, but in place; a temporary name keeps a killed run from leaving half.
    atomic_files.write_text(path, normalize.serialize_json(stats))


# ---- the whole run ---------------------------------------------------------------------------------------------


def compute_all(
    requests: list[Request], lerobot_home: pathlib.Path | None, *, overwrite: bool = False, out=None
) -> list[PassResult]:
    """One pass per group that has a config to write; each dataset read once. Prints as it goes (to out, else
    stdout)."""
    out = out or sys.stdout
    results = []
    datasets: dict[str, Columns] = {}
    groups = group_requests(requests)
    for number, group in enumerate(groups, 1):
        pending = [request for request in group.requests if overwrite or not request.path.is_file()]
        for request in group.requests:
            if request not in pending:
                print(f"norm stats: {request.name} has them already: {request.path} (--overwrite)", file=out)
        if not pending:
            continue
        repo_id = group.inputs[0]
        if repo_id not in datasets:
            started = time.monotonic()
            columns = datasets[repo_id] = read_columns(repo_id, dataset_root(repo_id, lerobot_home))
            print(
                f"norm stats: {repo_id}: {columns.frames} frames, columns {', '.join(columns.values)} read without "
                f"images from {columns.root} ({time.monotonic() - started:.1f} s)",
                file=out,
                flush=True,
            )
        started = time.monotonic()
        stats, used = compute_group(group, datasets[repo_id])
        seconds = time.monotonic() - started
        for request in pending:
            write_stats(request.path, stats)
        batch_size = group.requests[0].config.batch_size
        print(
            f"norm stats: pass {number} of {len(groups)} over {repo_id} ({used} of {datasets[repo_id].frames} frames, "
            f"{used // batch_size} batches of {batch_size}, {seconds:.1f} s) "
            f"{'shared by' if len(group.names) > 1 else 'for'} {', '.join(group.names)}",
            file=out,
        )
        for request in pending:
            print(f"  {request.name}: {request.path}", file=out, flush=True)
        results.append(
            PassResult(group, used, datasets[repo_id].frames, seconds, stats, [request.path for request in pending])
        )
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="openpi train config names")
    parser.add_argument(
        "--repo-id", metavar="ID", help="the dataset every config reads (default: each config's own repo_id)"
    )
    parser.add_argument(
        "--lerobot-home",
        type=pathlib.Path,
        metavar="DIR",
        help="the folder holding REPO_ID (default: lerobot's HF_LEROBOT_HOME)",
    )
    parser.add_argument(
        "--assets-base-dir",
        type=pathlib.Path,
        metavar="DIR",
        help="write under DIR/CONFIG/ASSET_ID (default: the config's, ./assets)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace norm stats a config has already")
    parser.add_argument(
        "--demo", action="store_true", help="use the installed rpent-openpi, patched in a temporary copy"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def use_a_tokenizer(scratch: pathlib.Path) -> None:
    """config.data.create builds the PaligemmaTokenizer, which downloads its model when openpi's cache lacks it; the
    norm stats never tokenize, so without it a stand-in in a temporary folder will do (never in the user's cache)."""
    data_home = pathlib.Path(os.environ.get("OPENPI_DATA_HOME", cpu_variants.DEFAULT_DATA_HOME)).expanduser()
    if not (data_home / cpu_variants.TOKENIZER_RELPATH).is_file():
        os.environ["OPENPI_DATA_HOME"] = str(scratch)
        cpu_variants.write_stand_in_tokenizer(scratch)


def run(args: argparse.Namespace, site: pathlib.Path) -> int:
    if "LEROBOT_HOME" in os.environ:  # both lerobot versions raise on import when it is set
        raise NormStatsError(f"LEROBOT_HOME={os.environ['LEROBOT_HOME']}: lerobot refuses it; set HF_LEROBOT_HOME")
    if args.demo:
        cpu_variants.use_patched_openpi(site)
        use_a_tokenizer(site / "openpi_data")
    requests = load_requests(list(dict.fromkeys(args.configs)), args.repo_id, args.assets_base_dir)
    compute_all(requests, args.lerobot_home, overwrite=args.overwrite)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="openpi-patched.") as site:
            return run(args, pathlib.Path(site))
    except NormStatsError as e:
        if args.debug:
            raise
        print(f"norm_stats.py: {e}", file=sys.stderr)
        return 1
    # Whatever openpi, lerobot or pyarrow raise becomes one line too; --debug shows the traceback.
    except Exception as e:
        if args.debug:
            raise
        print(f"norm_stats.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
