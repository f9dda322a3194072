"""openpi_patch/norm_stats.py against openpi's own norm-stats pass, on a real converted LeRobot dataset.

The reference is the path of openpi's scripts/compute_norm_stats.py (not in the pip package), run here with the
real openpi from PyPI (patched copy): lerobot's reader with its images decoded, the config's repack and data
transforms, openpi's TorchDataLoader in dataset order, RunningStats on 'state' and 'actions'.
"""

import dataclasses
import io
import os
import pathlib
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest

import convert_robotwin_democlean_to_lerobot as converter
import generate_robotwin_samples as samples
from openpi_patch import cpu_variants, experiment_configs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "openpi_patch" / "norm_stats.py"
REPO_ID = "test/norm"
# The same dataset with random states and actions: generated episodes end at rest (their last actions repeat), so
# only moving values show whether a chunk repeats the episode's last row past its end, as lerobot's reader does.
MOVING_ID = "test/norm_moving"
# The converter's --video form of the same episodes: images as mp4 files, no image columns in the parquet files.
# openpi's reader needs torchcodec with FFmpeg's libraries to decode them, which this machine lacks.
VIDEO_ID = "test/norm_video"
# The converter's --format v3.0 form (lerobot 0.4.4, XPolicyLab's Pi_05): every episode in one data file.
V3_ID = "test/norm_v3"
BASELINE = "pi05_robotwin_baseline"
TIME_ARMS = ("pi05_robotwin_progress_lasttoken_time", "pi05_robotwin_progress_specialtoken_time")
DISTANCE_ARMS = ("pi05_robotwin_progress_lasttoken_distance", "pi05_robotwin_progress_specialtoken_distance")
# Three episodes of 52-68 frames: longer and shorter than the 50-step action chunk, and 191 frames in all, so the
# batch size of 32 leaves 31 frames out of openpi's pass.
EPISODES, FRAMES, JITTER = 3, 60, 8
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> pathlib.Path:
    """HF_LEROBOT_HOME holding REPO_ID (PNG frames), VIDEO_ID (mp4) and V3_ID (LeRobot v3.0), converted from the same
    generated episodes with all three cameras."""
    root = samples.write_demo_clean(
        tmp_path_factory.mktemp("episodes"), episodes=EPISODES, frames=FRAMES, seed=0, length_jitter=JITTER
    )
    home = tmp_path_factory.mktemp("lerobot")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        # v3.0 is written by the converter re-run under .venv-lerobot04, which reads the environment's cache
        patch.setenv("HF_DATASETS_CACHE", datasets.config.HF_DATASETS_CACHE)
        for repo_id, options in ((REPO_ID, ()), (VIDEO_ID, ("--video",)), (V3_ID, ("--format", "v3.0"))):
            argv = ["--root", str(root), "--repo-id", repo_id, "--output-root", str(home), "--workers", "1", *options]
            assert converter.main(argv) == 0
    return home


