"""Convert RoboTwin 2.0 demo_clean episodes into a LeRobot v2.1 dataset that openpi trains on, with progress fields.

    python convert_robotwin_democlean_to_lerobot.py --root data/place_dual_shoes/demo_clean \\
        --repo-id robotwin/place_dual_shoes --verify
    python convert_robotwin_democlean_to_lerobot.py --root data/RoboTwin/place_dual_shoes/aloha_agilex \\
        --repo-id robotwin/place_dual_shoes

reads RoboTwin's episodes in either layout (robotwin_episodes.py): legacy <root>/data/episode{N}.hdf5 with
<root>/instructions/episode{N}.json, or XPolicyLab trajectory files <root>/data/episode_{N:07d}.hdf5 (as collected or
as migrated; instructions inside), <root> being the folder above data/ or data/ itself (every episode, or
those --episodes names, e.g. 0-44,47), and writes the dataset to
$HF_LEROBOT_HOME/<repo-id> (default ~/.cache/huggingface/lerobot/<repo-id>; --output-root DIR writes DIR/<repo-id>)
through lerobot's own writer: format v2.1 (default) with openpi's pinned rev or lerobot 0.3.x, which openpi reads;
--format v3.0 (XPolicyLab's Pi_05) with lerobot 0.4.4, for which the script runs itself under .venv-lerobot04.

Several roots (--root repeated, or a glob such as 'data/*/demo_clean') go into one dataset, one task per root
(--max-episodes-per-task N keeps each root's first N); split_tasks() computes a per-task held-out split that
--split FILE --part train|heldout converts part by part; meta/episode_sources.json records each episode's root
(docs/convert_robotwin_democlean_to_lerobot.md).

Per converted frame t = 0..L-1 of an episode of T saved frames (L = T - 1, RoboTwin's convention; an XPolicyLab
file stores exactly these L state/action pairs, so both layouts give the same frames):
  observation.state (14,)  joint_action/vector[t]          action (14,)  joint_action/vector[t + 1]
                           (XPolicyLab: state/ row t = [left arm, left ee, right arm, right ee]; action/ row t)
  observation.images.cam_high / cam_left_wrist / cam_right_wrist   head / left / right camera, true RGB
  manip_progress_time (1,)              t / (L - 1)
  manip_progress_distance_left/right (1,)  end-effector path length (xyz) travelled up to t / total path length
  target_endpose (14,), target_joint (14,)  poses / joint commands at each arm's next keyframe (gripper crossing 0.5,
                                            or the last frame)
  task                                  one instruction per episode ("seen" list, reproducible with --seed;
                                        XPolicyLab files hold that list themselves)
Every value is read as float32, the precision XPolicyLab files store, so the layouts convert to equal datasets.

Every episode is validated (datasets present, equal lengths, T >= 2, JPEGs decode, instructions present) before
anything is written; the dataset is built in a hidden folder next to its destination and renamed into place only when
complete. Worker processes validate, decode and PNG-encode episodes ahead of the single lerobot writer, which keeps
frame order and writes every file of the format; the writer embeds the workers' PNGs without re-encoding them.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import glob
import inspect
import itertools
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import cv2
import numpy as np
import PIL.Image

import atomic_files
import robotwin_episodes
from robotwin_episodes import EpisodeFile, Pairs, decode_jpeg, parse_episode_spec

FPS = 50  # RoboTwin's own openpi conversion uses 50; openpi's action window is read with this fps
ROBOT_TYPE = "aloha"
FORMATS = ("v2.1", "v3.0")  # v2.1: openpi's pinned lerobot and lerobot 0.3.x; v3.0: lerobot >= 0.4 (XPolicyLab's Pi_05)
V3_VENV = pathlib.Path(__file__).resolve().parent / ".venv-lerobot04"  # built by `bash bootstrap.sh lerobot-v3`
V3_BOOTSTRAP = "bash bootstrap.sh lerobot-v3"
REEXECUTED = "ROBOTWIN_CONVERT_REEXECUTED"  # set when the script re-ran itself under the v3 environment
ACTION_HORIZON = 50  # pi05's default action window, used by --verify
ARM_DOF = 7  # 6 arm joints + gripper
JOINT_NAMES = tuple(
    f"{side}_{joint}"
    for side in ("left", "right")
    for joint in ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")
)
ENDPOSE_NAMES = tuple(
    f"{side}_{axis}" for side in ("left", "right") for axis in ("x", "y", "z", "qw", "qx", "qy", "qz")
)
# Camera role -> LeRobot image key, the mapping RoboTwin's and openpi's own scripts use.
CAMERA_KEYS = {
    "head": "cam_high",
    "left_wrist": "cam_left_wrist",
    "right_wrist": "cam_right_wrist",
    "front": "cam_front",
}
DEFAULT_CAMERAS = ("head", "left_wrist", "right_wrist")
NATIVE_SIZE = (320, 240)  # width, height of RoboTwin's D435 cameras
GRIPPER_COLUMNS = {"left": 6, "right": 13}
GRIPPER_THRESHOLD = 0.5  # RoboTwin's gripper command is 1 open, 0 closed; a grasp or release crosses the middle
MIN_ARM_TRAVEL_M = 1e-3  # below this an arm "did not move" and its distance progress would be noise
IMAGE_PREFIX = "observation.images."
PROGRESS_FEATURES = ("manip_progress_time", "manip_progress_distance_left", "manip_progress_distance_right")
# zlib level of the PNGs lerobot's writer embeds: PNG is lossless at every level, and level 1 encodes these frames
# about 3x faster than PIL's default 6 for about 13% more bytes.
DEFAULT_PNG_LEVEL = 1
# Share of each task's episodes a split holds out when no count is given (at least one), the launcher's default.
DEFAULT_HELDOUT_PERCENT = 10
SPLIT_PARTS = ("train", "heldout")
# Beside lerobot's own files in meta/: which source root and episode number each dataset episode came from.
SOURCES_FILE = "episode_sources.json"
# Episodes encoded ahead beyond one per worker, so a worker never waits for the writer; each holds its PNGs on disk
# (about 30 MB per 224-frame episode at 240x320) until the writer has embedded them.
EPISODES_QUEUED = 2


class ConversionError(robotwin_episodes.EpisodeError):
    """A problem with the input or the environment, reported as one line naming the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What every worker needs to turn an episode file into frames."""

    cameras: tuple[str, ...] = DEFAULT_CAMERAS  # roles (robotwin_episodes.ROLES)
    image_size: tuple[int, int] = NATIVE_SIZE  # width, height
    instructions: str = "seen"
    seed: int = 0
    default_prompt: str | None = None


@dataclasses.dataclass(frozen=True)
class EpisodeFields:
    """The non-image features of one episode's L converted frames (all float32) and its keyframes."""

    state: np.ndarray  # (L, 14)
    action: np.ndarray  # (L, 14)
    progress_time: np.ndarray  # (L,)
    progress_distance_left: np.ndarray  # (L,)
    progress_distance_right: np.ndarray  # (L,)
    target_endpose: np.ndarray  # (L, 14)
    target_joint: np.ndarray  # (L, 14)
    keyframes: dict[str, np.ndarray]  # arm -> sorted frame indices
    warnings: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.state)

    def frame(self, t: int) -> dict[str, np.ndarray]:
        """Frame t as lerobot's add_frame wants it: feature name -> array of the declared dtype and shape."""
        return {
            "observation.state": self.state[t],
            "action": self.action[t],
            "manip_progress_time": self.progress_time[t : t + 1],
            "manip_progress_distance_left": self.progress_distance_left[t : t + 1],
            "manip_progress_distance_right": self.progress_distance_right[t : t + 1],
            "target_endpose": self.target_endpose[t],
            "target_joint": self.target_joint[t],
        }


