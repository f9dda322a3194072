"""convert_robotwin_democlean_to_lerobot.py: real HDF5 episodes in, a real LeRobot v2.1 dataset out, read back with
lerobot's own reader (and PyAV for videos)."""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import av
import cv2
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import convert_robotwin_democlean_to_lerobot as converter
import generate_robotwin_samples as samples
import robotwin_episodes
from conftest import LAYOUT_EPISODES, LAYOUT_FRAMES, LAYOUT_SEED, ONE_WORKER_ONE_CAMERA, default_sigint

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "convert_robotwin_democlean_to_lerobot.py"
INTERFACE_FEATURES = {
    "observation.state": ("float32", (14,)),
    "action": ("float32", (14,)),
    "observation.images.cam_high": ("image", (240, 320, 3)),
    "observation.images.cam_left_wrist": ("image", (240, 320, 3)),
    "observation.images.cam_right_wrist": ("image", (240, 320, 3)),
    "manip_progress_time": ("float32", (1,)),
    "manip_progress_distance_left": ("float32", (1,)),
    "manip_progress_distance_right": ("float32", (1,)),
    "target_endpose": ("float32", (14,)),
    "target_joint": ("float32", (14,)),
}
SMALL_FRAMES = 30
pytestmark = [
    pytest.mark.usefixtures("datasets_cache"),
    # datasets turns our (1,)-shaped progress values into scalars with float(), which numpy deprecates.
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def lerobot():
    return converter.load_lerobot()


@pytest.fixture(scope="module")
def converted(demo_clean, tmp_path_factory):
    """The shared three-episode sample converted once with --verify; returns (dataset root, stdout)."""
    out = tmp_path_factory.mktemp("converted")
    argv = converter_argv(demo_clean, "test/demo", out, "--verify", "--workers", "1")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert converter.main(argv) == 0
    return out / "test" / "demo", stdout.getvalue()


@pytest.fixture(scope="module")
def reader(lerobot, converted):
    return lerobot.module.LeRobotDataset("test/demo", root=converted[0])


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """Three short episodes that tests may copy and damage."""
    return samples.write_demo_clean(tmp_path_factory.mktemp("small"), episodes=3, frames=SMALL_FRAMES, seed=1)


def copy_demo(demo: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(demo, tmp_path / "demo_clean"))


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = converter.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def converter_argv(root: pathlib.Path, repo_id: str, output_root: pathlib.Path, *options: str) -> list[str]:
    return ["--root", str(root), "--repo-id", repo_id, "--output-root", str(output_root), *options]


def episode_frames(reader, episode: int) -> range:
    return range(int(reader.episode_data_index["from"][episode]), int(reader.episode_data_index["to"][episode]))


def column(reader, episode: int, key: str) -> np.ndarray:
    """One non-image column of an episode, straight from the table lerobot loaded (no image decoding)."""
    frames = episode_frames(reader, episode)
    return np.asarray(reader.hf_dataset.data.column(key).to_pylist()[frames.start : frames.stop], dtype=np.float32)


def source_episode(number: int) -> samples.Episode:
    """The generator's own record of the shared sample episode (conftest: 40 frames, seed 0)."""
    return samples.make_episode(number, frames=40, seed=0)


# --- the written dataset ----------------------------------------------------------------------------------------


def test_info_json_declares_every_interface_feature_with_dtype_and_shape(converted):
    info = json.loads((converted[0] / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert info["fps"] == 50
    declared = {key: (value["dtype"], tuple(value["shape"])) for key, value in info["features"].items()}
    assert {key: declared.get(key) for key in INTERFACE_FEATURES} == INTERFACE_FEATURES


def test_reader_returns_every_feature_with_its_shape(reader):
    item = reader[5]
    shapes = {key: tuple(item[key].shape) for key in INTERFACE_FEATURES}
    assert shapes == {
        **{key: (14,) for key in ("observation.state", "action", "target_endpose", "target_joint")},
        **{f"observation.images.{cam}": (3, 240, 320) for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist")},
        **{key: () for key in converter.PROGRESS_FEATURES},  # lerobot 0.3.2 returns shape-(1,) features as 0-d
    }


def test_state_and_action_are_consecutive_joint_vectors(reader):
    for episode in range(3):
        vector = source_episode(episode).vector
        assert np.array_equal(column(reader, episode, "observation.state"), vector[:-1].astype(np.float32))
        assert np.array_equal(column(reader, episode, "action"), vector[1:].astype(np.float32))


def stored_image(reader, index: int, key: str) -> np.ndarray:
    return (reader[index][f"observation.images.{key}"].numpy().transpose(1, 2, 0) * 255).round().astype(np.int16)


def test_images_are_true_rgb(reader):
    episode = source_episode(1)
    start = int(reader.episode_data_index["from"][1])
    for camera, key in (("head_camera", "cam_high"), ("left_camera", "cam_left_wrist")):
        rendered = samples.render_frame(episode, camera, 20, samples.make_texture(0, camera)).astype(np.int16)
        stored = stored_image(reader, start + 20, key)
        error, swapped_error = np.abs(stored - rendered).mean(), np.abs(stored - rendered[..., ::-1]).mean()
        assert error < 6 and swapped_error > 3 * error  # JPEG noise only; red and blue in their places


def test_images_are_the_source_jpegs_pixel_for_pixel(reader, demo_clean):
    with h5py.File(demo_clean / "data" / "episode2.hdf5", "r") as f:
        jpeg = bytes(f["observation/right_camera/rgb"][7])
    start = int(reader.episode_data_index["from"][2])
    source = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)  # RoboTwin's JPEGs decode to RGB here
    assert np.array_equal(stored_image(reader, start + 7, "cam_right_wrist"), source)


def documented_task(demo: pathlib.Path, number: int, seed: int, kind: str = "seen") -> str:
    """The README's rule: instructions[kind][numpy.random.default_rng([seed, N]).integers(len)]."""
    candidates = json.loads((demo / "instructions" / f"episode{number}.json").read_text())[kind]
    return candidates[int(np.random.default_rng([seed, number]).integers(len(candidates)))]


def test_task_follows_the_documented_rule_with_the_default_seed(reader, demo_clean):
    for episode in range(3):
        assert reader[episode_frames(reader, episode).start]["task"] == documented_task(demo_clean, episode, seed=0)


def test_seed_option_changes_the_task_choice_by_the_documented_rule(small_demo, tmp_path, lerobot, capsys):
    seed = 7
    expected = [documented_task(small_demo, n, seed) for n in range(3)]
    assert expected != [documented_task(small_demo, n, 0) for n in range(3)]  # else the seed could be ignored
    argv = converter_argv(small_demo, "t/seed", tmp_path, *ONE_WORKER_ONE_CAMERA, "--seed", str(seed))
    assert run(argv, capsys)[0] == 0
    dataset = lerobot.module.LeRobotDataset("t/seed", root=tmp_path / "t" / "seed")
    assert [dataset[episode_frames(dataset, n).start]["task"] for n in range(3)] == expected


def test_task_is_one_seen_instruction_of_its_episode(reader, demo_clean):
    for episode in range(3):
        seen = json.loads((demo_clean / "instructions" / f"episode{episode}.json").read_text())["seen"]
        frames = episode_frames(reader, episode)
        task_indices = set(reader.hf_dataset.data.column("task_index").to_pylist()[frames.start : frames.stop])
        assert len(task_indices) == 1
        assert reader[frames.start]["task"] == reader[frames.stop - 1]["task"] and reader[frames.start]["task"] in seen


def test_progress_fields_run_from_zero_to_one_without_decreasing(reader):
    for episode in range(3):
        for key in converter.PROGRESS_FEATURES:
            progress = column(reader, episode, key)
            assert progress[0] == 0.0 and progress[-1] == 1.0
            assert np.all(np.diff(progress) >= 0), key


def test_time_progress_is_frame_over_last_frame(reader):
    progress = column(reader, 0, "manip_progress_time")
    assert np.allclose(progress, np.arange(39) / 38)


def test_distance_progress_is_each_arms_own_arc_length_from_the_raw_end_poses(reader, demo_clean):
    for episode in range(3):
        with h5py.File(demo_clean / "data" / f"episode{episode}.hdf5", "r") as f:
            poses = {arm: f[f"endpose/{arm}_endpose"][()] for arm in ("left", "right")}
        length = len(poses["left"]) - 1
        expected = {}
        for arm, pose in poses.items():
            xyz = pose[:length, :3].astype(np.float64)
            steps = np.sqrt(((xyz[1:] - xyz[:-1]) ** 2).sum(axis=1))
            travelled = np.concatenate([[0.0], np.cumsum(steps)])
            expected[arm] = travelled / travelled[-1]
        # Only arms whose progress differs from each other's and from the clock can tell a swap or time progress.
        assert np.abs(expected["left"] - expected["right"]).max() > 0.05
        assert min(np.abs(expected[arm] - np.arange(length) / (length - 1)).max() for arm in expected) > 0.05
        for arm in ("left", "right"):
            actual = column(reader, episode, f"manip_progress_distance_{arm}")
            np.testing.assert_allclose(actual, expected[arm], rtol=0, atol=1e-6, err_msg=f"episode {episode} {arm}")


def test_targets_are_the_poses_at_each_arms_next_keyframe(reader):
    for number in range(3):
        episode = source_episode(number)
        length = episode.length - 1
        expected_pose, expected_joint = [], []
        for arm, pose, joints in (
            ("left", episode.left_endpose, episode.vector[:, :7]),
            ("right", episode.right_endpose, episode.vector[:, 7:]),
        ):
            keys = sorted({*episode.gripper_crossings[arm], length - 1})
            targets = [next(k for k in keys if k >= t) for t in range(length)]
            expected_pose.append(pose[targets])
            expected_joint.append(joints[targets])
        assert np.array_equal(column(reader, number, "target_endpose"), np.hstack(expected_pose).astype(np.float32))
        assert np.array_equal(column(reader, number, "target_joint"), np.hstack(expected_joint).astype(np.float32))


def test_arm_that_returns_home_still_reaches_full_distance_progress(reader):
    episode = source_episode(0)
    xyz = episode.left_endpose[:-1, :3]
    assert np.linalg.norm(xyz[-1] - xyz[0]) < 0.1 * converter.path_length(xyz)[-1]  # it really ends near its start
    progress = column(reader, 0, "manip_progress_distance_left")
    assert progress[-1] == 1.0 and np.all(np.diff(progress) >= 0)


def test_verify_reports_what_it_checked(converted):
    output = converted[1]
    assert "verified" in output and "pixel-exact true RGB" in output and "50-step window" in output


def test_dataset_holds_no_leftover_png_folder(converted):
    assert not (converted[0] / "images").exists()
    assert not list(converted[0].parent.glob(".demo.tmp-*"))


# --- the three forms RoboTwin writes convert to one dataset ---------------------------------------------------------

ALL_CAMERAS = {
    "legacy": ("head_camera", "left_camera", "right_camera", "front_camera"),
    "xpolicylab": ("cam_head", "cam_left_wrist", "cam_right_wrist", "cam_third_view"),
}
ALL_CAMERAS["migrated"] = ALL_CAMERAS["xpolicylab"]


@pytest.fixture(scope="module")
def converted_layouts(lerobot, layouts, tmp_path_factory):
    """The same two episodes, written legacy, collected as XPolicyLab and migrated, each converted with all four
    cameras (named as its layout names them): layout -> lerobot's reader of the dataset."""
    out = tmp_path_factory.mktemp("converted_layouts")
    readers = {}
    for layout, root in layouts.items():
        argv = converter_argv(root, f"t/{layout}", out, "--workers", "1", "--cameras", *ALL_CAMERAS[layout])
        with contextlib.redirect_stdout(io.StringIO()):
            assert converter.main(argv) == 0, layout
        readers[layout] = lerobot.module.LeRobotDataset(f"t/{layout}", root=out / "t" / layout)
    return readers


@pytest.mark.slow
def test_legacy_xpolicylab_and_migrated_forms_convert_to_equal_datasets(converted_layouts):
    legacy = converted_layouts["legacy"]
    assert legacy.num_frames == LAYOUT_EPISODES * (LAYOUT_FRAMES - 1)
    keys = [
        "observation.state",
        "action",
        *converter.PROGRESS_FEATURES,
        "target_endpose",
        "target_joint",
        "episode_index",
        "frame_index",
        "task",
        *(converter.IMAGE_PREFIX + key for key in ("cam_high", "cam_left_wrist", "cam_right_wrist", "cam_front")),
    ]
    expected = [legacy[index] for index in range(legacy.num_frames)]
    for layout in ("xpolicylab", "migrated"):
        other = converted_layouts[layout]
        assert other.num_frames == legacy.num_frames, layout
        for index in range(other.num_frames):
            item = other[index]
            for key in keys:
                if key == "task":
                    assert item[key] == expected[index][key], (layout, index)
                else:
                    assert item[key].dtype == expected[index][key].dtype, (layout, index, key)
                    assert item[key].equal(expected[index][key]), (layout, index, key)


@pytest.mark.slow
def test_the_equal_datasets_hold_the_episodes_values(converted_layouts):
    """Equal could also mean equally wrong: the state is the generator's joints, the task one of its instructions."""
    reader = converted_layouts["xpolicylab"]
    for number in range(LAYOUT_EPISODES):
        episode = samples.make_episode(number, frames=LAYOUT_FRAMES, seed=LAYOUT_SEED)
        assert np.array_equal(column(reader, number, "observation.state"), episode.vector[:-1].astype(np.float32))
        assert np.array_equal(column(reader, number, "action"), episode.vector[1:].astype(np.float32))
        assert reader[episode_frames(reader, number).start]["task"] in episode.seen


def test_unseen_instructions_are_refused_for_xpolicylab_files_which_hold_only_the_seen_list(layouts, tmp_path, capsys):
    argv = converter_argv(layouts["xpolicylab"], "t/unseen", tmp_path, "--workers", "1", "--instructions", "unseen")
    code, _, err = run(argv, capsys)
    assert code == 1 and 'episode_0000000.hdf5: no "unseen" instructions' in err


# --- pure computations shared with the training side -------------------------------------------------------------


def test_distance_progress_of_a_round_trip_ends_at_one():
    out_and_back = np.concatenate([np.linspace([0, 0, 0], [0.3, 0, 0], 20), np.linspace([0.3, 0, 0], [0, 0, 0], 20)])
    progress = converter.distance_progress(out_and_back)
    assert progress[0] == 0.0 and progress[-1] == 1.0 and np.all(np.diff(progress) >= 0)
    assert progress[19] == pytest.approx(0.5, abs=0.03)


def test_motionless_arm_gets_time_progress_with_a_warning():
    episode = samples.make_episode(0, frames=40)
    still = np.repeat(episode.right_endpose[:1], episode.length, axis=0)
    still[:, 0] += np.linspace(0, 0.0005, episode.length)  # half a millimetre in total
    pairs = robotwin_episodes.Pairs.from_frames(episode.vector, episode.left_endpose, still)
    fields = converter.compute_episode_fields(pairs, name="ep0")
    assert np.array_equal(fields.progress_distance_right, fields.progress_time)
    assert any("right arm moves less than 1 mm" in note for note in fields.warnings)


def test_keyframes_are_gripper_crossings_plus_last_frame():
    gripper = np.array([1.0, 1.0, 0.7, 0.3, 0.0, 0.0, 0.3, 0.7, 1.0, 1.0])
    assert converter.keyframes(gripper).tolist() == [3, 7, 9]
    assert converter.target_frames(np.array([3, 7, 9]), 10).tolist() == [3, 3, 3, 3, 7, 7, 7, 7, 9, 9]


def test_task_choice_is_reproducible_and_follows_the_list_kind():
    instructions = {"seen": [f"seen {i}" for i in range(20)], "unseen": ["unseen a", "unseen b"]}
    first = [converter.choose_task(instructions, "seen", seed=3, number=n) for n in range(10)]
    assert first == [converter.choose_task(instructions, "seen", seed=3, number=n) for n in range(10)]
    assert len(set(first)) > 1
    assert converter.choose_task(instructions, "unseen", seed=3, number=0).startswith("unseen")


# --- options ------------------------------------------------------------------------------------------------------


def test_front_camera_and_image_size_change_the_schema(small_demo, tmp_path, lerobot, capsys):
    options = ("--workers", "1", "--cameras", "head_camera", "front_camera", "--image-size", "160x120", "--verify")
    argv = converter_argv(small_demo, "t/small", tmp_path, *options)
    code, _, err = run(argv, capsys)
    assert code == 0, err
    item = lerobot.module.LeRobotDataset("t/small", root=tmp_path / "t" / "small")[3]
    assert tuple(item["observation.images.cam_front"].shape) == (3, 120, 160)
    assert "observation.images.cam_left_wrist" not in item


def test_unseen_instructions_option(small_demo, tmp_path, lerobot, capsys):
    small = copy_demo(small_demo, tmp_path)
    for path in sorted((small / "data").glob("episode*.hdf5"))[1:]:
        path.unlink()
    argv = converter_argv(small, "t/unseen", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--instructions", "unseen")
    assert run(argv, capsys)[0] == 0
    unseen = json.loads((small / "instructions" / "episode0.json").read_text())["unseen"]
    assert lerobot.module.LeRobotDataset("t/unseen", root=tmp_path / "out" / "t" / "unseen")[0]["task"] in unseen


def test_video_mode_writes_true_rgb_mp4_per_camera_and_episode(small_demo, tmp_path, capsys):
    small = copy_demo(small_demo, tmp_path)
    for path in sorted((small / "data").glob("episode*.hdf5"))[1:]:
        path.unlink()
    argv = converter_argv(small, "t/video", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--video")
    assert run(argv, capsys)[0] == 0
    video = (
        tmp_path / "out" / "t" / "video" / "videos" / "chunk-000" / "observation.images.cam_high" / "episode_000000.mp4"
    )
    with av.open(str(video)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == SMALL_FRAMES - 1
    episode = samples.make_episode(0, frames=SMALL_FRAMES, seed=1)
    rendered = samples.render_frame(episode, "head_camera", 10, samples.make_texture(1, "head_camera")).astype(np.int16)
    assert np.abs(frames[10] - rendered).mean() < np.abs(frames[10] - rendered[..., ::-1]).mean()


# --- bad input ----------------------------------------------------------------------------------------------------


def delete_dataset(path: pathlib.Path, name: str) -> None:
    with h5py.File(path, "a") as f:
        del f[name]


def shorten_dataset(path: pathlib.Path, name: str) -> None:
    with h5py.File(path, "a") as f:
        values = f[name][:-3]
        del f[name]
        f[name] = values


def keep_one_frame(path: pathlib.Path, _: str) -> None:
    with h5py.File(path, "a") as f:
        names = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
        for name in names:
            values = f[name][:1]
            del f[name]
            f[name] = values


def set_value(value: float):
    """A damage that writes value into row 3, column 1 of the dataset."""

    def damage(path: pathlib.Path, name: str) -> None:
        with h5py.File(path, "a") as f:
            f[name][3, 1] = value

    return damage


def drop_last_column(path: pathlib.Path, name: str) -> None:
    with h5py.File(path, "a") as f:
        values = f[name][:, :-1]
        del f[name]
        f[name] = values


def smaller_jpeg(jpeg: bytes) -> bytes:
    """The same frame at half size, still a whole JPEG."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return samples.encode_like_robotwin(cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))


def replace_jpeg(path: pathlib.Path, name: str, make_bad) -> None:
    with h5py.File(path, "a") as f:
        frames = [bytes(buffer) for buffer in f[name][()]]
        frames[5] = make_bad(frames[5])
        del f[name]
        f[name] = np.array(frames, dtype=f"S{max(map(len, frames))}")


BAD_CASES = {
    "missing dataset": ("endpose/left_endpose", delete_dataset, "missing"),
    "unequal lengths": ("observation/head_camera/rgb", shorten_dataset, "frames but joint_action/vector has"),
    "single frame": ("joint_action/vector", keep_one_frame, "at least 2 are needed"),
    "garbage jpeg": (
        "observation/left_camera/rgb",
        lambda path, name: replace_jpeg(path, name, lambda jpeg: b"not a jpeg at all"),
        "frame 5 is not a decodable JPEG",
    ),
    "truncated jpeg": (
        "observation/right_camera/rgb",
        lambda path, name: replace_jpeg(path, name, lambda jpeg: jpeg[: len(jpeg) // 2]),
        "frame 5 is not a decodable JPEG",
    ),
    "nan value": ("endpose/left_endpose", set_value(np.nan), "contains NaN or infinity"),
    "infinite value": ("joint_action/vector", set_value(np.inf), "contains NaN or infinity"),
    "wrong shape": ("joint_action/vector", drop_last_column, f"shape ({SMALL_FRAMES}, 13), expected (rows, 14)"),
    "jpeg of another size": (
        "observation/head_camera/rgb",
        lambda path, name: replace_jpeg(path, name, smaller_jpeg),
        "frame 5 differs in size from frame 0",
    ),
}


def assert_one_line_and_nothing_written(err: str, file_name: str, dataset: str, message: str, out: pathlib.Path):
    lines = [line for line in err.splitlines() if file_name in line]
    assert len(lines) == 1, err
    assert f"{file_name}: {dataset}: " in lines[0] and message in lines[0], err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_episode_is_named_and_nothing_is_written(case, small_demo, tmp_path, capsys):
    dataset, damage, message = BAD_CASES[case]
    demo = copy_demo(small_demo, tmp_path)
    damage(demo / "data" / "episode1.hdf5", dataset)
    out = tmp_path / "out"
    code, _, err = run(converter_argv(demo, "t/bad", out, "--workers", "1"), capsys)
    assert code == 1
    assert_one_line_and_nothing_written(err, "episode1.hdf5", dataset, message, out)


def test_every_bad_episode_is_listed_not_only_the_first(small_demo, tmp_path, capsys):
    demo = copy_demo(small_demo, tmp_path)
    delete_dataset(demo / "data" / "episode0.hdf5", "endpose/right_endpose")
    set_value(np.nan)(demo / "data" / "episode2.hdf5", "joint_action/vector")
    out = tmp_path / "out"
    code, _, err = run(converter_argv(demo, "t/bad", out, "--workers", "2"), capsys)
    assert code == 1
    assert_one_line_and_nothing_written(err, "episode0.hdf5", "endpose/right_endpose", "missing", out)
    assert_one_line_and_nothing_written(err, "episode2.hdf5", "joint_action/vector", "NaN", out)
    assert "episode1.hdf5" not in err and "2 bad episode(s); nothing written" in err


def replace_instructions(path: pathlib.Path, name: str) -> None:
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data='["Pick up both shoes", ', dtype=h5py.string_dtype())


# XPolicyLab files (as RoboTwin collects them since 2026-08) get the same care: dataset as named in the message.
XPOLICYLAB_BAD_CASES = {
    "missing group": ("state/", lambda path, name: delete_dataset(path, name.rstrip("/")), "missing"),
    "unequal lengths": (
        "vision/cam_head/colors",
        shorten_dataset,
        f"{SMALL_FRAMES - 4} frames but state/left_arm_joint_states has {SMALL_FRAMES - 1}",
    ),
    "undecodable jpeg": (
        "vision/cam_left_wrist/colors",
        lambda path, name: replace_jpeg(path, name, lambda jpeg: b"not a jpeg at all"),
        "frame 5 is not a decodable JPEG",
    ),
    "instructions not json": ("instructions", replace_instructions, "not valid JSON"),
    "nan value": ("action/right_ee_poses", set_value(np.nan), "contains NaN or infinity"),
    "wrong shape": ("state/left_arm_joint_states", drop_last_column, "expected (rows, 6)"),
}


@pytest.fixture(scope="module")
def small_xpolicylab(tmp_path_factory):
    """Three short episodes as RoboTwin collects them in the XPolicyLab format, for tests to copy and damage."""
    out = tmp_path_factory.mktemp("small_xpolicylab")
    return samples.write_demo_clean(out, episodes=3, frames=SMALL_FRAMES, seed=1, layout="xpolicylab")


@pytest.mark.parametrize("case", XPOLICYLAB_BAD_CASES)
def test_bad_xpolicylab_episode_is_named_and_nothing_is_written(case, small_xpolicylab, tmp_path, capsys):
    dataset, damage, message = XPOLICYLAB_BAD_CASES[case]
    demo = copy_demo(small_xpolicylab, tmp_path)
    damage(demo / "data" / "episode_0000001.hdf5", dataset)
    out = tmp_path / "out"
    code, _, err = run(converter_argv(demo, "t/bad", out, "--workers", "1"), capsys)
    assert code == 1
    assert_one_line_and_nothing_written(err, "episode_0000001.hdf5", dataset, message, out)


def test_a_folder_mixing_layouts_is_refused_before_any_work(small_demo, small_xpolicylab, tmp_path, capsys):
    demo = copy_demo(small_xpolicylab, tmp_path)
    shutil.copy(small_demo / "data" / "episode0.hdf5", demo / "data" / "episode9.hdf5")
    out = tmp_path / "out"
    code, _, err = run(converter_argv(demo, "t/mixed", out, "--workers", "1"), capsys)
    assert code == 1 and len(err.splitlines()) == 1
    assert "mixes episode layouts: 3 xpolicylab" in err and "1 legacy (episode9.hdf5)" in err
    assert not out.exists()


def test_missing_instruction_file_is_an_error(small_demo, tmp_path, capsys):
    demo = copy_demo(small_demo, tmp_path)
    (demo / "instructions" / "episode2.json").unlink()
    out = tmp_path / "out"
    code, _, err = run(converter_argv(demo, "t/bad", out), capsys)
    assert code == 1 and "instructions/episode2.json: missing" in err
    assert not out.exists() or not any(out.rglob("*"))


def test_default_prompt_replaces_a_missing_instruction_file(small_demo, tmp_path, lerobot, capsys):
    demo = copy_demo(small_demo, tmp_path)
    for number in (1, 2):
        (demo / "data" / f"episode{number}.hdf5").unlink()
    (demo / "instructions" / "episode0.json").unlink()
    argv = converter_argv(
        demo, "t/prompt", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--default-prompt", "put the shoes away"
    )
    assert run(argv, capsys)[0] == 0
    assert (
        lerobot.module.LeRobotDataset("t/prompt", root=tmp_path / "out" / "t" / "prompt")[0]["task"]
        == "put the shoes away"
    )


def test_skip_bad_converts_the_rest_and_lists_what_it_skipped(small_demo, tmp_path, lerobot, capsys):
    demo = copy_demo(small_demo, tmp_path)
    delete_dataset(demo / "data" / "episode1.hdf5", "joint_action/vector")
    argv = converter_argv(demo, "t/skip", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--skip-bad")
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "skipped" in out and "episode1.hdf5: joint_action/vector: missing" in out
    assert lerobot.module.LeRobotDataset("t/skip", root=tmp_path / "out" / "t" / "skip").num_episodes == 2


def test_existing_dataset_is_refused_without_overwrite_and_replaced_with_it(small_demo, tmp_path, lerobot, capsys):
    demo = copy_demo(small_demo, tmp_path)
    for number in (1, 2):
        (demo / "data" / f"episode{number}.hdf5").unlink()
    existing = tmp_path / "out" / "t" / "exists"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("previous dataset")
    argv = converter_argv(demo, "t/exists", tmp_path / "out", *ONE_WORKER_ONE_CAMERA)
    code, _, err = run(argv, capsys)
    assert code == 1 and "dataset exists" in err and (existing / "keep.txt").exists()
    assert run([*argv, "--overwrite"], capsys)[0] == 0
    assert not (existing / "keep.txt").exists()
    assert lerobot.module.LeRobotDataset("t/exists", root=existing).num_episodes == 1


def test_interrupt_during_writing_leaves_no_dataset(small_demo, tmp_path, monkeypatch, capsys):
    write = converter.write_episode
    calls = []

    def interrupted_after_first_episode(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(converter, "write_episode", interrupted_after_first_episode)
    out = tmp_path / "out"
    argv = converter_argv(small_demo, "t/int", out, *ONE_WORKER_ONE_CAMERA)
    code, _, err = run(argv, capsys)
    assert code == 130 and "no dataset written" in err
    assert len(calls) == 2
    assert list(out.rglob("*")) == [out / "t"]  # the parent folder only: no dataset, no partial folder


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_leaves_no_dataset(small_demo, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, str(SCRIPT), "--root", str(small_demo), "--repo-id", "t/ctrlc", "--output-root", str(out)]
    # Its own session, so that the signal reaches the converter and its workers the way a terminal's Ctrl-C does.
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, preexec_fn=default_sigint
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("t/.ctrlc.tmp-*/meta")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, "the conversion ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err.decode()
    assert "no dataset written" in err.decode() and "Traceback" not in err.decode()
    assert list(out.rglob("*")) == [out / "t"]


def test_lerobot_writing_format_v3_is_refused(small_demo, tmp_path, lerobot, monkeypatch, capsys):
    # lerobot >= 0.4 (format v3.0) is not installed here; its CODEBASE_VERSION constant is what the converter reads.
    monkeypatch.setattr(lerobot.module, "CODEBASE_VERSION", "v3.0")
    out = tmp_path / "out"
    code, _, err = run(converter_argv(small_demo, "t/v3", out), capsys)
    assert code == 1 and "v3.0, which openpi cannot read" in err
    assert not out.exists()


def test_lerobot_home_variable_is_refused_with_the_replacement_named(small_demo, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LEROBOT_HOME", str(tmp_path / "old"))
    code, _, err = run(converter_argv(small_demo, "t/home", tmp_path / "out"), capsys)
    assert code == 1 and "set HF_LEROBOT_HOME instead" in err
    assert not (tmp_path / "out").exists()


def test_pinned_rev_writer_gets_the_task_inside_the_frame():
    class PinnedRevDataset:
        # openpi's pinned lerobot rev: add_frame(frame) reads the task from frame["task"]
        def __init__(self):
            self.frames = []

        def add_frame(self, frame):
            self.frames.append(frame)

    pinned = converter.LeRobot(module=None, home=pathlib.Path("."), task_argument=False)
    dataset = PinnedRevDataset()
    converter.add_frame(pinned, dataset, {"action": np.zeros(14, np.float32)}, "pick up the shoes")
    assert dataset.frames[0]["task"] == "pick up the shoes"


def test_installed_lerobot_takes_the_task_as_an_argument(lerobot):
    assert lerobot.task_argument and lerobot.module.CODEBASE_VERSION == "v2.1"


def test_verify_fails_when_the_dataset_differs_from_the_source(small_demo, tmp_path, lerobot, capsys):
    demo = copy_demo(small_demo, tmp_path)
    argv = converter_argv(demo, "t/verify", tmp_path / "out", *ONE_WORKER_ONE_CAMERA)
    assert run(argv, capsys)[0] == 0
    with h5py.File(demo / "data" / "episode0.hdf5", "a") as f:
        f["joint_action/vector"][0, 0] += 0.5
    sources = converter.find_episodes(demo)
    options = converter.Options(cameras=("head",))
    with pytest.raises(converter.ConversionError, match="observation.state differs"):
        converter.verify_dataset(lerobot, "t/verify", tmp_path / "out" / "t" / "verify", sources, options, 3)


def change_first_frame(dataset: pathlib.Path, key: str) -> None:
    """Alter one value of frame 0 of episode 0 in the written parquet, the way a faulty writer would."""
    path = dataset / "data" / "chunk-000" / "episode_000000.parquet"
    table = pq.read_table(path)
    values = table.column(key).to_pylist()
    if key.startswith("observation.images."):
        image = cv2.imdecode(np.frombuffer(values[0]["bytes"], np.uint8), cv2.IMREAD_COLOR)
        image[:8, :8] = 255 - image[:8, :8]
        values[0] = {**values[0], "bytes": cv2.imencode(".png", image)[1].tobytes()}
    else:
        values[0] = [values[0][0] + 0.5, *values[0][1:]]
    field = table.schema.field(key)
    pq.write_table(table.set_column(table.schema.get_field_index(key), field, pa.array(values, field.type)), path)


@pytest.mark.parametrize("key", ["observation.images.cam_high", "action", "target_endpose", "target_joint"])
def test_verify_exits_1_naming_the_field_when_the_written_dataset_differs(key, small_demo, tmp_path, monkeypatch):
    """--verify as the command line runs it (main's return value is the exit status), with one value of the written
    dataset changed between writing and verifying."""
    write = converter.move_into_place

    def write_then_change(partial: pathlib.Path, destination: pathlib.Path) -> None:
        write(partial, destination)
        change_first_frame(destination, key)

    monkeypatch.setattr(converter, "move_into_place", write_then_change)
    argv = converter_argv(small_demo, "t/verify", tmp_path, *ONE_WORKER_ONE_CAMERA, "--verify")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        assert converter.main(argv) == 1
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr.getvalue()
    assert re.fullmatch(rf"error: .*: episode 0 frame 0 \(episode0\.hdf5\): {re.escape(key)}:? .*differ.*", errors[0])


# --- the command line as the README's main job runs it ------------------------------------------------------------


@pytest.mark.slow
def test_command_line_writes_to_hf_lerobot_home_and_verifies_by_repo_id(demo_clean, tmp_path):
    env = {**os.environ, "HF_LEROBOT_HOME": str(tmp_path / "home"), "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(demo_clean), "--repo-id", "robotwin/place_dual_shoes", "--verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"by repo id 'robotwin/place_dual_shoes' from {tmp_path / 'home'}" in result.stdout
    assert (tmp_path / "home" / "robotwin" / "place_dual_shoes" / "meta" / "info.json").is_file()
    assert "episodes 3/3" in result.stderr  # the progress line


def test_episodes_names_a_subset_in_the_visualizers_syntax(demo_clean):
    sources = converter.find_episodes(demo_clean)

    chosen = converter.select_episodes(sources, converter.parse_episode_spec("0,2"), demo_clean)

    assert [source.number for source in chosen] == [0, 2]
    assert converter.select_episodes(sources, None, demo_clean) == sources


def test_episodes_naming_a_missing_episode_is_one_line_and_writes_nothing(demo_clean, tmp_path, capsys):
    code = converter.main(converter_argv(demo_clean, "t/subset", tmp_path, "--episodes", "1-4"))

    assert code == 1
    assert capsys.readouterr().err.strip() == f"error: {demo_clean}: --episodes names episode(s) without a file: 3, 4"
    assert not any(tmp_path.iterdir())


def interrupt_writing_after(monkeypatch, episodes: int) -> None:
    """Ctrl-C as the writer starts episode `episodes` (0-based), after that many were saved."""
    write, calls = converter.write_episode, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == episodes + 1:
            raise KeyboardInterrupt
        write(*args)

    monkeypatch.setattr(converter, "write_episode", interrupted)


@pytest.mark.parametrize("killed_in_save", [False, True], ids=["ctrl-c", "killed-after-parquet-before-metadata"])
def test_resume_continues_an_interrupted_conversion_to_the_uninterrupted_dataset(
    killed_in_save, small_demo, tmp_path, lerobot, monkeypatch, capsys
):
    whole = converter_argv(small_demo, "t/whole", tmp_path / "out", *ONE_WORKER_ONE_CAMERA)
    assert run(whole, capsys)[0] == 0
    resumed = converter_argv(small_demo, "t/resumed", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--resume")
    with monkeypatch.context() as patch:
        interrupt_writing_after(patch, 1)
        code, _, err = run(resumed, capsys)
    assert code == 130 and "kept for --resume" in err
    assert not (tmp_path / "out" / "t" / "resumed").exists()  # nothing reads as complete
    if killed_in_save:  # lerobot had written episode 1's parquet file but not yet its metadata
        data = tmp_path / "out" / "t" / ".resumed.tmp-resume" / "data" / "chunk-000"
        shutil.copy(data / "episode_000000.parquet", data / "episode_000001.parquet")
    code, _, err = run(resumed, capsys)
    assert code == 0 and "resuming after 1 of" in err
    assert sorted(p.name for p in (tmp_path / "out" / "t").iterdir()) == ["resumed", "whole"]  # no hidden leftovers
    expected = lerobot.module.LeRobotDataset("t/whole", root=tmp_path / "out" / "t" / "whole")
    actual = lerobot.module.LeRobotDataset("t/resumed", root=tmp_path / "out" / "t" / "resumed")
    assert actual.num_episodes == expected.num_episodes > 1 and len(actual) == len(expected)
    for index in range(len(expected)):
        want, got = expected[index], actual[index]
        assert want.keys() == got.keys()
        for key, value in want.items():
            if isinstance(value, str):
                assert got[key] == value, (index, key)
            else:
                assert np.array_equal(got[key].numpy(), value.numpy()), (index, key)  # images pixel for pixel
    for name in ("episodes.jsonl", "episodes_stats.jsonl", "tasks.jsonl"):
        whole_meta = (tmp_path / "out" / "t" / "whole" / "meta" / name).read_text()
        assert (tmp_path / "out" / "t" / "resumed" / "meta" / name).read_text() == whole_meta


def test_resume_with_other_options_is_refused_in_one_line(small_demo, tmp_path, monkeypatch, capsys):
    argv = converter_argv(small_demo, "t/res", tmp_path / "out", *ONE_WORKER_ONE_CAMERA, "--resume")
    with monkeypatch.context() as patch:
        interrupt_writing_after(patch, 1)
        assert run(argv, capsys)[0] == 130
    code, _, err = run([*argv, "--seed", "5"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "seed" in err and ".res.tmp-resume.json" in err and "without --resume" in err
    assert not (tmp_path / "out" / "t" / "res").exists()
    assert (tmp_path / "out" / "t" / ".res.tmp-resume").is_dir()  # still there for a resume with the old options