@pytest.fixture(scope="module")
def moving(home) -> str:
    """MOVING_ID beside REPO_ID in `home`: REPO_ID's files with every state and action row replaced by noise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(home / REPO_ID, home / MOVING_ID)
    rng = np.random.default_rng(0)
    for path in sorted((home / MOVING_ID / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        for name in ("observation.state", "action"):
            index = table.schema.get_field_index(name)
            noise = rng.normal(size=(table.num_rows, 14)).astype(np.float32)
            table = table.set_column(
                index, table.schema.field(index), pa.array(list(noise), table.schema.field(index).type)
            )
        pq.write_table(table, path)
    return MOVING_ID


@pytest.fixture(scope="module")
def norm_stats(home, tmp_path_factory):
    """The tool's module with the patched openpi imported, openpi's reader pointed at `home`, a stand-in tokenizer."""
    data_home = tmp_path_factory.mktemp("openpi-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OPENPI_DATA_HOME", str(data_home))
        patch.setattr(sys, "path", list(sys.path))
        cpu_variants.use_patched_openpi(tmp_path_factory.mktemp("patched") / "site")
        cpu_variants.write_stand_in_tokenizer(data_home)
        from openpi_patch import norm_stats

        lerobot_dataset = norm_stats.lerobot_dataset_module()
        patch.setattr(lerobot_dataset, "HF_LEROBOT_HOME", home)
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield norm_stats
    for name in [name for name in sys.modules if name == "openpi" or name.startswith("openpi.")]:
        del sys.modules[name]


def requests(norm_stats, names, assets: pathlib.Path):
    return norm_stats.load_requests(list(names), REPO_ID, assets)


def openpis_pass(request) -> tuple[dict, int]:
    """openpi's compute_norm_stats.py path for one config: the norm stats and the frames they cover."""
    from openpi import transforms
    from openpi.shared import normalize
    from openpi.training import data_loader

    data_config, config = request.data_config, request.config

    class DropStrings(transforms.DataTransformFn):
        def __call__(self, item: dict) -> dict:
            return {key: value for key, value in item.items() if not np.issubdtype(np.asarray(value).dtype, np.str_)}

    dataset = data_loader.TransformedDataset(
        data_loader.create_torch_dataset(data_config, config.model.action_horizon, config.model),
        [*data_config.repack_transforms.inputs, *data_config.data_transforms.inputs, DropStrings()],
    )
    batches = len(dataset) // config.batch_size
    loader = data_loader.TorchDataLoader(
        dataset, local_batch_size=config.batch_size, shuffle=False, num_batches=batches, num_workers=0
    )
    running = {key: normalize.RunningStats() for key in ("state", "actions")}
    for batch in loader:
        for key, stats in running.items():
            stats.update(np.asarray(batch[key]))
    return {key: stats.get_statistics() for key, stats in running.items()}, batches * config.batch_size


def assert_same_stats(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs) == ["state", "actions"]
    for key in theirs:
        for field in ("mean", "std", "q01", "q99"):
            expected, actual = getattr(theirs[key], field), getattr(ours[key], field)
            assert actual.dtype == expected.dtype and actual.shape == expected.shape, (key, field)
            np.testing.assert_array_equal(actual, expected, err_msg=f"{key}.{field}")


def shorter_horizon(request, horizon: int):
    """The request with another action_horizon: another action chunk, so other action statistics."""
    config = dataclasses.replace(
        request.config, model=dataclasses.replace(request.config.model, action_horizon=horizon)
    )
    return dataclasses.replace(request, config=config)


@pytest.mark.parametrize(
    "name, horizon, dataset",
    [
        (BASELINE, None, REPO_ID),
        (TIME_ARMS[0], None, REPO_ID),
        (DISTANCE_ARMS[0], None, REPO_ID),
        (BASELINE, 10, REPO_ID),
        (BASELINE, None, MOVING_ID),
        (DISTANCE_ARMS[1], 10, MOVING_ID),
    ],
)
def test_numbers_equal_openpis_own_pass_bit_for_bit(name, horizon, dataset, norm_stats, home, moving, tmp_path):
    from openpi.shared import normalize

    (request,) = norm_stats.load_requests([name], dataset, tmp_path)
    if horizon is not None:
        request = shorter_horizon(request, horizon)
    group = norm_stats.group_requests([request])[0]
    ours, used = norm_stats.compute_group(group, norm_stats.read_columns(dataset, home / dataset))
    theirs, expected_used = openpis_pass(request)
    assert used == expected_used == 160  # 5 full batches of 32 out of 191 frames, as openpi drops the rest
    assert_same_stats(ours, theirs)
    assert normalize.serialize_json(ours) == normalize.serialize_json(theirs)