@dataclasses.dataclass(frozen=True)
class EncodedEpisode:
    """What a worker hands the writer for one episode: its PNG frames are already in the dataset folder."""

    source: EpisodeFile
    task: str
    fields: EpisodeFields


@dataclasses.dataclass(frozen=True)
class PngTarget:
    """Where a worker writes episode `index`'s PNGs: lerobot's own image path template under the dataset folder."""

    root: pathlib.Path
    template: str  # lerobot's DEFAULT_IMAGE_PATH, with image_key, episode_index and frame_index fields
    index: int
    level: int


# ---------------------------------------------------------------------------------------------------------------
# Pure computations: the contract with the training code (also imported by the openpi-side tests and the launcher).


def time_progress(length: int) -> np.ndarray:
    """t / (L - 1) for t = 0..L-1; a single frame counts as the start (0)."""
    return np.arange(length, dtype=np.float64) / max(length - 1, 1)


def path_length(xyz: np.ndarray) -> np.ndarray:
    """Cumulative path length (L,) of an (L, 3) trajectory: 0 at the first frame."""
    steps = np.linalg.norm(np.diff(xyz, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def distance_progress(xyz: np.ndarray) -> np.ndarray | None:
    """Path length travelled up to each frame / the total: 0 at the start, exactly 1 at the end, never decreasing.

    Dividing by the path length rather than by the start-to-end distance keeps an arm that returns home well defined.
    Returns None when the arm travels less than MIN_ARM_TRAVEL_M in total.
    """
    travelled = path_length(xyz)
    total = travelled[-1]
    if total < MIN_ARM_TRAVEL_M:
        return None
    return np.clip(travelled / total, 0.0, 1.0)


def keyframes(gripper: np.ndarray) -> np.ndarray:
    """Frames whose gripper command is first on the other side of 0.5 (grasp or release), plus the last frame."""
    is_open = gripper > GRIPPER_THRESHOLD
    crossings = np.flatnonzero(is_open[1:] != is_open[:-1]) + 1
    return np.unique(np.append(crossings, len(gripper) - 1))


def target_frames(keys: np.ndarray, length: int) -> np.ndarray:
    """For each t, the first keyframe at or after t (keys sorted, ending with the last frame)."""
    return keys[np.searchsorted(keys, np.arange(length))]


def compute_episode_fields(pairs: Pairs, name: str = "episode") -> EpisodeFields:
    """All non-image features from an episode's L state/action pairs and the end poses of its state rows."""
    length, state = pairs.length, pairs.state.astype(np.float64)
    endposes = {"left": pairs.left_pose.astype(np.float64), "right": pairs.right_pose.astype(np.float64)}
    progress_time = time_progress(length)
    notes = []
    progress, keys, target_pose, target_joint = {}, {}, [], []
    for arm, columns in (("left", slice(0, ARM_DOF)), ("right", slice(ARM_DOF, 2 * ARM_DOF))):
        arm_progress = distance_progress(endposes[arm][:, :3])
        if arm_progress is None:
            notes.append(f"{name}: {arm} arm moves less than {MIN_ARM_TRAVEL_M * 1000:.0f} mm; using time progress")
            arm_progress = progress_time
        progress[arm] = arm_progress
        keys[arm] = keyframes(state[:, GRIPPER_COLUMNS[arm]])
        targets = target_frames(keys[arm], length)
        target_pose.append(endposes[arm][targets])
        target_joint.append(state[targets, columns])
    f32 = lambda array: np.ascontiguousarray(array, dtype=np.float32)  # noqa: E731
    return EpisodeFields(
        state=f32(pairs.state),
        action=f32(pairs.action),
        progress_time=f32(progress_time),
        progress_distance_left=f32(progress["left"]),
        progress_distance_right=f32(progress["right"]),
        target_endpose=f32(np.concatenate(target_pose, axis=1)),
        target_joint=f32(np.concatenate(target_joint, axis=1)),
        keyframes=keys,
        warnings=tuple(notes),
    )


def features(cameras: tuple[str, ...], image_size: tuple[int, int], video: bool) -> dict[str, dict]:
    """The dataset schema, declared once (shapes as tuples: lerobot's add_frame compares them with ==)."""
    width, height = image_size
    vector = lambda names: {"dtype": "float32", "shape": (len(names),), "names": list(names)}  # noqa: E731
    schema = {"observation.state": vector(JOINT_NAMES), "action": vector(JOINT_NAMES)}
    for camera in cameras:
        schema[IMAGE_PREFIX + CAMERA_KEYS[camera]] = {
            "dtype": "video" if video else "image",
            "shape": (height, width, 3),
            "names": ["height", "width", "channel"],
        }
    for name in PROGRESS_FEATURES:
        schema[name] = {"dtype": "float32", "shape": (1,), "names": None}
    schema["target_endpose"] = vector(ENDPOSE_NAMES)
    schema["target_joint"] = vector(JOINT_NAMES)
    return schema


def choose_task(instructions: dict, kind: str, seed: int, number: int) -> str:
    """One instruction of the given kind, the same for the same (seed, episode number)."""
    candidates = instructions.get(kind)
    if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
        raise ValueError(f'no "{kind}" instructions (a non-empty list of strings)')
    rng = np.random.default_rng([seed, number])
    return candidates[int(rng.integers(len(candidates)))]


# ---------------------------------------------------------------------------------------------------------------
# Reading episodes (runs in worker processes).


def find_episodes(root: pathlib.Path) -> list[EpisodeFile]:
    """Every episode under --root in numeric order; a folder that mixes layouts is refused before any work."""
    episodes = robotwin_episodes.find_episodes(root)
    robotwin_episodes.folder_layout(episodes)
    return episodes


def select_episodes(
    episodes: list[EpisodeFile], wanted: frozenset[int] | None, root: pathlib.Path
) -> list[EpisodeFile]:
    """The episodes --episodes names (all when None); every named number must have a file."""
    selected, absent = robotwin_episodes.select_episodes(episodes, wanted)
    if absent:
        raise ConversionError(f"{root}: --episodes names episode(s) without a file: {', '.join(map(str, absent))}")
    return selected


@dataclasses.dataclass(frozen=True)
class Source:
    """One --root: a RoboTwin task folder, the unit of --max-episodes-per-task and of the per-task split."""

    root: pathlib.Path  # as given or as the glob expanded it
    task: str  # the task folder's name: data/<task>/demo_clean, .../<task>/aloha_agilex
    episodes: tuple[EpisodeFile, ...]  # every episode file, in numeric order


def expand_roots(patterns: list[str]) -> list[pathlib.Path]:
    """--root values in the order given, each glob expanded here (so a quoted glob works) into its sorted matches."""
    roots = []
    for pattern in patterns:
        if not glob.has_magic(pattern) or os.path.exists(pattern):  # a folder whose name holds [ or * is itself
            roots.append(pathlib.Path(pattern))
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ConversionError(f"--root {pattern}: the pattern matches nothing")
        roots.extend(map(pathlib.Path, matches))
    return roots


def task_name(data_dir: pathlib.Path) -> str:
    """The task folder two levels above the episode files: <task>/<config>/data/episode*.hdf5."""
    return data_dir.resolve().parent.parent.name


def find_sources(roots: list[pathlib.Path]) -> list[Source]:
    """Every root's episodes; a missing root, one without episodes, or the same folder given twice is refused."""
    sources, first_named = [], {}
    for root in roots:
        data_dir = robotwin_episodes.resolve_data_dir(root).resolve()
        if data_dir in first_named:
            raise ConversionError(f"{root}: the same episodes as --root {first_named[data_dir]} (given twice)")
        first_named[data_dir] = root
        sources.append(Source(root, task_name(data_dir), tuple(find_episodes(root))))
    return sources


def select_sources(
    sources: list[Source], wanted: frozenset[int] | None, max_per_task: int | None
) -> list[tuple[Source, list[EpisodeFile]]]:
    """Each root's episodes that --episodes names (applied to every root), then the first max_per_task of them."""
    return [(source, select_episodes(list(source.episodes), wanted, source.root)[:max_per_task]) for source in sources]


def split_tasks(
    roots: list[pathlib.Path],
    heldout: int | None = None,
    heldout_percent: int = DEFAULT_HELDOUT_PERCENT,
    max_per_task: int | None = None,
    fold: tuple[int, int] | None = None,
) -> dict:
    """The per-task split a launcher records and converts part by part (--split FILE --part train|heldout).

    Per root: its first max_per_task episodes (all when None), the last `heldout` of them held out, or when heldout
    is None the last heldout_percent % (rounded down, at least one). With fold = (F, K), cross-validation instead:
    the episodes, task after task in number order, are dealt round-robin into K folds (the count running on across
    tasks, so that folds stay even when tasks are small) and fold F is held out; the K splits hold out every episode
    exactly once. Returns a JSON-serialisable dict; raises ConversionError when a task would keep no training
    episode or a fold would hold out none.
    """
    chosen = select_sources(find_sources(roots), None, max_per_task)
    if fold is not None:
        return fold_split(chosen, *fold, max_per_task)
    tasks = []
    for source, episodes in chosen:
        numbers = [episode.number for episode in episodes]
        count = heldout if heldout is not None else max(len(numbers) * heldout_percent // 100, 1)
        if count >= len(numbers):
            raise ConversionError(
                f"{source.root}: holding out {count} of its {len(numbers)} episode(s) leaves no training episode"
            )
        cut = len(numbers) - count
        tasks.append({"task": source.task, "root": str(source.root), "train": numbers[:cut], "heldout": numbers[cut:]})
    return {
        "heldout": heldout,
        "heldout_percent": None if heldout is not None else heldout_percent,
        "max_episodes_per_task": max_per_task,
        "tasks": tasks,
    }


def fold_split(chosen: list[tuple[Source, list[EpisodeFile]]], fold: int, folds: int, max_per_task: int | None) -> dict:
    """split_tasks' cross-validation split: fold `fold` of `folds` held out."""
    total = sum(len(episodes) for _, episodes in chosen)
    if not 2 <= folds <= total:
        raise ConversionError(f"{folds} folds: {total} episode(s) make between 2 and {total} folds")
    if not 0 <= fold < folds:
        raise ConversionError(f"fold {fold} of {folds}: folds are numbered 0 to {folds - 1}")
    tasks, dealt = [], 0
    for source, episodes in chosen:
        numbers = [episode.number for episode in episodes]
        held = [n for position, n in enumerate(numbers, dealt) if position % folds == fold]
        dealt += len(numbers)
        if len(held) == len(numbers):
            raise ConversionError(f"{source.root}: fold {fold} of {folds} holds out all its {len(numbers)} episode(s)")
        tasks.append({"task": source.task, "root": str(source.root),
                      "train": [n for n in numbers if n not in held], "heldout": held})  # fmt: skip
    return {"folds": folds, "fold": fold, "max_episodes_per_task": max_per_task, "tasks": tasks}


def read_split(path: pathlib.Path, part: str) -> list[tuple[pathlib.Path, frozenset[int]]]:
    """(root, episode numbers) of one part of a split_tasks file, in the file's order."""
    try:
        tasks = json.loads(path.read_text())["tasks"]
        selection = [(pathlib.Path(task["root"]), frozenset(task[part])) for task in tasks]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConversionError(f"{path}: not a split file ({type(error).__name__}: {error})") from None
    if not all(isinstance(n, int) for _, numbers in selection for n in numbers):
        raise ConversionError(f"{path}: {part} lists must hold episode numbers")
    return selection


def chosen_sources(args: argparse.Namespace) -> list[tuple[Source, list[EpisodeFile]]]:
    """The roots and episodes to convert, from --root/--episodes/--max-episodes-per-task or --split/--part."""
    if args.split is None:
        return select_sources(find_sources(expand_roots(args.root)), args.episodes, args.max_episodes_per_task)
    selection = read_split(args.split, args.part)
    sources = find_sources([root for root, _ in selection])
    return [select_sources([source], numbers, None)[0] for source, (_, numbers) in zip(sources, selection)]


def sources_record(chosen: list[tuple[Source, list[EpisodeFile]]], written: list[EpisodeFile]) -> dict:
    """meta/episode_sources.json: per dataset episode index, its task, root, episode number and file."""
    origin = {episode.hdf5: source for source, episodes in chosen for episode in episodes}
    return {
        "episodes": [
            {
                "episode_index": index,
                "task": origin[episode.hdf5].task,
                "root": str(origin[episode.hdf5].root),
                "episode": episode.number,
                "file": str(episode.hdf5),
            }
            for index, episode in enumerate(written)
        ]
    }


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    shrinking = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def read_task(episode: robotwin_episodes.Episode, options: Options) -> str:
    instructions = episode.instructions()
    if instructions is None:
        if options.default_prompt is not None:
            return options.default_prompt
        raise ConversionError(
            f"{episode.source.instructions}: missing (give --default-prompt to use one prompt instead)"
        )
    try:
        return choose_task(instructions, options.instructions, options.seed, episode.source.number)
    except ValueError as error:
        legacy = episode.layout == robotwin_episodes.LEGACY
        raise ConversionError(f"{episode.source.instructions if legacy else episode.path}: {error}") from None


def read_episode(source: EpisodeFile, options: Options) -> tuple[str, Pairs, dict[str, np.ndarray]]:
    """The task, the state/action pairs and, per chosen camera (dataset name -> buffers, in options.cameras order),
    the JPEGs of the converted frames; checked for presence, shapes, finite values and equal lengths."""
    with robotwin_episodes.Episode(source) as episode:
        task = read_task(episode, options)
        pairs = episode.read_pairs()
        stored, reference = episode.stored_frames(), episode.frames_dataset
        jpegs = {}
        for role in options.cameras:
            name = episode.image_dataset_name(episode.camera_name(role))
            dataset = episode.jpegs(episode.camera_name(role))
            if len(dataset) != stored:
                raise ConversionError(f"{source.hdf5}: {name}: {len(dataset)} frames but {reference} has {stored}")
            jpegs[name] = dataset[: pairs.length]
    return task, pairs, jpegs


def decode_camera(path: pathlib.Path, name: str, buffers: np.ndarray, flags: int) -> list[np.ndarray]:
    """Every frame of one camera, all decodable and of one size."""
    frames = []
    for t, buffer in enumerate(buffers):
        image = decode_jpeg(bytes(buffer), flags)
        if image is None:
            raise ConversionError(f"{path}: {name}: frame {t} is not a decodable JPEG")
        if frames and image.shape != frames[0].shape:
            raise ConversionError(f"{path}: {name}: frame {t} differs in size from frame 0")
        frames.append(image)
    return frames


def source_values(source: EpisodeFile, options: Options) -> tuple[str, EpisodeFields]:
    """The task and every non-image feature of an episode, straight from its file."""
    task, pairs, _ = read_episode(source, options)
    return task, compute_episode_fields(pairs, name=str(source.hdf5))


def validate_episode(source: EpisodeFile, options: Options) -> str | None:
    """The error message for a bad episode, None for a good one (worker entry point)."""
    try:
        _, _, jpegs = read_episode(source, options)
        for name, buffers in jpegs.items():
            # 1/8 scale: libjpeg still parses every coefficient, at half the cost of a full decode.
            decode_camera(source.hdf5, name, buffers, cv2.IMREAD_REDUCED_COLOR_8)
    except robotwin_episodes.EpisodeError as error:
        return str(error)
    return None


def encode_episode(source: EpisodeFile, target: PngTarget, options: Options) -> EncodedEpisode:
    """Worker entry point: decode, resize and PNG-encode the episode's L frames into the files lerobot's add_frame
    would write, so the writer process only assembles the parquet file and the metadata."""
    task, pairs, jpegs = read_episode(source, options)
    fields = compute_episode_fields(pairs, name=str(source.hdf5))
    for role, (name, buffers) in zip(options.cameras, jpegs.items()):
        key = IMAGE_PREFIX + CAMERA_KEYS[role]
        for t, frame in enumerate(decode_camera(source.hdf5, name, buffers, cv2.IMREAD_COLOR)):
            path = target.root / target.template.format(image_key=key, episode_index=target.index, frame_index=t)
            if t == 0:
                path.parent.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(resize(frame, options.image_size)).save(path, compress_level=target.level)
    return EncodedEpisode(source, task, fields)


def ignore_interrupt() -> None:
    """Workers leave Ctrl-C to the main process, which stops them and cleans up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------------------------
# lerobot: two import paths, two add_frame signatures, one format.


@dataclasses.dataclass(frozen=True)
class LeRobot:
    """The lerobot_dataset module in use, where datasets live by default, and how add_frame takes the task."""

    module: types.ModuleType
    home: pathlib.Path
    task_argument: bool


def load_lerobot(dataset_format: str = "v2.1") -> LeRobot:
    """Import openpi's pinned rev (lerobot.common.datasets) or lerobot 0.3.x/0.4.x (lerobot.datasets) and check that
    it writes the requested format's major version."""
    if "LEROBOT_HOME" in os.environ:  # both lerobot versions raise on import when it is set
        raise ConversionError(
            f"LEROBOT_HOME={os.environ['LEROBOT_HOME']}: lerobot refuses this variable; set HF_LEROBOT_HOME instead"
        )
    try:
        from lerobot.common.datasets import lerobot_dataset
    except ImportError:
        try:
            from lerobot.datasets import lerobot_dataset
        except ImportError as error:
            reason = " ".join(str(error).split())  # pandas' import errors span several lines
            raise ConversionError(f"lerobot: cannot import its dataset writer ({reason})") from None
    version = str(getattr(lerobot_dataset, "CODEBASE_VERSION", "unknown"))
    if not version.startswith(dataset_format.split(".")[0] + "."):
        if dataset_format == "v3.0":
            raise ConversionError(f"{lerobot_dataset.__file__}: lerobot writes format {version}, not v3.0")
        raise ConversionError(
            f"{lerobot_dataset.__file__}: lerobot writes dataset format {version}, which openpi cannot read "
            "(its pinned lerobot reads v2.x only); install lerobot 0.3.2 (format v2.1)"
        )
    import datasets

    datasets.disable_progress_bars()  # one map() bar per episode would drown our own progress bar
    task_argument = "task" in inspect.signature(lerobot_dataset.LeRobotDataset.add_frame).parameters
    return LeRobot(lerobot_dataset, pathlib.Path(lerobot_dataset.HF_LEROBOT_HOME), task_argument)


def add_frame(lerobot: LeRobot, dataset, frame: dict, task: str) -> None:
    if lerobot.task_argument:
        dataset.add_frame(frame, task=task)
    else:
        dataset.add_frame({**frame, "task": task})


class WrittenByWorkers:
    """Stands in for lerobot's image writer: add_frame hands it each frame's PNG path, which a worker has already
    written with the same PIL call lerobot's writer makes, so nothing is encoded twice. lerobot 0.4.4 also passes
    a compress_level, which the workers have already applied (--png-level)."""

    def save_image(self, image, fpath: pathlib.Path, compress_level: int | None = None) -> None:
        if not fpath.is_file():
            raise ConversionError(f"{fpath}: missing frame a worker should have written")

    def wait_until_done(self) -> None:
        pass

    def stop(self) -> None:
        pass


def placeholder_images(episode_features: dict) -> dict[str, np.ndarray]:
    """A zero-cost array of each image feature's shape: add_frame checks the shape and passes it to the stand-in."""
    return {
        key: np.broadcast_to(np.zeros((), np.uint8), spec["shape"])
        for key, spec in episode_features.items()
        if spec["dtype"] in ("image", "video")
    }


def write_episode(lerobot: LeRobot, dataset, episode: EncodedEpisode) -> None:
    images = placeholder_images(dataset.features)
    for t in range(episode.fields.length):
        add_frame(lerobot, dataset, {**episode.fields.frame(t), **images}, episode.task)
    index = dataset.episode_buffer["episode_index"]
    dataset.save_episode()
    # The PNGs are embedded in the parquet file now; removing them halves the size and keeps lerobot's per-episode
    # rglob over the dataset folder from growing. Only this episode's: workers are writing the next ones.
    for key in images:
        shutil.rmtree(dataset._get_image_file_path(index, key, 0).parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Verification: reopen the dataset the way openpi does and compare with the source files.


def expected_images(source: EpisodeFile, role: str, frames: list[int], size: tuple[int, int]) -> list[np.ndarray]:
    with robotwin_episodes.Episode(source) as episode:
        jpegs = episode.jpegs(episode.camera_name(role))
        return [resize(decode_jpeg(bytes(jpegs[t])), size) for t in frames]


def verify_frames(length: int, count: int, rng: np.random.Generator) -> list[int]:
    """First, last and a few random frames of an episode."""
    extra = rng.choice(length, size=min(max(count - 2, 0), length), replace=False)
    return sorted({0, length - 1, *map(int, extra)})


def compare_images(key: str, where: str, actual: np.ndarray, expected: np.ndarray, video: bool) -> None:
    """Image mode stores PNG, so pixels must match exactly; video is lossy but must be closer to true RGB than to
    its red/blue swap."""
    if actual.shape != expected.shape:
        raise ConversionError(f"{where}: {key}: shape {actual.shape}, source {expected.shape}")
    error = np.abs(actual.astype(np.int16) - expected).mean()
    if not video and error != 0:
        raise ConversionError(f"{where}: {key}: pixels differ from the source (mean error {error:.2f})")
    swapped = np.abs(actual.astype(np.int16) - expected[..., ::-1]).mean()
    if video and not error < swapped:
        raise ConversionError(f"{where}: {key}: colours look red/blue swapped ({error:.1f} vs swapped {swapped:.1f})")


def read_item(dataset, index: int, video: bool) -> dict:
    """dataset[index]; a video decoder that cannot load here would fail openpi's data loader too, so say so."""
    if not video:
        return dataset[index]
    try:
        return dataset[index]
    except Exception as error:  # torchcodec/torchvision raise OSError, RuntimeError, AttributeError, ...
        reason = (str(error).splitlines() or [""])[0]  # torchcodec's message embeds whole tracebacks
        raise ConversionError(
            f"{dataset.root}: lerobot cannot decode its videos on this machine ({type(error).__name__}: {reason}); "
            "openpi's data loader would fail the same way: install FFmpeg for torchcodec or convert without --video"
        ) from None


def episode_bounds(dataset, episode_index: int) -> tuple[int, int]:
    """First and one-past-last global frame index: lerobot v2.x keeps episode_data_index, v3.0 keeps them in the
    episodes metadata table."""
    if hasattr(dataset, "episode_data_index"):
        bounds = dataset.episode_data_index
        return int(bounds["from"][episode_index]), int(bounds["to"][episode_index])
    row = dataset.meta.episodes[episode_index]
    return int(row["dataset_from_index"]), int(row["dataset_to_index"])


def verify_dataset(
    lerobot: LeRobot,
    repo_id: str,
    root: pathlib.Path | None,
    episodes: list[EpisodeFile],
    options: Options,
    frames_per_episode: int,
) -> list[str]:
    """Open the dataset by repo id with openpi's action window and compare sampled frames with the sources.

    root None means "as openpi does": no root argument, so lerobot resolves $HF_LEROBOT_HOME/<repo_id>.
    Returns the lines describing what was checked; raises ConversionError on the first mismatch.
    """
    window = {"action": [t / FPS for t in range(ACTION_HORIZON)]}
    kwargs = {} if root is None else {"root": root}
    dataset = lerobot.module.LeRobotDataset(repo_id, delta_timestamps=window, **kwargs)
    video = bool(dataset.meta.video_keys)
    expected_keys = set(features(options.cameras, options.image_size, video))
    missing = expected_keys - set(dataset.meta.features)
    if missing:
        raise ConversionError(f"{dataset.root}: meta/info.json lacks features {sorted(missing)}")
    if dataset.num_episodes != len(episodes):
        raise ConversionError(f"{dataset.root}: {dataset.num_episodes} episodes, expected {len(episodes)}")
    rng = np.random.default_rng(options.seed)
    checked = 0
    for episode_index, source in enumerate(episodes):
        task, fields = source_values(source, options)
        length = fields.length
        start, end = episode_bounds(dataset, episode_index)
        if end - start != length:
            raise ConversionError(f"{dataset.root}: episode {episode_index} length differs from {source.hdf5}")
        frames = verify_frames(length, frames_per_episode, rng)
        images = {
            IMAGE_PREFIX + CAMERA_KEYS[camera]: expected_images(source, camera, frames, options.image_size)
            for camera in options.cameras
        }
        for position, t in enumerate(frames):
            item = read_item(dataset, start + t, video)
            where = f"{dataset.root}: episode {episode_index} frame {t} ({source.hdf5.name})"
            expected = fields.frame(t)
            expected["action"] = fields.action[np.minimum(t + np.arange(ACTION_HORIZON), length - 1)]
            for key, value in expected.items():
                actual = item[key].numpy().reshape(value.shape)
                if actual.dtype != np.float32 or not np.array_equal(actual, value):
                    raise ConversionError(f"{where}: {key} differs from the source")
            if item["task"] != task:
                raise ConversionError(f"{where}: task {item['task']!r}, source {task!r}")
            for key, sources in images.items():
                actual = (item[key].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
                compare_images(key, where, actual, sources[position], video)
            checked += 1
    image_check = "true RGB within video tolerance" if video else "pixel-exact true RGB"
    return [
        f"verified {checked} frames of {len(episodes)} episodes reopened by repo id {repo_id!r} from {dataset.root}",
        f"  equal to the source: observation.state, action ({ACTION_HORIZON}-step window), "
        + ", ".join(PROGRESS_FEATURES)
        + ", target_endpose, target_joint, task",
        f"  images {', '.join(images)}: {image_check}",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Output folder handling and the conversion loop.


def folder_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def in_order(pool: concurrent.futures.Executor, function, items: list, ahead: int):
    """pool.starmap that keeps at most `ahead` results in flight, so encoded PNGs cannot pile up on disk."""
    items = iter(items)
    pending = collections.deque(pool.submit(function, *item) for item in itertools.islice(items, ahead))
    try:
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(function, *item) for item in itertools.islice(items, 1))
            yield result
    finally:  # on an error or Ctrl-C, start no more episodes; the pool's shutdown waits for the running ones
        for future in pending:
            future.cancel()


@dataclasses.dataclass
class Progress:
    """A one-line progress display on stderr: episodes done, frames, frames per second."""

    total: int
    stream: object = dataclasses.field(default_factory=lambda: sys.stderr)  # the current stderr, not import time's
    episodes: int = 0
    frames: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def update(self, frames: int) -> None:
        self.episodes += 1
        self.frames += frames
        rate = self.frames / max(time.perf_counter() - self.started, 1e-9)
        line = f"episodes {self.episodes}/{self.total}  frames {self.frames}  {rate:.1f} frames/s"
        tty = getattr(self.stream, "isatty", lambda: False)()
        end = "" if tty and self.episodes < self.total else "\n"
        print(("\r" if tty else "") + line, end=end, file=self.stream, flush=True)


def resume_paths(destination: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The partial dataset --resume keeps between runs and its manifest: hidden names beside the destination that a
    later run can find again (hidden_name's random ones cannot be)."""
    stem = f".{destination.name}{atomic_files.TEMPORARY_MARK}resume"
    return destination.with_name(stem), destination.with_name(stem + ".json")


def manifest(episodes: list[EpisodeFile], options: Options, args: argparse.Namespace) -> dict:
    """Everything that changes the dataset's content, and the episodes in the order they get their indices."""
    settings = {**dataclasses.asdict(options), "video": args.video, "png_level": args.png_level}
    return {"repo_id": args.repo_id, "options": settings, "episodes": [str(source.hdf5) for source in episodes]}


def reopen_partial(lerobot: LeRobot, partial: pathlib.Path, path: pathlib.Path, expected: dict):
    """lerobot's writer on the kept partial dataset, or None when nothing worth keeping is there; refuses a partial
    dataset made with other options or episodes."""
    if not partial.is_dir() or not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    recorded["options"] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded["options"].items()}
    changed = [key for key in expected["options"] if recorded["options"].get(key) != expected["options"][key]]
    if recorded["repo_id"] != expected["repo_id"]:
        changed.append("repo_id")
    if changed:
        raise ConversionError(
            f"{path}: the interrupted conversion used other {', '.join(changed)}; rerun with those options, "
            "or without --resume to start over"
        )
    shutil.rmtree(partial / "images", ignore_errors=True)  # PNGs of episodes that were not saved
    try:
        saved = lerobot.module.LeRobotDatasetMetadata(expected["repo_id"], root=partial)
        # lerobot writes an episode's parquet file before its metadata: a kill in between leaves one file too many.
        (partial / saved.get_data_file_path(ep_index=saved.total_episodes)).unlink(missing_ok=True)
        dataset = lerobot.module.LeRobotDataset(expected["repo_id"], root=partial)
    except Exception as error:  # a run killed inside lerobot's save_episode leaves its metadata unreadable
        raise ConversionError(
            f"{partial}: cannot reopen the interrupted conversion ({type(error).__name__}); "
            "rerun without --resume to start over"
        ) from None
    done = dataset.meta.total_episodes
    if recorded["episodes"][:done] != expected["episodes"][:done]:
        raise ConversionError(f"{path}: the interrupted conversion wrote other episodes; rerun without --resume")
    return dataset


def create_partial(lerobot: LeRobot, partial: pathlib.Path, options: Options, args: argparse.Namespace):
    shutil.rmtree(partial, ignore_errors=True)
    return lerobot.module.LeRobotDataset.create(
        repo_id=args.repo_id,
        fps=FPS,
        features=features(options.cameras, options.image_size, args.video),
        root=partial,
        robot_type=ROBOT_TYPE,
        use_videos=args.video,
    )


def png_targets(lerobot: LeRobot, root: pathlib.Path, first: int, count: int, level: int) -> list[PngTarget]:
    template = lerobot.module.DEFAULT_IMAGE_PATH
    return [PngTarget(root, template, index, level) for index in range(first, first + count)]


def convert(
    lerobot: LeRobot,
    pool: concurrent.futures.Executor,
    episodes: list[EpisodeFile],
    options: Options,
    partial: pathlib.Path,
    repo_id: str,
    args: argparse.Namespace,
) -> int:
    """Write every episode into the partial folder; returns the number of frames.

    Workers encode episodes ahead (one per worker plus EPISODES_QUEUED); lerobot's writer, alone in this
    process, gives every episode its index, global frame indices, parquet file, stats and metadata, in order."""
    if args.resume:
        expected = manifest(episodes, options, args)
        path = partial.with_name(partial.name + ".json")  # resume_paths' manifest
        dataset = reopen_partial(lerobot, partial, path, expected)
        if dataset is None:
            dataset = create_partial(lerobot, partial, options, args)
            atomic_files.write_json(path, expected)
    else:
        dataset = create_partial(lerobot, partial, options, args)
    dataset.image_writer = WrittenByWorkers()
    done = dataset.meta.total_episodes
    if done:
        print(f"resuming after {done} of {len(episodes)} episodes in {partial}", file=sys.stderr)
    episodes = episodes[done:]
    targets = png_targets(lerobot, partial, done, len(episodes), args.png_level)
    progress = Progress(len(episodes))
    work = functools.partial(encode_episode, options=options)
    try:
        for episode in in_order(pool, work, list(zip(episodes, targets)), args.workers + EPISODES_QUEUED):
            for note in episode.fields.warnings:
                print(f"warning: {note}", file=sys.stderr)
            write_episode(lerobot, dataset, episode)
            progress.update(episode.fields.length)
    finally:
        dataset.stop_image_writer()
        if hasattr(dataset, "finalize"):  # v3.0 buffers episode metadata and parquet writers until finalize()
            dataset.finalize()
    return progress.frames


def move_into_place(partial: pathlib.Path, destination: pathlib.Path) -> None:
    """Rename the finished dataset into place; an existing one (only with --overwrite) goes only after that."""
    old = atomic_files.hidden_name(destination)
    if destination.exists():
        os.replace(destination, old)
    os.replace(partial, destination)
    shutil.rmtree(old, ignore_errors=True)


def convert_all(
    lerobot: LeRobot,
    pool: concurrent.futures.Executor,
    chosen: list[tuple[Source, list[EpisodeFile]]],
    options: Options,
    partial: pathlib.Path,
    destination: pathlib.Path,
    args: argparse.Namespace,
) -> tuple[int | None, list[EpisodeFile], list[tuple[EpisodeFile, str]], float]:
    """Validate every episode, then convert the good ones into place: (frames, or None when bad episodes stopped
    it, good, bad, when validation ended)."""
    episodes = [episode for _, selected in chosen for episode in selected]
    problems = list(pool.map(validate_episode, episodes, [options] * len(episodes)))
    validated_at = time.perf_counter()
    bad = [(source, problem) for source, problem in zip(episodes, problems) if problem]
    good = [source for source, problem in zip(episodes, problems) if not problem]
    if bad and not args.skip_bad:
        for _, problem in bad:
            print(f"error: {problem}", file=sys.stderr)
        print(f"error: {len(bad)} bad episode(s); nothing written (--skip-bad converts the rest)", file=sys.stderr)
        return None, good, bad, validated_at
    if not good:
        raise ConversionError(f"{', '.join(str(source.root) for source, _ in chosen)}: no convertible episodes")
    destination.parent.mkdir(parents=True, exist_ok=True)
    frames = convert(lerobot, pool, good, options, partial, args.repo_id, args)
    atomic_files.write_json(partial / "meta" / SOURCES_FILE, sources_record(chosen, good))
    shutil.rmtree(partial / "images", ignore_errors=True)
    move_into_place(partial, destination)
    return frames, good, bad, validated_at


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or min(map(int, match.groups())) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        action="append",
        metavar="DIR",
        help="a .../<task>/demo_clean or .../<task>/aloha_agilex folder, or the data/ folder in it; repeat it or give "
        "a glob (quoted: 'data/*/demo_clean') to convert several tasks into one dataset",
    )
    parser.add_argument("--repo-id", required=True, help="dataset name, e.g. robotwin/place_dual_shoes")
    parser.add_argument(
        "--episodes",
        type=parse_episode_spec,
        metavar="SPEC",
        help="episode numbers to convert from every root, e.g. 0-44,47 (the visualizer's syntax; default: all)",
    )
    parser.add_argument(
        "--max-episodes-per-task",
        type=int,
        metavar="N",
        help="convert only the first N (selected) episodes of each root",
    )
    parser.add_argument(
        "--split",
        type=pathlib.Path,
        metavar="FILE",
        help="convert the roots and episodes of one --part of this per-task split JSON (split_tasks()) instead "
        "of --root",
    )
    parser.add_argument("--part", choices=SPLIT_PARTS, help="the part of --split to convert")
    parser.add_argument(
        "--output-root", type=pathlib.Path, metavar="DIR", help="write DIR/<repo-id> (default: $HF_LEROBOT_HOME)"
    )
    parser.add_argument(
        "--cameras",
        nargs="+",
        choices=tuple(robotwin_episodes.ROLE_OF_CAMERA),
        default=[robotwin_episodes.LEGACY_CAMERAS[role] for role in DEFAULT_CAMERAS],
        metavar="CAMERA",
        help="cameras to store, by either layout's names (default: head_camera left_camera right_camera, the same as "
        "cam_head cam_left_wrist cam_right_wrist; front_camera or cam_third_view becomes cam_front)",
    )
    parser.add_argument(
        "--image-size",
        type=parse_size,
        default=NATIVE_SIZE,
        metavar="WxH",
        help="resize images to WIDTHxHEIGHT (default: native 320x240)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="v2.1",
        help="LeRobot dataset format: v2.1 (openpi, lerobot 0.3.x; default) or v3.0 (lerobot 0.4.4, XPolicyLab's "
        f"Pi_05; written by the environment that `{V3_BOOTSTRAP}` builds)",
    )
    parser.add_argument("--video", action="store_true", help="store images as mp4 videos instead of PNG in parquet")
    parser.add_argument(
        "--instructions", choices=("seen", "unseen"), default="seen", help="instruction list (default seen)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing each episode's instruction (default 0)")
    parser.add_argument("--default-prompt", metavar="TEXT", help="task for episodes without an instruction file")
    parser.add_argument(
        "--verify", action="store_true", help="reopen the dataset like openpi and compare with the source"
    )
    parser.add_argument(
        "--verify-frames", type=int, default=4, metavar="N", help="frames checked per episode (default 4)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the partial dataset if the conversion stops, and continue a kept one (same options required)",
    )
    parser.add_argument("--skip-bad", action="store_true", help="convert the good episodes and list the bad ones")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        metavar="N",
        help="processes that validate, decode and PNG-encode episodes (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--png-level",
        type=int,
        choices=range(10),
        default=DEFAULT_PNG_LEVEL,
        metavar="0-9",
        help=f"zlib level of the lossless PNG frames (default {DEFAULT_PNG_LEVEL}; PIL's default is 6)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if (args.root is None) == (args.split is None):
        parser.error("give --root (one or more) or --split FILE --part PART")
    if args.split is not None and (args.part is None or args.episodes or args.max_episodes_per_task):
        parser.error("--split needs --part and takes no --episodes or --max-episodes-per-task (the split lists them)")
    if args.part is not None and args.split is None:
        parser.error("--part needs --split")
    if args.max_episodes_per_task is not None and args.max_episodes_per_task < 1:
        parser.error("--max-episodes-per-task must be at least 1")
    if args.resume and args.format == "v3.0":
        # lerobot 0.4.4 keeps episode metadata and parquet writers open until finalize(): a stopped run leaves nothing
        # its reader can reopen
        parser.error("--resume works with --format v2.1 only")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.verify_frames < 1:
        parser.error("--verify-frames must be at least 1")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", args.repo_id) or ".." in args.repo_id:
        parser.error(f"--repo-id must look like name or owner/name, got {args.repo_id!r}")
    return args


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    roles = tuple(dict.fromkeys(robotwin_episodes.ROLE_OF_CAMERA[camera] for camera in args.cameras))
    options = Options(roles, args.image_size, args.instructions, args.seed, args.default_prompt)
    chosen = chosen_sources(args)
    lerobot = load_lerobot(args.format)
    loaded_at = time.perf_counter()
    output_root = args.output_root or lerobot.home
    destination = output_root / args.repo_id
    if destination.exists() and not args.overwrite:
        raise ConversionError(f"{destination}: dataset exists (use --overwrite to replace it)")
    context = multiprocessing.get_context("spawn")  # no fork of a process that already runs torch/arrow threads
    partial, manifest_path = resume_paths(destination) if args.resume else (atomic_files.hidden_name(destination), None)
    try:
        with concurrent.futures.ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=ignore_interrupt
        ) as pool:
            frames, good, bad, validated_at = convert_all(lerobot, pool, chosen, options, partial, destination, args)
    finally:  # after the pool's shutdown: no worker writes PNGs into the partial folder any more
        if not args.resume:
            shutil.rmtree(partial, ignore_errors=True)
    if manifest_path is not None and frames is not None:
        manifest_path.unlink(missing_ok=True)
    if frames is None:
        return 1
    converted_at = time.perf_counter()
    if args.verify:
        verify_root = None if output_root.resolve() == lerobot.home.resolve() else destination
        for line in verify_dataset(lerobot, args.repo_id, verify_root, good, options, args.verify_frames):
            print(line)
    for source, problem in bad:
        print(f"skipped {source.hdf5}: {problem}")
    size_mb = folder_size(destination) / 1e6
    stages = (
        f"import lerobot {loaded_at - started:.1f} s, validate {validated_at - loaded_at:.1f} s, "
        f"write {converted_at - validated_at:.1f} s"
    )
    if args.verify:
        stages += f", verify {time.perf_counter() - converted_at:.1f} s"
    print(
        f"converted {len(good)} episodes ({len(bad)} skipped), {frames} frames, {size_mb:.1f} MB in "
        f"{converted_at - started:.1f} s ({stages}) -> {destination}"
    )
    return 0


def writes_format(dataset_format: str) -> bool:
    """Whether this interpreter's lerobot writes the format, judged without importing lerobot (torch takes seconds)."""
    import importlib.metadata

    try:
        major = int(importlib.metadata.version("lerobot").split(".")[1])
    except (importlib.metadata.PackageNotFoundError, ValueError, IndexError):
        return dataset_format == "v2.1"  # openpi's pinned git rev installs as lerobot 0.1.0 too; load_lerobot checks
    return (major >= 4) == (dataset_format == "v3.0")


def run_under_v3(argv: list[str] | None) -> int:
    """Run this same script under the lerobot 0.4.4 environment and return its exit status: the reading code needs
    only numpy, h5py, cv2 and PIL, which that environment has too, so the whole conversion moves there and no
    episode crosses a process pipe. A child process rather than exec, so main() called from Python returns."""
    python = V3_VENV / "bin" / "python"
    if os.environ.get(REEXECUTED) or not python.exists():
        raise ConversionError(f"{python}: no lerobot 0.4.4 environment for --format v3.0; run `{V3_BOOTSTRAP}`")
    arguments = sys.argv[1:] if argv is None else argv
    command = [str(python), str(pathlib.Path(__file__).resolve()), *arguments]
    return subprocess.call(command, env={**os.environ, REEXECUTED: "1"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder behind --video prints a banner per video otherwise
    try:
        if args.format == "v3.0" and not writes_format("v3.0"):
            return run_under_v3(argv)
        return run(args)
    except robotwin_episodes.EpisodeError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = " (the partial one is kept for --resume)" if args.resume else ""
        print(f"interrupted; no dataset written{kept}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
