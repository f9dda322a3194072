import io
import json
import pathlib
import subprocess
import sys

import cv2
import h5py
import numpy as np
import PIL.Image

import generate_robotwin_samples as gen
from conftest import REPO_ROOT, SAMPLE_EPISODES, SAMPLE_FRAMES


def decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def colour_fraction(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    return float(np.all(np.abs(image.astype(int) - colour) < tolerance, axis=-1).mean())


def test_layout_matches_robotwin(demo_clean: pathlib.Path) -> None:
    assert sorted(p.name for p in (demo_clean / "data").iterdir()) == [
        f"episode{i}.hdf5" for i in range(SAMPLE_EPISODES)
    ]
    for index in range(SAMPLE_EPISODES):
        instructions = json.loads((demo_clean / "instructions" / f"episode{index}.json").read_text())
        assert set(instructions) == {"seen", "unseen"}
        assert all(isinstance(s, str) and s for s in instructions["seen"] + instructions["unseen"])
    scene_info = json.loads((demo_clean / "scene_info.json").read_text())
    assert set(scene_info) == {f"episode_{i}" for i in range(SAMPLE_EPISODES)}
    assert "{A}" in scene_info["episode_0"]["info"]


def test_numbering_is_not_zero_padded(tmp_path: pathlib.Path) -> None:
    root = gen.write_demo_clean(tmp_path, episodes=11, frames=gen.MIN_FRAMES)
    names = {p.name for p in (root / "data").iterdir()}
    assert {"episode2.hdf5", "episode10.hdf5"} <= names
    assert not any(name.startswith("episode0") and name != "episode0.hdf5" for name in names)


def test_every_dataset_has_robotwin_shape_and_dtype(demo_clean: pathlib.Path) -> None:
    T = SAMPLE_FRAMES
    expected = {
        "joint_action/left_arm": ((T, 6), np.float64),
        "joint_action/right_arm": ((T, 6), np.float64),
        "joint_action/left_gripper": ((T,), np.float64),
        "joint_action/right_gripper": ((T,), np.float64),
        "joint_action/vector": ((T, 14), np.float64),
        "endpose/left_endpose": ((T, 7), np.float64),
        "endpose/right_endpose": ((T, 7), np.float64),
        "endpose/left_gripper": ((T,), np.float64),
        "endpose/right_gripper": ((T,), np.float64),
        "pointcloud": ((T, 0), np.float32),
    }
    for camera in gen.CAMERAS:
        expected[f"observation/{camera}/intrinsic_cv"] = ((T, 3, 3), np.float32)
        expected[f"observation/{camera}/extrinsic_cv"] = ((T, 3, 4), np.float32)
        expected[f"observation/{camera}/cam2world_gl"] = ((T, 4, 4), np.float32)
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        found: dict[str, h5py.Dataset] = {}

        def collect(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = obj

        f.visititems(collect)
        rgb = {f"observation/{camera}/rgb" for camera in gen.CAMERAS}
        assert set(found) == set(expected) | rgb
        for name, (shape, dtype) in expected.items():
            assert (found[name].shape, found[name].dtype) == (shape, dtype), name
        for name in rgb:
            assert found[name].shape == (T,) and found[name].dtype.kind == "S", name
        vector = f["joint_action/vector"][()]
        np.testing.assert_array_equal(vector[:, :6], f["joint_action/left_arm"][()])
        np.testing.assert_array_equal(vector[:, 6], f["joint_action/left_gripper"][()])
        np.testing.assert_array_equal(vector[:, 13], f["endpose/right_gripper"][()])
        quaternions = f["endpose/left_endpose"][:, 3:]
        np.testing.assert_allclose(np.linalg.norm(quaternions, axis=1), 1.0, atol=1e-9)


def test_rgb_is_nul_padded_to_the_longest_jpeg(demo_clean: pathlib.Path) -> None:
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        frames = f["observation/head_camera/rgb"][()]
    width = frames.dtype.itemsize
    stored = [frames.tobytes()[i * width : (i + 1) * width] for i in range(len(frames))]
    lengths = [len(frame) for frame in frames]
    assert width == max(lengths) and min(lengths) < width
    for raw, frame in zip(stored, frames):
        assert frame.endswith(b"\xff\xd9") and raw == frame + b"\0" * (width - len(frame))


def test_frames_decode_true_rgb_with_cv2_and_swapped_with_pil(demo_clean: pathlib.Path) -> None:
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        jpeg = f["observation/head_camera/rgb"][0]
    rgb = decode(jpeg)
    assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
    assert colour_fraction(rgb, gen.RED) > 0.005
    assert colour_fraction(rgb, gen.BLUE) > 0.005
    pil = np.asarray(PIL.Image.open(io.BytesIO(jpeg)).convert("RGB"))
    red_mask = np.all(np.abs(rgb.astype(int) - gen.RED) < 40, axis=-1)
    np.testing.assert_allclose(pil[red_mask].mean(axis=0), rgb[red_mask].mean(axis=0)[::-1], atol=12)
    red_seen_by_pil = pil[red_mask].mean(axis=0)
    assert red_seen_by_pil[2] > 180 and red_seen_by_pil[0] < 60, "a standard decoder shows the red shoe blue"


def test_frames_are_textured_like_rendered_scenes(demo_clean: pathlib.Path) -> None:
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        sizes = [len(frame) for camera in gen.CAMERAS for frame in f[f"observation/{camera}/rgb"][()]]
    assert np.median(sizes) > 15_000, "flat frames would flatter every benchmark"


def test_grippers_cross_half_where_the_generator_says(demo_clean: pathlib.Path) -> None:
    episode = gen.make_episode(0, SAMPLE_FRAMES, seed=0)
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        for arm in ("left", "right"):
            gripper = f[f"joint_action/{arm}_gripper"][()]
            above = gripper >= 0.5
            crossings = tuple(int(t) for t in np.flatnonzero(above[1:] != above[:-1]) + 1)
            assert crossings == episode.gripper_crossings[arm]
            close, release = crossings
            assert gripper[0] == 1.0 and gripper[close] < 0.5 <= gripper[close - 1] and gripper[-1] == 1.0


def test_red_shoe_moves_with_the_left_arm(demo_clean: pathlib.Path) -> None:
    episode = gen.make_episode(0, SAMPLE_FRAMES, seed=0)
    with h5py.File(demo_clean / "data" / "episode0.hdf5", "r") as f:
        frames = f["observation/head_camera/rgb"][()]

    def red_centroid(t: int) -> np.ndarray:
        mask = np.all(np.abs(decode(frames[t]).astype(int) - gen.RED) < 40, axis=-1)
        return np.argwhere(mask).mean(axis=0)

    grasp, release = episode.gripper_crossings["left"]
    assert np.allclose(red_centroid(0), red_centroid(grasp - 2), atol=1.0)
    assert np.linalg.norm(red_centroid(release) - red_centroid(0)) > 20


def test_left_arm_returns_home_and_episode_ends_still() -> None:
    episode = gen.make_episode(1, 224, seed=3)
    left = episode.left_endpose[:, :3]
    path_length = np.linalg.norm(np.diff(left, axis=0), axis=1).sum()
    assert np.linalg.norm(left[-1] - left[0]) < 0.05 < path_length
    np.testing.assert_array_equal(episode.vector[-5:], np.repeat(episode.vector[-1:], 5, axis=0))


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path: pathlib.Path) -> None:
    a = gen.write_demo_clean(tmp_path / "a", episodes=1, frames=gen.MIN_FRAMES, seed=5)
    b = gen.write_demo_clean(tmp_path / "b", episodes=1, frames=gen.MIN_FRAMES, seed=5)
    c = gen.write_demo_clean(tmp_path / "c", episodes=1, frames=gen.MIN_FRAMES, seed=6)
    read = lambda root: h5py.File(root / "data" / "episode0.hdf5", "r")  # noqa: E731
    with read(a) as fa, read(b) as fb, read(c) as fc:
        assert fa["observation/front_camera/rgb"][()].tobytes() == fb["observation/front_camera/rgb"][()].tobytes()
        np.testing.assert_array_equal(fa["endpose/left_endpose"][()], fb["endpose/left_endpose"][()])
        assert not np.array_equal(fa["endpose/left_endpose"][()], fc["endpose/left_endpose"][()])


def test_length_jitter_varies_lengths_deterministically() -> None:
    lengths = [gen.make_episode(i, 224, seed=0, length_jitter=8).length for i in range(10)]
    assert len(set(lengths)) > 1 and all(216 <= n <= 232 for n in lengths)
    assert lengths == [gen.make_episode(i, 224, seed=0, length_jitter=8).length for i in range(10)]


def test_cli_writes_and_rejects_too_short(tmp_path: pathlib.Path) -> None:
    script = str(REPO_ROOT / "generate_robotwin_samples.py")
    done = subprocess.run(
        [sys.executable, script, "--out", str(tmp_path), "--episodes", "2", "--frames", "30", "--workers", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "place_dual_shoes/demo_clean/data/episode1.hdf5").exists()
    assert not list(tmp_path.rglob("*.partial"))
    bad = subprocess.run(
        [sys.executable, script, "--out", str(tmp_path), "--frames", "10"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "at least 30" in bad.stderr