def test_a_video_dataset_gives_openpis_numbers_of_the_same_episodes_stored_as_png(norm_stats, home, tmp_path):
    from openpi.shared import normalize

    (request,) = norm_stats.load_requests([TIME_ARMS[1]], VIDEO_ID, tmp_path)
    columns = norm_stats.read_columns(VIDEO_ID, home / VIDEO_ID)
    cameras = {key for key in experiment_configs.BASE_COLUMNS if key.startswith("observation.images.")}
    assert set(columns.placeholders) == cameras
    ours, _ = norm_stats.compute_group(norm_stats.group_requests([request])[0], columns)
    theirs, _ = openpis_pass(norm_stats.load_requests([TIME_ARMS[1]], REPO_ID, tmp_path)[0])
    assert normalize.serialize_json(ours) == normalize.serialize_json(theirs)


def test_configs_with_the_same_data_config_share_one_pass_and_the_dataset_is_read_once(
    norm_stats, home, tmp_path, monkeypatch
):
    from openpi.shared import normalize

    names = (*TIME_ARMS, *DISTANCE_ARMS, BASELINE)
    reads, passes = [], []
    read_columns, compute_group = norm_stats.read_columns, norm_stats.compute_group
    monkeypatch.setattr(norm_stats, "read_columns", lambda *a: reads.append(a) or read_columns(*a))
    monkeypatch.setattr(
        norm_stats, "compute_group", lambda group, c: passes.append(group.names) or compute_group(group, c)
    )
    out = io.StringIO()
    results = norm_stats.compute_all(requests(norm_stats, names, tmp_path), None, out=out)
    assert len(reads) == 1
    # RobotwinInputs carries the progress target, so the time arms, the distance arms and the baseline differ
    assert passes == [list(TIME_ARMS), list(DISTANCE_ARMS), [BASELINE]]
    assert [result.group.names for result in results] == passes
    for name in names:
        path = tmp_path / name / REPO_ID / "norm_stats.json"
        assert path.is_file(), name
        assert f"{name}: {path}" in out.getvalue()
    for group in passes:
        texts = {(tmp_path / name / REPO_ID / "norm_stats.json").read_text() for name in group}
        assert len(texts) == 1, group
    # The arms differ only in their progress settings, which normalisation does not see: all five files agree.
    assert len({(tmp_path / name / REPO_ID / "norm_stats.json").read_text() for name in names}) == 1
    assert f"pass 1 of 3 over {REPO_ID} (160 of 191 frames, 5 batches of 32" in out.getvalue()
    assert f"shared by {', '.join(TIME_ARMS)}" in out.getvalue()
    assert f" s) for {BASELINE}\n" in out.getvalue()
    # openpi's own serialisation, which its training reads back
    path = tmp_path / BASELINE / REPO_ID / "norm_stats.json"
    assert path.read_text() == normalize.serialize_json(results[2].stats)
    assert list(normalize.load(path.parent)) == ["state", "actions"]


def test_a_config_with_another_chunk_batch_or_dataset_gets_its_own_pass(norm_stats, tmp_path):
    (baseline,) = requests(norm_stats, [BASELINE], tmp_path)
    twin = requests(norm_stats, [BASELINE], tmp_path / "twin")[0]
    other_batch = dataclasses.replace(baseline, config=dataclasses.replace(baseline.config, batch_size=16))
    other_data = requests(norm_stats, [BASELINE], tmp_path)[0]
    other_data = dataclasses.replace(
        other_data, data_config=dataclasses.replace(other_data.data_config, repo_id="test/other")
    )
    groups = norm_stats.group_requests([baseline, shorter_horizon(baseline, 10), other_batch, other_data, twin])
    assert [len(group.requests) for group in groups] == [2, 1, 1, 1]
    assert groups[0].requests == [baseline, twin]


def test_horizons_give_other_action_stats_and_the_same_state_stats(norm_stats, home, tmp_path):
    (baseline,) = requests(norm_stats, [BASELINE], tmp_path)
    columns = norm_stats.read_columns(REPO_ID, home / REPO_ID)
    long, _ = norm_stats.compute_group(norm_stats.group_requests([baseline])[0], columns)
    short, _ = norm_stats.compute_group(norm_stats.group_requests([shorter_horizon(baseline, 10)])[0], columns)
    np.testing.assert_array_equal(long["state"].mean, short["state"].mean)
    assert not np.array_equal(long["actions"].std, short["actions"].std)


def test_norm_stats_a_config_has_are_kept_unless_overwrite(norm_stats, tmp_path):
    from openpi.shared import normalize

    path = tmp_path / BASELINE / REPO_ID / "norm_stats.json"
    zeros = normalize.NormStats(mean=np.zeros(14), std=np.zeros(14))
    normalize.save(path.parent, {"state": zeros, "actions": zeros})
    kept = path.read_text()
    out = io.StringIO()
    assert norm_stats.compute_all(requests(norm_stats, [BASELINE], tmp_path), None, out=out) == []
    assert path.read_text() == kept and "has them already" in out.getvalue()
    (result,) = norm_stats.compute_all(requests(norm_stats, [BASELINE], tmp_path), None, overwrite=True, out=out)
    assert result.written == [path] and path.read_text() == normalize.serialize_json(result.stats) != kept
    assert not [p for p in path.parent.iterdir() if p.name != "norm_stats.json"]  # no temporary left


def test_a_damaged_file_is_kept_without_overwrite_and_replaced_with_it(norm_stats, tmp_path):
    from openpi.shared import normalize

    path = tmp_path / BASELINE / REPO_ID / "norm_stats.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"norm_stats": {"state": {"mean": [0.1, ')  # what a killed in-place writer leaves
    assert norm_stats.compute_all(requests(norm_stats, [BASELINE], tmp_path), None, out=io.StringIO()) == []
    (result,) = norm_stats.compute_all(
        requests(norm_stats, [BASELINE], tmp_path), None, overwrite=True, out=io.StringIO()
    )
    assert path.read_text() == normalize.serialize_json(result.stats)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repo-id", "test/missing", BASELINE], "test/missing: no LeRobot dataset here (meta/info.json missing)"),
        (["pi05_robotwin_no_such_config"], "pi05_robotwin_no_such_config"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(argv, message, norm_stats, home, tmp_path, capsys):
    assert norm_stats.main(["--lerobot-home", str(home), "--assets-base-dir", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("norm_stats.py: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_a_parquet_file_shorter_than_its_episode_is_named(norm_stats, home, tmp_path):
    import pyarrow.parquet as pq

    shutil.copytree(home / REPO_ID, tmp_path / REPO_ID)
    path = tmp_path / REPO_ID / "data" / "chunk-000" / "episode_000001.parquet"
    pq.write_table(pq.read_table(path).slice(0, 10), path)
    with pytest.raises(norm_stats.NormStatsError, match=f"^{path}: 10 rows, meta/episodes.jsonl says [0-9]+$"):
        norm_stats.read_columns(REPO_ID, tmp_path / REPO_ID)


def test_a_dataset_smaller_than_the_batch_is_refused(norm_stats, home, tmp_path):
    (request,) = requests(norm_stats, [BASELINE], tmp_path)
    request = dataclasses.replace(request, config=dataclasses.replace(request.config, batch_size=500))
    with pytest.raises(norm_stats.NormStatsError, match="191 frames, fewer than .* batch size 500"):
        norm_stats.compute_all([request], home, out=io.StringIO())


@pytest.mark.slow
def test_the_cli_with_demo_writes_what_the_functions_compute(norm_stats, home, tmp_path):
    from openpi.shared import normalize

    data_home = tmp_path / "openpi-data"
    data_home.mkdir()
    env = {**os.environ, "OPENPI_DATA_HOME": str(data_home), "PYTHONPATH": ""}
    names = [BASELINE, TIME_ARMS[0]]
    argv = ["--demo", "--repo-id", REPO_ID, "--lerobot-home", str(home), "--assets-base-dir", str(tmp_path / "a")]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, *names], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"pass 1 of 2 over {REPO_ID} (160 of 191 frames, 5 batches of 32" in done.stdout
    assert not list(data_home.iterdir())  # the stand-in tokenizer stayed in a temporary folder
    expected = norm_stats.compute_all(requests(norm_stats, names, tmp_path / "b"), home, out=io.StringIO())
    for name, result in zip(names, expected, strict=True):
        path = tmp_path / "a" / name / REPO_ID / "norm_stats.json"
        assert path.read_text() == normalize.serialize_json(result.stats)


def assert_same_columns(ours, theirs) -> None:
    assert (ours.fps, ours.tasks, list(ours.values)) == (theirs.fps, theirs.tasks, list(theirs.values))
    for key, values in theirs.values.items():
        assert ours.values[key].dtype == values.dtype, key
        np.testing.assert_array_equal(ours.values[key], values, err_msg=key)
    np.testing.assert_array_equal(ours.episode_start, theirs.episode_start)
    np.testing.assert_array_equal(ours.episode_end, theirs.episode_end)
    assert {key: (a.shape, a.dtype) for key, a in ours.placeholders.items()} == {
        key: (a.shape, a.dtype) for key, a in theirs.placeholders.items()
    }


def test_a_v3_dataset_gives_the_numbers_of_the_same_episodes_in_v21(norm_stats, home, tmp_path):
    from openpi.shared import normalize

    assert [path.name for path in (home / V3_ID / "data").rglob("*.parquet")] == ["file-000.parquet"]
    v21 = norm_stats.read_columns(REPO_ID, home / REPO_ID)
    v30 = norm_stats.read_columns(V3_ID, home / V3_ID)
    # three episodes of unequal length in one file: each frame's episode bounds as v2.1's one file per episode give
    assert len(np.unique(v21.episode_start)) == EPISODES
    assert_same_columns(v30, v21)
    for name in (BASELINE, DISTANCE_ARMS[1]):
        (theirs,) = norm_stats.load_requests([name], REPO_ID, tmp_path)
        (ours,) = norm_stats.load_requests([name], V3_ID, tmp_path)
        expected, used = norm_stats.compute_group(norm_stats.group_requests([theirs])[0], v21)
        stats, v3_used = norm_stats.compute_group(norm_stats.group_requests([ours])[0], v30)
        assert v3_used == used == 160
        assert normalize.serialize_json(stats) == normalize.serialize_json(expected), name


def test_a_v3_dataset_split_over_two_data_files_reads_as_one(norm_stats, home, tmp_path):
    import pyarrow.parquet as pq

    shutil.copytree(home / V3_ID, tmp_path / V3_ID)
    path = tmp_path / V3_ID / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    second = int(np.flatnonzero(table.column("episode_index").to_numpy() == 1)[0])
    pq.write_table(table.slice(0, second), path)
    (path.parent.parent / "chunk-001").mkdir()
    pq.write_table(table.slice(second), path.parent.parent / "chunk-001" / "file-000.parquet")
    assert_same_columns(norm_stats.read_columns(V3_ID, tmp_path / V3_ID), norm_stats.read_columns(V3_ID, home / V3_ID))


def test_a_v3_data_file_shorter_than_its_episodes_is_named(norm_stats, home, tmp_path):
    import pyarrow.parquet as pq

    shutil.copytree(home / V3_ID, tmp_path / V3_ID)
    path = tmp_path / V3_ID / "data" / "chunk-000" / "file-000.parquet"
    pq.write_table(pq.read_table(path).slice(0, 100), path)
    data = tmp_path / V3_ID / "data"
    with pytest.raises(norm_stats.NormStatsError, match=f"^{data}: 100 rows, meta/episodes lists 191 frames$"):
        norm_stats.read_columns(V3_ID, tmp_path / V3_ID)
