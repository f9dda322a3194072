"""Runs the manipulation-progress experiments of the openpi patch, after proving that the whole path works:
preflight -> held-out split -> conversion (--verify) -> dataset field check -> the columns openpi's configs read ->
norm stats -> training, each config logged to its own file, closed by a summary table -> evaluation of every trained
config on the held-out episodes, closed by its results table. The trainings run one after another, side by side on
groups of GPUs of one machine (--gpus-per-run), or as SLURM jobs (--slurm).

Usage: bash run_experiments.sh [--root DIR]... [--max-episodes-per-task N] [--repo-id ID] [--exp-name NAME]
                               [--configs A,B,...] [--no-baseline] [--keep-going] [--force] [--reconvert] [--dry-run]
                               [--log-dir DIR] [--heldout N] [--no-eval | --eval-only] [--eval-frames N]
                               [--gpus-per-run N] [--batch-size B] [--sim-eval ROBOTWIN_DIR [--sim-trials N]] [--seeds N]
                               [--slurm [--slurm-args ARGS] [--slurm-prep-args ARGS] [--slurm-train-args ARGS]]
                               [--status] [--cancel] [--stage STAGE] [--demo [--out DIR] [--steps N]] [-h|--help]
                               [--folds K [--fold F]] [--format v2.1|v3.0]

  --root DIR        RoboTwin episodes in either layout: a legacy demo_clean folder or an XPolicyLab
                    <task>/aloha_agilex folder, or the data/ folder in it (robotwin_episodes.py reads both)
                    (default: ${ROBOTWIN_DATA:-data}/place_dual_shoes/demo_clean;
                    with --demo: OUT/samples/place_dual_shoes/demo_clean, generated when missing); repeated or
                    a quoted glob ('data/*/demo_clean'): several tasks in one dataset, the split made per task,
                    converted with --split LOG_DIR/split.next.json --part train|heldout (docs/run_experiments.md)
  --max-episodes-per-task N  the first N episodes of each root only (before the split)
  --repo-id ID      LeRobot dataset id, exported as OPENPI_ROBOTWIN_REPO_ID for the configs
                    (default: robotwin/place_dual_shoes)
  --exp-name NAME   openpi experiment name (default: the last part of the repo id)
  --configs LIST    comma-separated configs to train, exactly these, in this order: any name in
                    openpi_patch/experiment_configs.py, the ablations included
                    (default: the four progress configs, then pi05_robotwin_baseline)
  --no-baseline     leave pi05_robotwin_baseline out of the default configs
  --with-baseline   the default, still accepted so that older command lines work
  --keep-going      go on with the next config after a failed one (default: stop the sequence)
  --force           train configs that finished in an earlier run again (default: skip them)
  --reconvert       convert again (--overwrite) although the dataset exists (default: convert only when missing)
  --dry-run         print every command, run none
  --log-dir DIR     per-config logs, finish markers and split.json (default: experiment_logs/NAME; --demo: OUT/logs)
  --heldout N       hold out the last N episodes (default: 10% of them, at least 1): the training episodes go to
                    the dataset ID, the held-out ones to ID_heldout, which no training reads; 0 holds out none
                    (then only with --no-eval). The split is printed and recorded in LOG_DIR/split.json
  --no-eval         skip the evaluation after training
  --eval-only       evaluate the existing checkpoints of the configs; no training
  --eval-frames N   evaluate an evenly spaced subset of N held-out frames (default: all)
                    The evaluation writes LOG_DIR/evaluation (--demo: OUT/evaluation): results.json, results.md,
                    plots; see openpi_patch/evaluate.py
                    After the trainings, before the evaluation, every config that trained or finished before
                    (--eval-only: every config) gets the deploy files RoboTwin's policy/pi05 and XPolicyLab's Pi_05 load, in
                    LOG_DIR/deploy/CONFIG/NAME (openpi_patch/sim_eval.py deploy; not with --demo, whose small CPU
                    checkpoints RoboTwin cannot load; a failed deploy makes the exit status 1)
  --seeds N         train each config N times, with seeds 42, 43, ... (openpi's --seed=S), each seed a run of its
                    own: experiment name NAME-seedS, log and finish marker LOG_DIR/CONFIG-seedS.{log,done}, its own
                    SLURM job (--seed S, with --stage train: that seed only); the evaluation gets every seed's
                    experiment name (default: 1, one run per config under NAME, as before)
  --folds K         cross-validation instead of one held-out split: the episodes (counted across tasks) dealt
                    round-robin into K folds, and the whole sequence run for fold 0, 1, ... in turn, each holding
                    out its fold: datasets ID_foldF and ID_foldF_heldout, experiment names NAME-foldF[-seedS], logs
                    and split.json in LOG_DIR/foldF, its evaluation in EVAL_DIR/foldF; then the folds' evaluations
                    pooled into EVAL_DIR (every episode evaluated once, by the fold that held it out; --stage pool
                    pools only). Not with --heldout or --sim-eval. With --slurm: every fold's jobs, then one pooling
                    the folds after their evaluations
  --fold F          with --folds K: fold F only (0 to K-1), not pooled
  --sim-eval DIR    then RoboTwin's closed-loop evaluation of each deployed config in the RoboTwin checkout DIR
                    (sim_eval.py run, the same environment seeds for every arm; log LOG_DIR/sim_eval_CONFIG.log),
                    collected into EVAL_DIR/sim_results.{json,md}, the table printed last; SIM_PYTHON is the
                    checkout's interpreter (default: python). Not with --demo. With --slurm: one job per run
                    (--stage sim-eval: its deploy and sim_eval.py run, one GPU) after its training, then one
                    collecting them (--stage sim-collect) after all of them; the evaluation job deploys nothing
  --sim-trials N    trials per config for --sim-eval (default: 100, RoboTwin's own)
  --demo            no GPU, no weights: the same sequence on the sample episodes with openpi from the installed
                    package, patched in a temporary copy, small model variants trained on the CPU
  --out DIR         --demo only: where everything goes (default: demo_output)
  --steps N         --demo only: training steps per config (default: train_demo.py's, 240: about 2 minutes each)
  --gpus-per-run N  cut the visible GPUs (CUDA_VISIBLE_DEVICES, else nvidia-smi -L) into groups of N and train
                    one config per group at the same time, each with CUDA_VISIBLE_DEVICES set to its group and
                    openpi's --fsdp-devices=N; with --slurm, each training job asks for N GPUs
                    (default: one training at a time on every visible GPU, openpi's own --fsdp-devices)
  --batch-size B    openpi's global batch size for every training (default: the config's); a warning when B is
                    not a multiple of the GPUs per run, which openpi's train.py refuses
  --slurm           submit SLURM jobs instead of running here (sbatch --parsable): a CPU job doing everything
                    before training, then one training job per unfinished config once that job succeeded; the
                    job scripts are written to LOG_DIR/slurm/NAME.sbatch, the jobs to LOG_DIR/slurm/jobs.json
  --slurm-args ARGS        added to every sbatch call, split on spaces (partition, account, time, qos, ...)
  --slurm-prep-args ARGS   added to the preparation job's sbatch call only
  --slurm-train-args ARGS  added to the training jobs' sbatch calls only (for instance --gres=gpu:h100:2)
  --status          show the recorded SLURM jobs' states (squeue, else sacct) and each config's finish marker
  --cancel          cancel the recorded SLURM jobs that are still queued or running (scancel)
  --stage STAGE     run one part only, as the SLURM jobs do: prepare (everything before training, no GPU), train,
                    evaluate (the evaluation, no deploy), sim-eval (deploy and simulator run of the configs' runs),
                    sim-collect (the simulator table), pool (with --folds: the folds' evaluations pooled)
  --sim-task TASK/TASK_CONFIG  with --sim-eval: deploy and evaluate that task of the roots only (a simulator job's
                    one; default: every task). With several tasks each run is deployed and evaluated once per task,
                    into LOG_DIR/deploy/TASK/TASK_CONFIG/CONFIG/NAME and LOG_DIR/sim_eval/TASK/TASK_CONFIG, logged to
                    LOG_DIR/sim_eval_RUN.TASK.TASK_CONFIG.log (--slurm: one job each); one task keeps the paths above
  --format F        the LeRobot format of both datasets, converted with the converter's --format F and refused by
                    the field check in any other: v2.1 (default) for an openpi whose lerobot reads v2.x (openpi's
                    pinned rev, lerobot 0.3.x), v3.0 for one with lerobot >= 0.4 (XPolicyLab's Pi_05, lerobot
                    0.4.4; the converter writes it under .venv-lerobot04, `bash bootstrap.sh lerobot-v3`). A kept
                    dataset of the other format is refused: --reconvert converts it again. Not with --demo, whose
                    installed openpi reads v2.1 only

Environment:
  OPENPI_DIR        openpi checkout with the patch applied (required without --demo)
  PYTHON            interpreter for the converter and the checks (default: .venv/bin/python next to this script)
  OPENPI_PYTHON     interpreter that imports the patched openpi, run in OPENPI_DIR, to ask the configs which
                    dataset columns they read (default: "uv run python"; --demo: PYTHON on a patched copy)
  TRAIN_CMD         training command, run in OPENPI_DIR, given "<config> --exp-name=NAME --overwrite"
                    (default: "uv run scripts/train.py";
                    --demo: "$PYTHON openpi_patch/train_demo.py --out OUT/openpi --steps N"); split on spaces
  EVAL_CMD          evaluation command, run in OPENPI_DIR (default: "OPENPI_PYTHON openpi_patch/evaluate.py";
                    --demo: "$PYTHON openpi_patch/evaluate.py --demo --openpi-out OUT/openpi"); its plots are
                    drawn after it by "$PYTHON openpi_patch/evaluate.py --plots-only"
  NORM_STATS_CMD    norm stats command, run once in OPENPI_DIR before the first training, given "[--overwrite]
                    CONFIG..." (every unfinished config; --overwrite when this run converted the dataset)
                    (default: "OPENPI_PYTHON openpi_patch/norm_stats.py --repo-id REPO_ID"; --demo: "$PYTHON
                    openpi_patch/norm_stats.py --demo --repo-id REPO_ID --lerobot-home OUT/lerobot
                    --assets-base-dir OUT/openpi/assets")
  XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory JAX may take (default: 0.9)
  HF_LEROBOT_HOME   where the dataset is written and read (default: lerobot's, ~/.cache/huggingface/lerobot;
                    --demo: OUT/lerobot)

A config counts as finished when LOG_DIR/<config>.done exists, written only after its training exited with 0.
With --gpus-per-run, a failed config stops further starts (--keep-going starts them) while the running ones finish.
Exit status: 0 when every config trained or was finished before and the evaluation ran, 1 on a failure (the
configs that trained are still evaluated), 2 on a usage error, 130 when interrupted (Ctrl-C stops the running
trainings, then names the configs that remain).
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

SCRIPT_DIR = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPT_DIR))

import atomic_files  # noqa: E402
from openpi_patch import experiment_configs  # noqa: E402

PROG = "run_experiments.sh"
LAUNCHER = SCRIPT_DIR / "run_experiments.sh"
# Run by OPENPI_PYTHON (the interpreter that imports the patched openpi), which this one need not be.
COLUMNS_CHECK = SCRIPT_DIR / "openpi_patch" / "config_columns.py"
DEFAULT_REPO_ID = "robotwin/place_dual_shoes"
TASK_LAYOUT = "place_dual_shoes/demo_clean"
# The LeRobot dataset stores images as PNG while RoboTwin stores JPEG: 2.1 times the episodes' size on the textured
# samples (three of four cameras); ask for twice that.
DATASET_SIZE_FACTOR = 4
# What openpi's checkpoints of one training take on disk, for the preflight. One checkpoint of pi05 (3.35 B
# parameters in float32: the parameters, AdamW's two moments and the EMA copy, 4 x 13.4 GB) is about 50 GiB. openpi
# keeps every checkpoint whose step is a multiple of keep_period (5,000 by default) and the latest one, so a run of
# the configs' 20,000 steps holds 20,000 / 5,000 = 4 kept ones plus the latest while it trains: 5 at its peak.
CHECKPOINT_GIB = 50
TRAIN_STEPS = 20000
KEEP_PERIOD = 5000
# Seconds a stopped training gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 30
# Seconds between two looks at a log shown on the terminal.
TAIL_S = 0.2
# The environment a SLURM job script sets, so that it runs alike when submitted again by hand from another shell.
JOB_ENV_VARS = (
    "OPENPI_DIR",
    "PYTHON",
    "OPENPI_PYTHON",
    "TRAIN_CMD",
    "NORM_STATS_CMD",
    "EVAL_CMD",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "HF_LEROBOT_HOME",
    "HF_DATASETS_CACHE",
    "ROBOTWIN_DATA",
    "SIM_PYTHON",
)
# States in which a SLURM job has ended (squeue keeps some for a while, sacct keeps them all).
SLURM_ENDED_STATES = frozenset(
    "BOOT_FAIL CANCELLED COMPLETED DEADLINE FAILED NODE_FAIL OUT_OF_MEMORY PREEMPTED TIMEOUT unknown".split()
)
HELDOUT_SUFFIX = "_heldout"
# --folds K: fold F trains on ID_foldF (its held-out part: ID_foldF_heldout) under NAME-foldF, logged in LOG_DIR/foldF.
FOLD_SUFFIX = "_fold"
# The SLURM jobs a --slurm call submitted, in LOG_DIR/slurm: what --status and --cancel read.
JOBS_FILE = "jobs.json"
# RoboTwin's eval_policy.py runs 100 trials.
DEFAULT_SIM_TRIALS = 100
# The seed of the first run of each config with --seeds N (openpi's own default seed), then 43, 44, ...
FIRST_SEED = 42
PLAIN_WORD = re.compile(r"[A-Za-z0-9_./,:=@%+-]+")
XPOLICYLAB_FILE = re.compile(r"episode_\d{7}\.hdf5")
FINISHED_RESULTS = ("ok", "skipped (finished)")
# The stages after the trainings, each run alone by a SLURM job: the evaluation (without the deploys, which the
# simulator jobs make), one run's deploy and RoboTwin evaluation, and the table of all of those.
LATER_STAGES = ("evaluate", "sim-eval", "sim-collect")


class UsageError(Exception):
    """A bad flag or flag combination: exit status 2."""


class Failure(Exception):
    """A step failed; its message (if any) is printed as one line and the exit status is 1."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived while commands ran."""


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def say(line: str = "") -> None:
    print(line, flush=True)


def quote_words(words: list[str] | tuple[str, ...]) -> str:
    """Words the way a shell reads them back, quoting only those that need it."""
    return " ".join(word if PLAIN_WORD.fullmatch(word) else shlex.quote(word) for word in words)


def show_cmd(words: list[str]) -> None:
    say(f"+ {quote_words(words)}")


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def absolute(path: str | pathlib.Path) -> str:
    """realpath -m: the absolute path with links resolved, whether or not it exists."""
    return os.path.realpath(os.path.abspath(path))


def default_python() -> str:
    venv = SCRIPT_DIR / ".venv" / "bin" / "python"
    return str(venv) if os.access(venv, os.X_OK) else "python3"


def config_roles() -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """The progress arms, the baseline and every config --configs accepts, from openpi_patch/experiment_configs.py."""
    return (
        tuple(experiment_configs.PROGRESS_ARMS),
        experiment_configs.BASELINE,
        tuple(experiment_configs.KNOWN_CONFIGS),
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """One training: a config trained under one experiment name (with --seeds N > 1, one per seed), logged to
    LOG_DIR/<name>.log."""

    config: str
    exp_name: str
    log_dir: pathlib.Path
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.config if self.seed is None else f"{self.config}-seed{self.seed}"

    @property
    def log(self) -> pathlib.Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def marker(self) -> pathlib.Path:
        return self.log_dir / f"{self.name}.done"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every flag and environment variable the launcher reads, checked once by settings_from()."""

    root: str  # the first --root as given (split.json records one root so)
    roots: tuple[str, ...]  # every --root as given, globs unexpanded
    max_per_task: int | None
    repo_id: str
    exp_name: str
    log_dir: str
    out: str
    steps: str
    configs: tuple[str, ...]
    known_configs: tuple[str, ...]
    keep_going: bool
    force: bool
    reconvert: bool
    dry_run: bool
    demo: bool
    gpus_per_run: int | None
    batch_size: int | None
    slurm: bool
    status: bool
    cancel: bool
    stage: str
    heldout: int | None
    evaluate: bool
    eval_only: bool
    eval_frames: str
    sim_eval: str
    sim_trials: int
    sim_task: str
    seeds: int
    seed: int | None
    folds: int | None
    fold: int | None
    job_args: tuple[str, ...]
    slurm_args: tuple[str, ...]
    slurm_prep_args: tuple[str, ...]
    slurm_train_args: tuple[str, ...]
    python: str
    openpi_dir: str
    workdir: str
    train_cmd: tuple[str, ...]
    openpi_python: tuple[str, ...]
    norm_stats_cmd: tuple[str, ...]
    eval_cmd: tuple[str, ...]
    eval_dir: str
    dataset: str
    heldout_dataset: str
    slurm_dir: str
    env: dict[str, str]
    dataset_format: str  # the LeRobot format both datasets are converted to and checked in (--format)
    # --folds K: the trainings of the folds after this one, whose checkpoints will join this fold's on the disk
    later_trainings: int = 0

    @property
    def runs(self) -> tuple[Run, ...]:
        """The trainings, config by config and seed by seed (--seed: that seed's only)."""
        log_dir = pathlib.Path(self.log_dir)
        if self.seeds == 1:
            return tuple(Run(config, self.exp_name, log_dir) for config in self.configs)
        seeds = [self.seed] if self.seed is not None else range(FIRST_SEED, FIRST_SEED + self.seeds)
        return tuple(
            Run(config, f"{self.exp_name}-seed{seed}", log_dir, seed) for config in self.configs for seed in seeds
        )

    @property
    def run_configs(self) -> list[str]:
        """The configs of the runs, each once, in order."""
        return list(dict.fromkeys(run.config for run in self.runs))

    @property
    def trains_here(self) -> bool:
        """Whether this call trains or evaluates on the training GPUs (rather than submitting jobs, preparing, or
        running a simulator stage, whose job has one GPU and sim_eval.py its own render check)."""
        return not self.slurm and self.stage in ("", "train", "evaluate")

    def is_finished(self, run: Run) -> bool:
        return not self.force and run.marker.is_file()


# flag -> (setting, message when its value is missing, passed on to SLURM jobs); None as message: a switch.
FLAGS: dict[str, tuple[str, str | None, bool]] = {
    "--root": ("root", "--root needs a folder", True),
    "--max-episodes-per-task": ("max_per_task", "--max-episodes-per-task needs a number", True),
    "--repo-id": ("repo_id", "--repo-id needs an id", True),
    "--exp-name": ("exp_name", "--exp-name needs a name", True),
    "--configs": ("configs", "--configs needs a comma-separated list", False),
    "--log-dir": ("log_dir", "--log-dir needs a folder", True),
    "--out": ("out", "--out needs a folder", True),
    "--steps": ("steps", "--steps needs a number", True),
    "--gpus-per-run": ("gpus_per_run", "--gpus-per-run needs a number", True),
    "--batch-size": ("batch_size", "--batch-size needs a number", True),
    "--slurm-args": ("slurm_args", "--slurm-args needs sbatch options", False),
    "--slurm-prep-args": ("slurm_prep_args", "--slurm-prep-args needs sbatch options", False),
    "--slurm-train-args": ("slurm_train_args", "--slurm-train-args needs sbatch options", False),
    "--stage": ("stage", "--stage needs prepare, train, evaluate, sim-eval, sim-collect or pool", False),
    "--heldout": ("heldout", "--heldout needs a number", True),
    "--eval-frames": ("eval_frames", "--eval-frames needs a number", True),
    "--sim-eval": ("sim_eval", "--sim-eval needs a RoboTwin checkout", False),
    "--sim-trials": ("sim_trials", "--sim-trials needs a number", False),
    "--seeds": ("seeds", "--seeds needs a number", True),
    "--seed": ("seed", "--seed needs a number", False),
    "--folds": ("folds", "--folds needs a number", True),
    "--fold": ("fold", "--fold needs a number", True),
    "--no-baseline": ("no_baseline", None, True),
    "--with-baseline": ("with_baseline", None, False),
    "--no-eval": ("no_eval", None, True),
    "--eval-only": ("eval_only", None, False),
    "--keep-going": ("keep_going", None, True),
    "--force": ("force", None, True),
    "--reconvert": ("reconvert", None, True),
    "--dry-run": ("dry_run", None, False),
    "--demo": ("demo", None, True),
    "--slurm": ("slurm", None, False),
    "--status": ("status", None, False),
    "--cancel": ("cancel", None, False),
    "--sim-task": ("sim_task", "--sim-task needs TASK/TASK_CONFIG", False),
    "--format": ("dataset_format", "--format needs v2.1 or v3.0", True),
}


def usage() -> str:
    return __doc__[__doc__.index("Usage:") :]


def read_flags(argv: list[str]) -> tuple[dict[str, str], list[str], list[str]]:
    """The flags given, as setting -> value ("1" for a switch), every --root given (the one repeated flag), and the
    words passed on to SLURM jobs."""
    values: dict[str, str] = {}
    roots: list[str] = []
    job_args: list[str] = []
    i = 0
    while i < len(argv):
        flag = argv[i]
        if flag in ("-h", "--help"):
            sys.stdout.write(usage())
            raise SystemExit(0)
        if flag not in FLAGS:
            raise UsageError(f"unknown argument '{flag}' (see --help)")
        setting, missing, passed_on = FLAGS[flag]
        words = [flag]
        if missing is None:
            values[setting] = "1"
            if setting == "with_baseline":
                values.pop("no_baseline", None)
            if setting == "no_baseline":
                values.pop("with_baseline", None)
        else:
            if i + 1 >= len(argv) or not argv[i + 1]:
                raise UsageError(missing)
            values[setting] = argv[i + 1]
            words.append(argv[i + 1])
            if setting == "root":
                roots.append(argv[i + 1])
        if passed_on:
            job_args += words
        i += len(words)
    return values, roots, job_args


def positive(flag: str, value: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]*", value):
        raise UsageError(f"{flag} wants a positive whole number, got '{value}'")
    return int(value)


def cross_validation(flags: dict[str, str], stage: str) -> tuple[int | None, int | None]:
    """--folds K and --fold F, checked against the flags they exclude."""
    if "folds" not in flags:
        if "fold" in flags or stage == "pool":
            raise UsageError(f"{'--fold' if 'fold' in flags else '--stage pool'} goes with --folds K")
        return None, None
    folds = positive("--folds", flags["folds"])
    if folds < 2:
        raise UsageError("--folds wants 2 or more folds")
    if "heldout" in flags:
        raise UsageError("--folds holds out each fold in turn, --heldout the last episodes: give one of them")
    if "sim_eval" in flags:
        raise UsageError(
            "--sim-eval evaluates in new simulator scenes, where holding out episodes changes nothing: "
            "give it without --folds (--seeds gives its trainings' spread)"
        )
    if "fold" not in flags:
        return folds, None
    fold = flags["fold"]
    if not re.fullmatch(r"[0-9]+", fold) or int(fold) >= folds:
        raise UsageError(f"--fold wants a fold from 0 to {folds - 1}, got '{fold}'")
    if stage == "pool":
        raise UsageError("--stage pool pools every fold: give it without --fold")
    return folds, int(fold)


def dataset_format_from(value: str | None, demo: bool) -> str:
    """--format checked against the formats the converter writes (its first one the default)."""
    import convert_robotwin_democlean_to_lerobot as converter

    if value is None:
        return converter.FORMATS[0]
    if value not in converter.FORMATS:
        raise UsageError(f"--format wants {' or '.join(converter.FORMATS)}, got '{value}'")
    if demo and value != converter.FORMATS[0]:
        raise UsageError(f"--format {value}: --demo trains with the installed openpi, whose lerobot reads v2.1 only")
    return value


def settings_from(argv: list[str], environ: dict[str, str]) -> Settings:
    """Reads the flags and the environment into Settings; every usage error is raised here, before any work."""
    flags, roots, job_args = read_flags(argv)
    get = flags.get
    steps = get("steps", "")
    if steps:
        positive("--steps", steps)
    gpus_per_run = positive("--gpus-per-run", get("gpus_per_run")) if get("gpus_per_run") else None
    batch_size = positive("--batch-size", get("batch_size")) if get("batch_size") else None
    max_per_task = positive("--max-episodes-per-task", get("max_per_task")) if get("max_per_task") else None
    sim_trials = positive("--sim-trials", get("sim_trials", str(DEFAULT_SIM_TRIALS)))
    sim_eval, demo, slurm, stage = get("sim_eval", ""), "demo" in flags, "slurm" in flags, get("stage", "")
    if not sim_eval and sim_trials != DEFAULT_SIM_TRIALS:
        raise UsageError("--sim-trials goes with --sim-eval")
    if get("sim_task") and (not sim_eval or slurm):
        raise UsageError("--sim-task goes with --sim-eval, and not with --slurm, which submits a job per task")
    if demo and sim_eval:
        raise UsageError(
            "--sim-eval evaluates in RoboTwin's simulator, which cannot load the demo's small CPU checkpoints"
        )
    if demo and gpus_per_run:
        raise UsageError("--gpus-per-run cuts GPUs into groups, and --demo trains on the CPU")
    if stage not in ("", "prepare", "train", *LATER_STAGES, "pool"):
        raise UsageError(f"--stage wants prepare, train, evaluate, sim-eval, sim-collect or pool, got '{stage}'")
    if stage.startswith("sim-") and not sim_eval:
        raise UsageError(f"--stage {stage} goes with --sim-eval")
    if slurm and stage:
        raise UsageError("--stage runs one part here, and --slurm submits every part as jobs: give one of them")
    if not slurm and any(get(key) for key in ("slurm_args", "slurm_prep_args", "slurm_train_args")):
        raise UsageError("--slurm-args, --slurm-prep-args and --slurm-train-args go with --slurm")
    heldout = get("heldout")
    if heldout is not None and not re.fullmatch(r"[0-9]+", heldout):
        raise UsageError(f"--heldout wants a whole number of episodes, got '{heldout}'")
    eval_frames = get("eval_frames", "")
    if eval_frames and not re.fullmatch(r"[1-9][0-9]*", eval_frames):
        raise UsageError(f"--eval-frames wants a positive whole number, got '{eval_frames}'")
    evaluate, eval_only = "no_eval" not in flags, "eval_only" in flags or stage in LATER_STAGES
    if "eval_only" in flags and not evaluate:
        raise UsageError("--eval-only and --no-eval exclude each other")
    if heldout is not None and int(heldout) == 0 and evaluate:
        raise UsageError("--heldout 0 leaves nothing to evaluate on: add --no-eval")
    folds, fold = cross_validation(flags, stage)
    seeds = positive("--seeds", get("seeds", "1"))
    seed = positive("--seed", get("seed")) if get("seed") else None
    if seed is not None and not (seeds > 1 and seed in range(FIRST_SEED, FIRST_SEED + seeds)):
        raise UsageError(f"--seed {seed}: --seeds {seeds} trains seeds {FIRST_SEED}-{FIRST_SEED + seeds - 1}")

    python = environ.get("PYTHON") or default_python()
    arms, baseline, known = config_roles()
    configs = arms if "no_baseline" in flags else (*arms, baseline)
    if get("configs"):
        configs = tuple(get("configs").split(","))
    for config in configs:
        if config not in known:
            raise UsageError(f"unknown config '{config}'; known: {' '.join(known)}")

    env = dict(environ)
    repo_id = get("repo_id", DEFAULT_REPO_ID)
    exp_name = get("exp_name") or repo_id.rsplit("/", 1)[-1]
    out = absolute(get("out", "demo_output")) if demo else get("out", "demo_output")
    log_dir = get("log_dir") or (f"{out}/logs" if demo else f"experiment_logs/{exp_name}")
    eval_dir = f"{out}/evaluation" if demo else f"{log_dir}/evaluation"
    if fold is not None:
        # one fold is a run of its own: its datasets, experiment names, logs and evaluation
        repo_id, exp_name = f"{repo_id}{FOLD_SUFFIX}{fold}", f"{exp_name}-fold{fold}"
        log_dir, eval_dir = f"{log_dir}/fold{fold}", f"{eval_dir}/fold{fold}"
    openpi_dir = environ.get("OPENPI_DIR", "")
    script = str(SCRIPT_DIR)
    if demo:
        roots = roots or [f"{out}/samples/{TASK_LAYOUT}"]
        env["HF_LEROBOT_HOME"] = f"{out}/lerobot"
        env["HF_DATASETS_CACHE"] = f"{out}/hf_datasets_cache"
        workdir = script
        train_cmd = (
            environ.get("TRAIN_CMD") or f"{python} {script}/openpi_patch/train_demo.py --out {out}/openpi"
        ).split()
        if not environ.get("TRAIN_CMD") and steps:
            train_cmd += ["--steps", steps]
        openpi_python = [python]
        norm_stats_cmd = (
            environ["NORM_STATS_CMD"].split()
            if environ.get("NORM_STATS_CMD")
            else [python, f"{script}/openpi_patch/norm_stats.py", "--demo", "--repo-id", repo_id, "--lerobot-home",
                  f"{out}/lerobot", "--assets-base-dir", f"{out}/openpi/assets"]
        )  # fmt: skip
        eval_cmd = (environ.get("EVAL_CMD") or f"{python} {script}/openpi_patch/evaluate.py --demo").split()
        if not environ.get("EVAL_CMD"):
            eval_cmd += ["--openpi-out", f"{out}/openpi"]
    else:
        roots = roots or [f"{environ.get('ROBOTWIN_DATA') or 'data'}/{TASK_LAYOUT}"]
        cache = (
            environ.get("HF_HOME")
            or f"{environ.get('XDG_CACHE_HOME') or environ.get('HOME', '') + '/.cache'}/huggingface"
        )
        env["HF_LEROBOT_HOME"] = environ.get("HF_LEROBOT_HOME") or f"{cache}/lerobot"
        workdir = openpi_dir or "$OPENPI_DIR"
        train_cmd = (environ.get("TRAIN_CMD") or "uv run scripts/train.py").split()
        openpi_python = (environ.get("OPENPI_PYTHON") or "uv run python").split()
        norm_stats_cmd = (
            environ["NORM_STATS_CMD"].split()
            if environ.get("NORM_STATS_CMD")
            else [*openpi_python, f"{script}/openpi_patch/norm_stats.py", "--repo-id", repo_id]
        )
        eval_cmd = (
            environ["EVAL_CMD"].split()
            if environ.get("EVAL_CMD")
            else [*openpi_python, f"{script}/openpi_patch/evaluate.py"]
        )
    env["PYTHON"] = python
    env["OPENPI_ROBOTWIN_REPO_ID"] = repo_id
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") or "0.9"
    lerobot_home = env["HF_LEROBOT_HOME"]
    return Settings(
        root=roots[0],
        roots=tuple(roots),
        max_per_task=max_per_task,
        repo_id=repo_id,
        exp_name=exp_name,
        log_dir=log_dir,
        out=out,
        steps=steps,
        configs=configs,
        known_configs=known,
        keep_going="keep_going" in flags,
        force="force" in flags,
        reconvert="reconvert" in flags,
        dry_run="dry_run" in flags,
        demo=demo,
        gpus_per_run=gpus_per_run,
        batch_size=batch_size,
        slurm=slurm,
        status="status" in flags,
        cancel="cancel" in flags,
        stage=stage,
        heldout=None if heldout is None else int(heldout),
        evaluate=evaluate,
        eval_only=eval_only,
        eval_frames=eval_frames,
        sim_eval=sim_eval,
        sim_trials=sim_trials,
        sim_task=get("sim_task", ""),
        seeds=seeds,
        seed=seed,
        folds=folds,
        fold=fold,
        job_args=tuple(job_args),
        slurm_args=tuple(get("slurm_args", "").split()),
        slurm_prep_args=tuple(get("slurm_prep_args", "").split()),
        slurm_train_args=tuple(get("slurm_train_args", "").split()),
        python=python,
        openpi_dir=openpi_dir,
        workdir=workdir,
        train_cmd=tuple(train_cmd),
        openpi_python=tuple(openpi_python),
        norm_stats_cmd=tuple(norm_stats_cmd),
        eval_cmd=tuple(eval_cmd),
        eval_dir=eval_dir,
        dataset=f"{lerobot_home}/{repo_id}",
        heldout_dataset=f"{lerobot_home}/{repo_id}{HELDOUT_SUFFIX}",
        # Absolute, as the job scripts and the sbatch commands they keep may be used from anywhere.
        slurm_dir=absolute(f"{log_dir}/slurm"),
        env=env,
        dataset_format=dataset_format_from(get("dataset_format"), demo),
    )


# --- the one runner of child commands -------------------------------------------------------------------------------


def exit_status(wait_status: int) -> int:
    """The exit status a shell reports: the code, or 128 + the signal that ended the process."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


@dataclasses.dataclass
class Child:
    """A started command: its own process group, its log, and the thread showing that log (if any)."""

    process: subprocess.Popen
    log: pathlib.Path
    started: float
    done: threading.Event
    display: threading.Thread | None


class Runner:
    """Starts commands each in a process group of its own with output appended to a framed log; on SIGINT or
    SIGTERM (while `interruptible`) stops every group and raises Interrupted."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[int, Child] = {}
        self.interrupted = False

    def _on_signal(self, signum: int, frame: object) -> None:
        if not self.interrupted:
            self.interrupted = True
            raise Interrupted

    def interruptible(self) -> _Handlers:
        return _Handlers(self._on_signal)

    def start(self, log: pathlib.Path, workdir: str, command: list[str], show: bool) -> Child:
        with log.open("a") as f:
            f.write(f"start: {now_utc()}\ncommand: (cd {workdir} && {quote_words(command)})\n")
        offset = log.stat().st_size
        with log.open("ab") as output:
            # A session of its own lets the stop reach every process the training starts (uv, python, data workers).
            process = subprocess.Popen(
                command, cwd=workdir, env=self.env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        done = threading.Event()
        display = None
        # In a SLURM job this launcher's own output is the log: showing the log there would copy it into itself.
        if show and not same_file(sys.stdout.fileno(), log):
            display = threading.Thread(target=show_log, args=(log, offset, done), daemon=True)
            display.start()
        child = Child(process, log, time.monotonic(), done, display)
        self.children[process.pid] = child
        return child

    def wait_any(self) -> tuple[Child, int]:
        """Waits for one started command to end (os.wait: no polling), collects it and returns it with its status."""
        while True:
            pid, wait_status = os.wait()
            if pid in self.children:
                child = self.children[pid]
                child.process.returncode = exit_status(wait_status)
                return child, self.end(child)

    def end(self, child: Child) -> int:
        """Writes the end line of a collected command's log, once its display has shown all of it."""
        del self.children[child.process.pid]
        child.done.set()
        if child.display is not None:
            child.display.join()
        status = child.process.returncode
        with child.log.open("a") as f:
            f.write(f"end: {now_utc()} exit status: {status} ({int(time.monotonic() - child.started)} s)\n")
        return status

    def stop_all(self) -> list[tuple[Child, int]]:
        """SIGTERM to every running group, SIGKILL to those left after the grace period; collects them all."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for pid in self.children:
            kill_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        ended = []
        for child in list(self.children.values()):
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
            if child.process.returncode < 0:
                child.process.returncode = 128 - child.process.returncode
            ended.append((child, self.end(child)))
        return ended

    def run(self, log: pathlib.Path, workdir: str, command: list[str]) -> int:
        """Runs one command logged and shown; its exit status. Raises Interrupted after stopping it."""
        with self.interruptible():
            try:
                self.start(log, workdir, command, show=True)
                return self.wait_any()[1]
            except Interrupted:
                self.stop_all()
                raise


class _Handlers:
    """Installs a handler for SIGINT and SIGTERM for the duration of a with block."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def __enter__(self) -> None:
        self.saved = (signal.signal(signal.SIGINT, self.handler), signal.signal(signal.SIGTERM, self.handler))

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.saved[0])
        signal.signal(signal.SIGTERM, self.saved[1])


def kill_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except OSError:
        return False


def show_log(log: pathlib.Path, offset: int, done: threading.Event) -> None:
    """Copies what is appended to a log after offset to the terminal, each line indented, until the command ends."""
    pending = b""
    with log.open("rb") as f:
        f.seek(offset)
        while True:
            finished = done.is_set()
            pending += f.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                sys.stdout.buffer.write(b"  | " + line + b"\n")
            sys.stdout.flush()
            if finished:
                break
            done.wait(TAIL_S)
    if pending:
        sys.stdout.buffer.write(b"  | " + pending + b"\n")
        sys.stdout.flush()


# --- preflight ------------------------------------------------------------------------------------------------------


def capture(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)


def free_kb(path: str) -> int:
    """Free kilobytes on the file system that holds the path (or its nearest existing parent)."""
    while not os.path.lexists(path):
        path = os.path.dirname(path) or "."
    lines = capture(["df", "-Pk", path]).stdout.splitlines()
    return int(lines[1].split()[3])


def preflight_openpi(s: Settings) -> None:
    apply = [s.python, f"{SCRIPT_DIR}/openpi_patch/apply.py", s.openpi_dir, "--check"]
    if s.dry_run:
        return show_cmd(apply)
    if not s.openpi_dir:
        raise Failure("OPENPI_DIR is not set: point it at an openpi checkout (or use --demo to run without one)")
    checkout = pathlib.Path(s.openpi_dir)
    if not (checkout / "scripts" / "train.py").is_file() or not (checkout / "src" / "openpi").is_dir():
        raise Failure(f"OPENPI_DIR={s.openpi_dir} is not an openpi checkout (no scripts/train.py or src/openpi)")
    # apply.py --check exits 0 both when the patch is applied and when it would apply; only its message tells.
    check = subprocess.run(apply, stdout=subprocess.PIPE, text=True, check=False, env=s.env)
    if check.returncode != 0:
        raise Failure(f"openpi at {s.openpi_dir} does not match the progress patch (see apply.py's message above)")
    if "already applied" not in check.stdout:
        raise Failure(
            f"the progress patch is not applied to {s.openpi_dir}: run {s.python} openpi_patch/apply.py {s.openpi_dir}"
        )
    say(f"preflight: openpi {s.openpi_dir} patched")


def nvidia_smi_lines(env: dict[str, str]) -> list[str] | None:
    try:
        listed = capture(["nvidia-smi", "-L"], env=env)
    except OSError:
        return None
    return listed.stdout.splitlines() if listed.returncode == 0 else None


def preflight_gpus(s: Settings) -> None:
    if s.dry_run:
        return show_cmd(["nvidia-smi", "-L"])
    lines = nvidia_smi_lines(s.env)
    if not lines or not any("GPU" in line for line in lines):
        raise Failure("no GPU visible (nvidia-smi -L lists none); use --demo to run on the CPU")
    say(f"preflight: {sum('GPU' in line for line in lines)} GPU(s) visible")


def visible_gpus(s: Settings) -> list[str]:
    """The GPUs a training here may use: CUDA_VISIBLE_DEVICES when set (SLURM sets it to the job's), else the
    indices nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in s.env:
        return [gpu for gpu in s.env["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    matches = (re.match(r"GPU (\d+):", line) for line in nvidia_smi_lines(s.env) or [])
    return [match.group(1) for match in matches if match]


def warn_batch_size(s: Settings, devices: int) -> None:
    """openpi's train.py stops at its start when the batch does not split evenly over the devices it sees."""
    if s.batch_size and devices > 0 and s.batch_size % devices:
        err(
            f"warning: --batch-size {s.batch_size} is not a multiple of the {devices} GPU(s) per run, "
            "which openpi's train.py refuses"
        )


def device_groups(s: Settings) -> list[str]:
    """The visible GPUs cut into groups of --gpus-per-run; [""] (one training sees them all) without it."""
    if not s.gpus_per_run and not s.batch_size:
        return [""]
    gpus = visible_gpus(s)
    if not s.gpus_per_run:
        warn_batch_size(s, len(gpus))
        return [""]
    n = s.gpus_per_run
    if len(gpus) < n:
        raise UsageError(f"--gpus-per-run {n}: only {len(gpus)} GPU(s) visible ({' '.join(gpus) or 'none'})")
    groups = [",".join(gpus[first : first + n]) for first in range(0, len(gpus) - n + 1, n)]
    say(f"gpus: {len(groups)} group(s) of {n}, one training each: {' '.join(groups)}")
    if len(groups) * n < len(gpus):
        say(f"gpus: {' '.join(gpus[len(groups) * n :])} left idle ({len(gpus)} is not a multiple of {n})")
    warn_batch_size(s, n)
    return groups


def preflight_demo(s: Settings) -> None:
    # Finding the packages is enough here and costs milliseconds; importing openpi costs ten seconds.
    check = [
        s.python,
        "-c",
        "import importlib.util as u, sys; sys.exit(not (u.find_spec('openpi') and u.find_spec('jax')))",
    ]
    if s.dry_run:
        return show_cmd(check)
    if capture(check, env=s.env).returncode != 0:
        raise Failure(f"{s.python} has no openpi or jax installed: run 'bash bootstrap.sh env' first")
    say(f"preflight: demo on the CPU with openpi from the installed package ({s.python})")


def preflight_root(s: Settings, root: str) -> None:
    """Names the layout robotwin_episodes.py finds in every file under the root; a missing, mixed or unreadable one
    stops."""
    found = subprocess.run(
        [s.python, f"{SCRIPT_DIR}/robotwin_episodes.py", root],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, env=s.env,
    )  # fmt: skip
    message = found.stdout.rstrip("\n")
    if found.returncode != 0:
        raise Failure(f"--root {root}: {message.removeprefix('error: ')}")
    say(f"preflight: {message}")


def expand_roots(s: Settings) -> list[str]:
    """Every --root with its glob expanded, by the converter's own rule (the roots the split and conversion get); a
    glob that matches nothing stops, as a missing folder does."""
    import convert_robotwin_democlean_to_lerobot as converter

    try:
        return [str(root) for root in converter.expand_roots(list(s.roots))]
    except converter.ConversionError as error:
        raise Failure(str(error)) from None


def preflight_checkpoint_disk(s: Settings) -> None:
    """Free disk for the checkpoints of every training this run starts (and the later folds'), before the first one
    starts: a full disk found at the first save (about 20 minutes in on 8 GPUs) loses that training and the ones
    queued after it."""
    runs = sum(not s.is_finished(run) for run in s.runs) + s.later_trainings
    per_run_gib = (TRAIN_STEPS // KEEP_PERIOD + 1) * CHECKPOINT_GIB
    need_kb = runs * per_run_gib * 1024 * 1024
    checkpoints = f"{s.workdir}/checkpoints"
    have_kb = free_kb(checkpoints)
    if have_kb < need_kb:
        raise Failure(
            f"not enough disk space for the checkpoints at {checkpoints}: {runs} trainings keep {per_run_gib} GiB "
            f"each (openpi keeps one per {KEEP_PERIOD} steps of {TRAIN_STEPS}, ~{CHECKPOINT_GIB} GiB apiece), "
            f"{need_kb // 1024 // 1024} GiB wanted, {have_kb // 1024 // 1024} GiB free"
        )


def preflight(s: Settings) -> list[str]:
    """Everything that can fail before any hour is spent: openpi and GPUs (or the demo's packages), the episodes,
    the disk. Returns the device groups the trainings run on."""
    groups = [""]
    if s.demo:
        preflight_demo(s)
    else:
        preflight_openpi(s)
        if s.trains_here:
            preflight_gpus(s)
            groups = device_groups(s)
    generate = [s.python, f"{SCRIPT_DIR}/generate_robotwin_samples.py", "--out", f"{s.out}/samples"]
    if s.demo and s.root == f"{s.out}/samples/{TASK_LAYOUT}" and not os.path.isdir(s.root):
        if s.dry_run:
            show_cmd(generate)
        else:
            say(f"demo: generating sample episodes into {s.out}/samples")
            if subprocess.run(generate, stdout=subprocess.DEVNULL, check=False, env=s.env).returncode != 0:
                raise Failure("")
    if not s.dry_run:
        for root in expand_roots(s):
            preflight_root(s, root)
        if not s.demo and not s.eval_only and s.stage != "prepare":
            preflight_checkpoint_disk(s)
    return groups


# --- split and conversion -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Split:
    """The converter's split_tasks() over the roots (globs expanded): per task (one root each) its training and
    held-out episode numbers; no tasks in a dry run whose episodes do not exist yet."""

    roots: tuple[str, ...]
    plan: dict

    @property
    def tasks(self) -> list[dict]:
        return self.plan.get("tasks", [])

    @property
    def several(self) -> bool:
        """Several roots, converted part by part from the split file (one root: by --episodes, as ever)."""
        return len(self.roots) > 1

    def episodes(self, part: str) -> list[int]:
        """The part's episode numbers in dataset order: task by task, as the converter writes them."""
        return [number for task in self.tasks for number in task[part]]

    def spec(self, part: str) -> str:
        """One root's part in the converter's --episodes syntax."""
        return episode_spec(tuple(self.episodes(part))) if self.tasks else f"{part.upper()}_EPISODES"


def episode_spec(numbers: tuple[int, ...]) -> str:
    """Sorted episode numbers in the converter's --episodes syntax, runs collapsed: 0 1 2 5 -> 0-2,5."""
    parts: list[list[int]] = []
    for number in numbers:
        if parts and number == parts[-1][1] + 1:
            parts[-1][1] = number
        else:
            parts.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def split_episodes(s: Settings) -> Split:
    """The last HELDOUT episodes of each root held out (default: 10%, at least one), by the converter's split_tasks
    (the one place of that rule), after the first --max-episodes-per-task of each."""
    import convert_robotwin_democlean_to_lerobot as converter

    roots = expand_roots(s)
    fold = None if s.fold is None else (s.fold, s.folds)
    if s.dry_run and not all(os.path.isdir(root) for root in roots):
        held = s.heldout if s.heldout is not None else f"{converter.DEFAULT_HELDOUT_PERCENT}%"
        what = f"fold {s.fold} of {s.folds}" if fold else f"the last {held}"
        say(f"+ split: {what} of the episodes in {' '.join(roots)}, once they exist")
        return Split(tuple(roots), {})
    paths = [pathlib.Path(root) for root in roots]
    try:
        split = Split(tuple(roots), converter.split_tasks(paths, s.heldout, max_per_task=s.max_per_task, fold=fold))
    except converter.ConversionError as error:
        # the roots passed the preflight: what is left is a split the flags make impossible
        raise UsageError(str(error)) from None
    train, held = len(split.episodes("train")), len(split.episodes("heldout"))
    if fold:
        say(f"split: fold {s.fold} of {s.folds}: the episodes at positions {s.fold} modulo {s.folds} (counted across "
            "tasks) held out")  # fmt: skip
    if not split.several:
        say(
            f"split: {train} training episode(s) ({split.spec('train')}) -> {s.repo_id}, "
            f"{held} held out ({split.spec('heldout') or 'none'}) -> {s.repo_id}{HELDOUT_SUFFIX}"
        )
        return split
    for task in split.tasks:
        say(
            f"split: {task['task']} ({task['root']}): {len(task['train'])} training episode(s) "
            f"({episode_spec(tuple(task['train']))}), {len(task['heldout'])} held out "
            f"({episode_spec(tuple(task['heldout'])) or 'none'})"
        )
    say(f"split: {train} training episode(s) of {len(split.tasks)} tasks -> {s.repo_id}, {held} held out -> "
        f"{s.repo_id}{HELDOUT_SUFFIX}")  # fmt: skip
    return split


def split_record(s: Settings, split: Split) -> dict:
    """The split as LOG_DIR/split.json records it. train_episodes and heldout_episodes list each part's source
    episode numbers in dataset order, so that evaluate.py maps a held-out dataset's episode_index to its source
    episode; with several roots, root lists them and split_tasks' own keys (tasks: each root's parts) follow."""
    # one root: as given (unless a glob found it), as split.json recorded it before several roots were possible
    root = s.root if split.roots == (str(pathlib.Path(s.root)),) else split.roots[0]
    record = {
        "root": list(split.roots) if split.several else root,
        "repo_id": s.repo_id,
        "heldout_repo_id": f"{s.repo_id}{HELDOUT_SUFFIX}",
        "train_episodes": split.episodes("train"),
        "heldout_episodes": split.episodes("heldout"),
    }
    if s.fold is not None:
        record.update(folds=s.folds, fold=s.fold)
    return {**record, **split.plan} if split.several else record


def same_format(version: str, dataset_format: str) -> bool:
    """Whether a codebase_version is one the format's lerobot reads: the same major version (lerobot's own rule,
    check_version_compatibility; openpi's pinned rev reads v2.0 and v2.1, lerobot 0.4.4 refuses both)."""
    return version.split(".")[0] == dataset_format.split(".")[0]


def dataset_episodes(dataset: str) -> tuple[str, str]:
    """The codebase_version and the number of episodes meta/info.json says a dataset holds (v2.x and v3.0 keep both
    under the same keys; "" for what it does not say)."""
    try:
        info = json.loads(pathlib.Path(dataset, "meta", "info.json").read_text())
    except (OSError, ValueError):
        return "", ""
    if not isinstance(info, dict):
        return "", ""
    return str(info.get("codebase_version", "")), str(info.get("total_episodes", ""))


def convert_part(s: Settings, split: Split, part: str, split_file: pathlib.Path) -> bool:
    """Converts one part of the split (train or heldout) into its dataset, verified by the converter itself, unless
    the dataset exists and --reconvert is not given; a kept dataset must hold as many episodes as the part. One
    root: by --root and --episodes; several: by --split and --part. Whether it converts."""
    repo_id = s.repo_id if part == "train" else f"{s.repo_id}{HELDOUT_SUFFIX}"
    dataset = s.dataset if part == "train" else s.heldout_dataset
    spec, count = split.spec(part), len(split.episodes(part))
    roots = list(split.roots)
    selection = (
        ["--split", str(split_file), "--part", part] if split.several else ["--root", roots[0], "--episodes", spec]
    )
    convert = [s.python, f"{SCRIPT_DIR}/convert_robotwin_democlean_to_lerobot.py", *selection, "--repo-id", repo_id,
               "--format", s.dataset_format, "--verify"]  # fmt: skip
    if s.reconvert:
        convert.append("--overwrite")
    missing = not pathlib.Path(dataset, "meta", "info.json").is_file()
    if s.dry_run:
        show_cmd(["env", f"HF_LEROBOT_HOME={s.env['HF_LEROBOT_HOME']}", *convert])
        # so that the norm stats command printed is the one this run would give (--overwrite after a conversion)
        return s.reconvert or missing
    described = f"{part} episodes of {len(roots)} tasks" if split.several else f"episodes {spec} of {roots[0]}"
    if s.reconvert or missing:
        need_kb = sum(int(capture(["du", "-sk", root]).stdout.split()[0]) for root in roots) * DATASET_SIZE_FACTOR
        have_kb = free_kb(dataset)
        if have_kb < need_kb:
            raise Failure(
                f"not enough disk space for the dataset at {dataset}: "
                f"{need_kb // 1024} MiB wanted, {have_kb // 1024} MiB free"
            )
        say(f"convert: {described} -> {dataset}")
        if subprocess.run(convert, check=False, env=s.env).returncode != 0:
            raise Failure(f"conversion of {' '.join(roots)} failed")
        return True
    version, held = dataset_episodes(dataset)
    if not same_format(version, s.dataset_format):
        raise Failure(
            f"{dataset}: a LeRobot {version or 'unknown-format'} dataset, not the {s.dataset_format} --format asks "
            "for: --reconvert converts it again"
        )
    if held != str(count):
        raise Failure(
            f"{dataset} holds {held} episode(s), the split gives it {count} ({described}): "
            "--reconvert converts it again"
        )
    say(f"convert: {dataset} exists, kept (--reconvert converts again)")
    return False


def convert_dataset(s: Settings, split: Split) -> bool:
    """Converts the training episodes to the dataset the configs train on and the held-out ones to a second dataset
    no config reads, after checking that kept datasets were converted with this split; records the split. The
    converter reads several roots' split from LOG_DIR/split.next.json, renamed to split.json once both datasets are
    converted, so that split.json always names the split the datasets hold. Whether this run wrote the dataset,
    which makes norm stats computed before it stale."""
    split_path = pathlib.Path(s.log_dir, "split.json")
    next_path = pathlib.Path(s.log_dir, "split.next.json")
    record = split_record(s, split)
    if not s.dry_run and not s.reconvert and split_path.is_file() and json.loads(split_path.read_text()) != record:
        raise Failure(
            f"{split_path}: the datasets were converted with another split; --reconvert converts them with this one"
        )
    if not s.dry_run:
        atomic_files.write_json(next_path, record)
    converted = convert_part(s, split, "train", next_path)
    if split.episodes("heldout") or not split.tasks:
        convert_part(s, split, "heldout", next_path)
    if not s.dry_run:
        os.replace(next_path, split_path)
    return converted


# --- dataset checks -------------------------------------------------------------------------------------------------


def field_problems(info_path: str, configs: tuple[str, ...], dataset_format: str) -> list[str]:
    """Every field each config needs, checked against meta/info.json of the format asked for: the wanted fields come
    from the converter's own schema and the columns each config reads in openpi_patch/experiment_configs.py (the
    launcher keeps no copy). v2.1 and v3.0 describe a feature alike (dtype, shape as a list, names)."""
    import convert_robotwin_democlean_to_lerobot as converter

    try:
        with open(info_path) as f:
            info = json.load(f)
        features = info["features"]
    except (OSError, ValueError, KeyError) as e:
        raise Failure(f"{info_path}: not a LeRobot dataset description ({e})") from None
    # Images may be stored at any size, as PNG images or as videos; every other field exactly as the converter
    # writes it.
    schema = converter.features(tuple(converter.CAMERA_KEYS), converter.NATIVE_SIZE, video=False)
    problems: dict[str, list[str]] = {}
    version = str(info.get("codebase_version", ""))
    if not same_format(version, dataset_format):
        problems[f"codebase_version {version or 'missing'}, not the {dataset_format} of --format"] = ["all"]
    for config in configs:
        for name in experiment_configs.columns_read(config):
            is_image = name.startswith(converter.IMAGE_PREFIX)
            want_shape = ["*", "*", "3"] if is_image else [str(n) for n in schema[name]["shape"]]
            want_dtypes = ["image", "video"] if is_image else [schema[name]["dtype"]]
            feature = features.get(name)
            if feature is None:
                problem = f"missing field {name}"
            else:
                have = [str(n) for n in feature.get("shape", [])]
                shape_ok = len(have) == len(want_shape) and all(w in ("*", h) for w, h in zip(want_shape, have))
                if not shape_ok:
                    problem = f"field {name} has shape ({','.join(have)}), wanted ({','.join(want_shape)})"
                elif feature.get("dtype") not in want_dtypes:
                    problem = f"field {name} has dtype {feature.get('dtype')}, wanted {'|'.join(want_dtypes)}"
                else:
                    continue
            problems.setdefault(problem, []).append(config)
    return [f"{info_path}: {problem}, needed by {', '.join(configs)}" for problem, configs in problems.items()]


def check_dataset(s: Settings) -> None:
    """Every field each selected config needs, then every column openpi's configs read, before any training."""
    config_list = ",".join(s.configs)
    if s.dry_run:
        say(f"+ check {s.dataset}/meta/info.json is LeRobot {s.dataset_format}, with the fields of: {config_list}")
        openpi_python = " ".join(s.openpi_python)
        demo = " --demo" if s.demo else ""
        say(
            "+ check the columns the configs read in openpi: "
            f"(cd {s.workdir} && {openpi_python} {COLUMNS_CHECK}{demo} {s.dataset}/meta/info.json {config_list})"
        )
        return
    info = f"{s.dataset}/meta/info.json"
    problems = field_problems(info, s.configs, s.dataset_format)
    for problem in problems:
        err(problem)
    if problems:
        raise Failure("")
    say(f"fields: {s.dataset} (LeRobot {s.dataset_format}) has every field of: {' '.join(s.configs)}")
    check = [*s.openpi_python, str(COLUMNS_CHECK), *(["--demo"] if s.demo else []), info, config_list]
    try:
        result = subprocess.run(check, cwd=s.workdir, env=s.env, check=False)
    except OSError as e:
        raise Failure(f"{check[0]}: {e.strerror}") from None
    if result.returncode != 0:
        raise Failure("")
    say("columns: the dataset has every column the configs read in openpi")


# --- norm stats and trainings ---------------------------------------------------------------------------------------


def compute_norm_stats(s: Settings, runner: Runner, converted: bool) -> None:
    """One norm_stats.py call for every unfinished config: configs with the same data pipeline share one pass, and
    a config's existing file is kept (norm_stats.py's rule) unless this run converted the dataset anew."""
    pending = list(dict.fromkeys(run.config for run in s.runs if not s.is_finished(run)))
    if not pending:
        return
    command = [*s.norm_stats_cmd, *(["--overwrite"] if converted else []), *pending]
    if s.dry_run:
        return show_cmd(["env", "-C", s.workdir, *command])
    log = pathlib.Path(s.log_dir, "norm_stats.log")
    say(f"norm stats: {' '.join(pending)} (log: {log})")
    if runner.run(log, s.workdir, command) != 0:
        raise Failure(f"norm stats failed: see {log}")


def training_command(s: Settings, run: Run, group: str) -> list[str]:
    """The environment and command that train one run on one device group."""
    words = [f"CUDA_VISIBLE_DEVICES={group}"] if group else []
    words += [*s.train_cmd, run.config, f"--exp-name={run.exp_name}", "--overwrite"]
    if run.seed is not None:
        words.append(f"--seed={run.seed}")
    if s.batch_size:
        words.append(f"--batch-size={s.batch_size}")
    if group:
        words.append(f"--fsdp-devices={s.gpus_per_run}")
    return words


@dataclasses.dataclass
class Outcome:
    """A run's line in the summary table."""

    result: str = "not run"
    seconds: str = "-"


def train_runs(s: Settings, runner: Runner, groups: list[str], outcomes: dict[Run, Outcome]) -> bool:
    """Trains the runs in order, one per device group at a time (one group: one after another), recording each one's
    outcome; whether all went well. After a failure no further run starts unless --keep-going; runs already going on
    go on to their end. Raises Interrupted after stopping every running one."""
    pending: list[Run] = []
    for run in s.runs:
        if s.is_finished(run):
            outcomes[run].result = "skipped (finished)"
            say(f"train: {run.name} finished in an earlier run, skipped (--force repeats it)")
        elif s.dry_run:
            command = training_command(s, run, groups[len(pending) % len(groups)])
            pending.append(run)
            mem, repo_id = s.env["XLA_PYTHON_CLIENT_MEM_FRACTION"], s.env["OPENPI_ROBOTWIN_REPO_ID"]
            # the configs read their dataset's id from the environment: a pasted command must carry it
            show_cmd(["env", "-C", s.workdir, f"OPENPI_ROBOTWIN_REPO_ID={repo_id}",
                      f"XLA_PYTHON_CLIENT_MEM_FRACTION={mem}", *command])  # fmt: skip
            outcomes[run].result = "dry run"
        else:
            pending.append(run)
    if s.dry_run:
        return True
    # Several trainings' output interleaved on one terminal helps nobody; each one's log keeps it.
    show = len(groups) == 1
    free = list(groups)
    running: dict[int, tuple[Run, str]] = {}
    failed = False
    with runner.interruptible():
        try:
            while pending or running:
                while pending and free and (not failed or s.keep_going):
                    run, group = pending.pop(0), free.pop(0)
                    run.marker.unlink(missing_ok=True)
                    say(f"train: {run.name}{f' on GPUs {group}' if group else ''} (log: {run.log})")
                    child = runner.start(run.log, s.workdir, ["env", *training_command(s, run, group)], show)
                    running[child.process.pid] = (run, group)
                if not running:
                    break
                child, status = runner.wait_any()
                run, group = running.pop(child.process.pid)
                free.append(group)
                outcomes[run].seconds = f"{int(time.monotonic() - child.started)} s"
                if status == 0:
                    atomic_files.write_text(run.marker, now_utc() + "\n")
                    outcomes[run].result = "ok"
                    say(f"train: {run.name} ok after {outcomes[run].seconds}")
                else:
                    outcomes[run].result = f"FAILED (exit {status})"
                    failed = True
                    err(f"{run.name} failed with exit status {status}: see {run.log}")
        except Interrupted:
            for child, _ in runner.stop_all():
                run, _ = running.pop(child.process.pid)
                outcomes[run].result = "interrupted"
                outcomes[run].seconds = f"{int(time.monotonic() - child.started)} s"
            raise
    return not failed


def name_width(names: list[str]) -> int:
    """The width of the name column of the runs and jobs tables: 46, or more where a name would leave less than two
    spaces before the next column."""
    return max([46, *(len(name) + 1 for name in names)])


def print_summary(s: Settings, outcomes: dict[Run, Outcome]) -> None:
    width = name_width([run.name for run in outcomes])
    say()
    say(f"{'config':<{width}} {'result':<22} {'time':>8}  log")
    for run, outcome in outcomes.items():
        say(f"{run.name:<{width}} {outcome.result:<22} {outcome.seconds:>8}  {run.log}")


# --- evaluation, deploy and simulator evaluation --------------------------------------------------------------------


def trained_runs(s: Settings, outcomes: dict[Run, Outcome]) -> list[Run]:
    """The runs that trained in this run or finished before (with --dry-run or --eval-only: all of them)."""
    return [run for run, o in outcomes.items() if s.eval_only or s.dry_run or o.result in FINISHED_RESULTS]


def evaluate_runs(s: Settings, runner: Runner, runs: list[Run]) -> None:
    """Evaluates the latest checkpoint of every trained run on the held-out dataset, draws the plots with PYTHON
    (matplotlib need not be where openpi is) and prints the results table."""
    if not runs:
        return say("evaluate: no config trained, nothing to evaluate")
    configs = list(dict.fromkeys(run.config for run in runs))
    exp_names = ",".join(dict.fromkeys(run.exp_name for run in runs))
    split, out = absolute(f"{s.log_dir}/split.json"), absolute(s.eval_dir)
    evaluate = [*s.eval_cmd, "--configs", ",".join(configs), "--exp-name", exp_names, "--split", split, "--out", out]
    evaluate.append("--no-plots")
    if s.eval_frames:
        evaluate += ["--eval-frames", s.eval_frames]
    plots = [s.python, f"{SCRIPT_DIR}/openpi_patch/evaluate.py", "--plots-only", "--out", s.eval_dir]
    if s.dry_run:
        show_cmd(["env", "-C", s.workdir, f"OPENPI_ROBOTWIN_REPO_ID={s.repo_id}", *evaluate])
        return show_cmd(plots)
    log = pathlib.Path(s.log_dir, "evaluation.log")
    say()
    say(f"evaluate: {' '.join(configs)} on {s.heldout_dataset} (log: {log})")
    if runner.run(log, s.workdir, evaluate) != 0:
        raise Failure(f"the evaluation failed: see {log}")
    if subprocess.run(plots, check=False, env=s.env).returncode != 0:
        raise Failure("drawing the evaluation's plots failed")
    say()
    sys.stdout.write(pathlib.Path(s.eval_dir, "results.md").read_text())
    sys.stdout.flush()


def sim_task(root: str) -> tuple[str, str]:
    """RoboTwin's task and task_config from the root: .../TASK/TASK_CONFIG[/data] for the legacy layout; an
    XPolicyLab root .../TASK/EMBODIMENT[/data] names no task_config, so RoboTwin's demo_clean is taken."""
    folder = root.rstrip("/").removesuffix("/data")
    path = pathlib.Path(folder)
    names = [p.name for place in (path / "data", path) if place.is_dir() for p in place.iterdir()]
    task_config = "demo_clean" if any(XPOLICYLAB_FILE.fullmatch(name) for name in names) else path.name
    return path.parent.name, task_config


@dataclasses.dataclass(frozen=True)
class SimTask:
    """One RoboTwin task (and task_config) the trained runs are deployed and evaluated on. RoboTwin's eval_policy.py
    evaluates one task per call, so a launch of several tasks gives each its own folders, logs and SLURM jobs; a
    launch of one keeps the paths it had before several were possible."""

    task: str
    task_config: str
    several: bool  # whether the launch evaluates more than this one task

    @property
    def label(self) -> str:
        """TASK/TASK_CONFIG, as --sim-task takes it and the folders of several tasks are named."""
        return f"{self.task}/{self.task_config}"

    @property
    def folder(self) -> str:
        """The part of LOG_DIR/deploy... and LOG_DIR/sim_eval... that tells the tasks apart."""
        return f"/{self.label}" if self.several else ""

    @property
    def on(self) -> str:
        """The words that name the task in a message."""
        return f" on {self.task} ({self.task_config})" if self.several else ""

    def job_name(self, run: Run) -> str:
        """The run's simulator log LOG_DIR/<name>.log on this task, and its SLURM job's name."""
        return f"sim_eval_{run.name}" + (f".{self.task}.{self.task_config}" if self.several else "")


def sim_tasks(s: Settings) -> list[SimTask]:
    """RoboTwin's task of every root, each once in the roots' order (a legacy and an XPolicyLab folder of one task
    name the same), or the one --sim-task names."""
    found = list(dict.fromkeys(sim_task(root) for root in expand_roots(s)))
    tasks = [SimTask(task, task_config, len(found) > 1) for task, task_config in found]
    if not s.sim_task:
        return tasks
    chosen = [task for task in tasks if task.label == s.sim_task]
    if not chosen:
        raise Failure(f"--sim-task {s.sim_task}: not a task of the roots ({', '.join(t.label for t in tasks)})")
    return chosen


def deploy_runs(s: Settings, runs: list[Run]) -> bool:
    """Writes the deploy files of every trained run, once per task, into LOG_DIR/deploy (one task) or
    LOG_DIR/deploy/TASK/TASK_CONFIG (several) with openpi_patch/sim_eval.py deploy; a failed deploy is reported and
    the others go on. A config with no checkpoint folder at all (--eval-only of one never trained) is named and left
    out, as its evaluation reports it. Whether every deploy went well."""
    tasks = sim_tasks(s)
    ok = True
    for run in runs:
        checkpoints = f"{s.openpi_dir}/checkpoints/{run.config}/{run.exp_name}"
        if not s.dry_run and not os.path.isdir(checkpoints):
            say(f"deploy: {run.config} has no checkpoint in {checkpoints}, not deployed")
            continue
        for task in tasks:
            out = f"{s.log_dir}/deploy{task.folder}"
            deploy = [s.python, f"{SCRIPT_DIR}/openpi_patch/sim_eval.py", "deploy", "--checkpoint-base-dir",
                      f"{s.openpi_dir}/checkpoints", "--config", run.config, "--exp-name", run.exp_name, "--task",
                      task.task, "--task-config", task.task_config, "--out", out, "--overwrite"]  # fmt: skip
            if s.dry_run:
                show_cmd(deploy)
                continue
            result = subprocess.run(
                deploy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False, env=s.env
            )
            if result.returncode == 0:
                say(f"deploy: {run.config} -> {out}/{run.config}/{run.exp_name}")
            else:
                last = result.stderr.rstrip("\n").rsplit("\n", 1)[-1]
                err(f"deploying {run.config}{task.on} failed: {last}")
                ok = False
    return ok


def sim_eval_runs(s: Settings, runner: Runner, runs: list[Run]) -> bool:
    """RoboTwin's closed-loop evaluation of every deployed run, then the table of all runs (--stage sim-eval: the
    evaluations only, --stage sim-collect: the table only). Whether every evaluation went well and, for the table
    alone, whether it holds every run."""
    ok = s.stage == "sim-collect" or sim_run_runs(s, runner, runs)
    if s.stage != "sim-eval":
        collect_sim_results(s)
    if s.stage == "sim-collect" and not s.dry_run:
        ok = not missing_sim_results(s)
    return ok


def trained_since_sim_run(run: Run, run_json: pathlib.Path) -> bool:
    """Whether the run trained again (--force) after its simulator result was written: sim_eval.py run skips a run
    that has a run.json, which would then be the old checkpoint's."""
    return run_json.is_file() and run.marker.is_file() and run.marker.stat().st_mtime > run_json.stat().st_mtime


def sim_run_runs(s: Settings, runner: Runner, runs: list[Run]) -> bool:
    """sim_eval.py run for every deployed run on every task (into LOG_DIR/sim_eval, or LOG_DIR/sim_eval/TASK/
    TASK_CONFIG with several tasks), each with its default --eval-seed so that every arm meets the same environment
    seeds of a task. Whether every evaluation went well."""
    ok = True
    tasks = sim_tasks(s)
    for run in runs:
        for task in tasks:
            deploy_dir = absolute(f"{s.log_dir}/deploy{task.folder}")
            sim_dir = absolute(f"{s.log_dir}/sim_eval{task.folder}")
            deployed = f"{deploy_dir}/{run.config}/{run.exp_name}"
            if not s.dry_run and not os.path.isfile(f"{deployed}/deploy.json"):
                continue
            command = [s.python, f"{SCRIPT_DIR}/openpi_patch/sim_eval.py", "run", "--robotwin-dir",
                       absolute(s.sim_eval), "--deploy", deployed, "--out", sim_dir, "--trials",
                       str(s.sim_trials)]  # fmt: skip
            if s.env.get("SIM_PYTHON"):
                command += ["--python", s.env["SIM_PYTHON"]]
            if s.dry_run:
                show_cmd(command)
                continue
            if trained_since_sim_run(run, pathlib.Path(sim_dir, run.config, run.exp_name, "run.json")):
                command.append("--overwrite")
            log = pathlib.Path(s.log_dir, f"{task.job_name(run)}.log")
            say()
            say(f"sim-eval: {run.config}{task.on} in {s.sim_eval}, {s.sim_trials} trials (log: {log})")
            if runner.run(log, str(SCRIPT_DIR), command) != 0:
                err(f"the simulator evaluation of {run.name}{task.on} failed: see {log}")
                ok = False
    return ok


def collect_sim_results(s: Settings) -> None:
    """sim_eval.py collect of every run in LOG_DIR/sim_eval into EVAL_DIR/sim_results.{json,md}; prints the table."""
    collect = [s.python, f"{SCRIPT_DIR}/openpi_patch/sim_eval.py", "collect", "--sim-dir",
               absolute(f"{s.log_dir}/sim_eval"), "--out", absolute(s.eval_dir)]  # fmt: skip
    if s.dry_run:
        return show_cmd(collect)
    if subprocess.run(collect, stdout=subprocess.DEVNULL, check=False, env=s.env).returncode != 0:
        raise Failure("collecting the simulator results failed")
    say()
    sys.stdout.write(pathlib.Path(s.eval_dir, "sim_results.md").read_text())
    sys.stdout.flush()


def missing_sim_results(s: Settings) -> list[str]:
    """The runs (on each task) without a simulator result, each named on stderr: the collect job runs after every
    simulator job has ended, whether or not it succeeded, and its table holds only the ones that did."""
    missing, tasks = [], sim_tasks(s)
    for run in s.runs:
        for task in tasks:
            if not pathlib.Path(s.log_dir, f"sim_eval{task.folder}", run.config, run.exp_name, "run.json").is_file():
                missing.append(f"{run.name}{task.on}")
                err(f"no simulator result for {run.name}{task.on} (see {s.log_dir}/{task.job_name(run)}.log): "
                    "not in the table")  # fmt: skip
    return missing


# --- SLURM ----------------------------------------------------------------------------------------------------------


def job_row(width: int, *cells: str) -> str:
    """One row of a jobs table: job (padded to `width`, see name_width), job id, then one or two more columns."""
    if len(cells) == 3:
        return f"{cells[0]:<{width}} {cells[1]:<10} {cells[2]}"
    return f"{cells[0]:<{width}} {cells[1]:<10} {cells[2]:<28} {cells[3]}"


def need_commands(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            raise Failure(f"{name} not found: SLURM's commands are needed here (run this on the cluster's login node)")


def recorded_jobs(s: Settings) -> list[dict]:
    """The jobs SLURM_DIR/jobs.json records, in submission order: name, id, dependency (the ids it waits for, joined
    by ':', "" for none), script and the sbatch command."""
    path = pathlib.Path(s.slurm_dir, JOBS_FILE)
    if not path.is_file():
        return []
    try:
        jobs = json.loads(path.read_text())
        if not all(isinstance(job["name"], str) and isinstance(job["id"], str) for job in jobs):
            raise TypeError("a name or id is not a string")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Failure(f"{path}: not a jobs record of run_experiments.sh ({type(error).__name__}: {error})") from None
    return jobs


def record_job(s: Settings, job: dict) -> None:
    """Adds a submitted job to SLURM_DIR/jobs.json, rewritten whole and atomically, so that an interrupted
    submission leaves the jobs submitted before it listed and the file readable."""
    atomic_files.write_json(pathlib.Path(s.slurm_dir, JOBS_FILE), [*recorded_jobs(s), job])


def recorded_job_states(s: Settings) -> list[tuple[str, str, str]]:
    """(name, id, state) for each recorded job: the state squeue gives while the job is queued or running (with the
    reason a pending job waits), else the one sacct gives."""
    jobs = recorded_jobs(s)
    if not jobs:
        return []
    ids = ",".join(job["id"] for job in jobs)
    # Both answer for what they still know, and fail for ids they have forgotten.
    queued, accounted = {}, {}
    for line in run_quietly(["squeue", "-h", "-j", ids, "-o", "%i %T %r"], s.env).splitlines():
        fields = line.split(" ")
        fields = [f for f in fields if f]
        if len(fields) >= 2:
            reason = fields[2] if len(fields) > 2 else ""
            queued[fields[0]] = f"{fields[1]} ({reason})" if fields[1] == "PENDING" else fields[1]
    for line in run_quietly(["sacct", "-n", "-X", "-P", "-j", ids, "-o", "JobID,State"], s.env).splitlines():
        fields = line.split("|")
        if len(fields) >= 2:
            accounted[fields[0]] = fields[1]
    return [(job["name"], job["id"], queued.get(job["id"]) or accounted.get(job["id"]) or "unknown") for job in jobs]


def run_quietly(command: list[str], env: dict[str, str]) -> str:
    try:
        return capture(command, env=env).stdout
    except OSError:
        return ""


def active_jobs(s: Settings) -> list[tuple[str, str, str]]:
    """The recorded jobs still queued or running."""
    return [job for job in recorded_job_states(s) if job[2].split(" ")[0] not in SLURM_ENDED_STATES]


def finish_marker(s: Settings, name: str) -> str:
    """The finish marker's time for a run, "no" while it has none, "-" for a job that is no training."""
    if name not in {run.name for run in s.runs}:
        return "-"
    marker = pathlib.Path(s.log_dir, f"{name}.done")
    return marker.read_text().rstrip("\n") if marker.is_file() else "no"


def show_status(s: Settings, trainings: bool = True) -> None:
    """The recorded jobs with their states and finish markers, then (unless not trainings: the folds' pooling job)
    the configs no recorded job trains."""
    rows: list[tuple[str, str, str]] = []
    if recorded_jobs(s):
        need_commands("squeue")
        rows = recorded_job_states(s)
    recorded = {row[0] for row in rows}
    rows += [(run.name, "-", "-") for run in s.runs if trainings and run.name not in recorded]
    width = name_width([name for name, _, _ in rows])
    say(job_row(width, "job", "job id", "state", "finished"))
    for name, id_, state in rows:
        say(job_row(width, name, id_, state, finish_marker(s, name)))


def cancel_jobs(s: Settings) -> None:
    if not recorded_jobs(s):
        raise Failure(
            f"no SLURM jobs recorded in {s.slurm_dir}/{JOBS_FILE} "
            "(give --log-dir, --exp-name or --repo-id as to --slurm)"
        )
    need_commands("squeue", "scancel")
    active = active_jobs(s)
    if not active:
        return say("cancel: nothing to cancel, every recorded job has ended")
    ids = [id_ for _, id_, _ in active]
    if capture(["scancel", *ids], env=s.env).returncode != 0:
        raise Failure(f"scancel {' '.join(ids)} failed")
    say(f"cancel: cancelled {' '.join(f'{name} ({id_})' for name, id_, _ in active)}")


def job_script(s: Settings, name: str, gres: str, submit: list[str], args: list[str]) -> str:
    """The batch script of one job: the SLURM directives, the environment this launcher read, then this launcher
    itself run with the given arguments, so that a job does what that stage does on one box."""
    lines = [
        "#!/usr/bin/env bash",
        # sbatch reads these lines with a shell's quoting and backslashes.
        f"#SBATCH {quote_words([f'--job-name={s.exp_name}-{name}'])}",
        f"#SBATCH {quote_words(['--output=' + absolute(f'{s.log_dir}/{name}.log')])}",
        "#SBATCH --open-mode=append",
        *([f"#SBATCH --gres={gres}"] if gres else []),
        "# Written by run_experiments.sh --slurm for this sbatch command (its options win over the lines above):",
        f"#   {quote_words(submit)}",
        *(f"export {var}={quote_words([s.env[var]])}" for var in JOB_ENV_VARS if s.env.get(var)),
        f"cd {quote_words([os.getcwd()])}",
        f"exec bash {quote_words([str(LAUNCHER), *args])}",
    ]
    return "\n".join(lines) + "\n"


def submit_job(s: Settings, name: str, kind: str, dependency: str, args: list[str], after: str = "afterok") -> str:
    """Writes one job's script and submits it after the jobs in dependency (ids joined by ':'; after="afterany": once
    they ended, however), with the sbatch options of its kind (prepare or train); records it in SLURM_DIR/jobs.json
    and returns its id (with --dry-run, the job's name, after printing the sbatch command)."""
    script = pathlib.Path(s.slurm_dir, f"{name}.sbatch")
    command = ["sbatch", "--parsable"]
    if dependency:
        # Without kill-on-invalid-dep a job whose dependency failed waits in the queue forever.
        command += [f"--dependency={after}:{dependency}", "--kill-on-invalid-dep=yes"]
    command += s.slurm_args
    gres = ""
    if kind == "prepare":
        command += s.slurm_prep_args
    else:
        command += s.slurm_train_args
        # A simulator job (kind sim) renders and runs one policy: one GPU.
        gres = "" if s.demo else f"gpu:{1 if kind == 'sim' else s.gpus_per_run or 1}"
    command.append(str(script))
    atomic_files.write_text(script, job_script(s, name, gres, command, args))
    if s.dry_run:
        show_cmd(command)
        return name
    answer = capture(command, env=s.env)
    if answer.returncode != 0:
        lines = [line for line in answer.stderr.splitlines() if line.strip()]
        raise Failure(f"sbatch refused the {name} job: {lines[-1] if lines else ''}")
    # sbatch's warnings, if any, are worth seeing.
    sys.stderr.write(answer.stderr)
    job_id = answer.stdout.rstrip("\n").split(";")[0]
    if not re.fullmatch(r"[0-9]+", job_id):
        raise Failure(f"sbatch answered '{answer.stdout.rstrip()}' for the {name} job, not a job id")
    record_job(s, {"name": name, "id": job_id, "dependency": dependency, "script": str(script), "command": command})
    return job_id


def list_submitted(s: Settings) -> None:
    """After a refused submission: the jobs submitted before it, which the user may want to cancel."""
    jobs = recorded_jobs(s)
    if jobs:
        print(
            f"submitted before the failure (cancel them with: bash {LAUNCHER} --cancel --log-dir {s.log_dir}):",
            file=sys.stderr,
        )
        width = name_width([job["name"] for job in jobs])
        for job in jobs:
            print(job_row(width, job["name"], job["id"], job["dependency"] or "-"), file=sys.stderr)
        sys.stderr.flush()


def run_args(run: Run) -> list[str]:
    """The launcher's arguments that select one run."""
    return ["--configs", run.config, *([] if run.seed is None else ["--seed", str(run.seed)])]


def submit_sim_jobs(s: Settings, args: list[str], after: dict[Run, str]) -> list[tuple[str, str, str]]:
    """One simulator job per run and task (its deploy and sim_eval.py run, all with the same environment seeds; with
    several tasks --sim-task picks the job's) after the job that trains the run (after the preparation for a run that
    finished before), then the collect job after all of them; their rows for the jobs table."""
    sim = ["--sim-eval", s.sim_eval, "--sim-trials", str(s.sim_trials)]
    rows, sim_ids = [], []
    tasks = sim_tasks(s)
    for run, dependency in after.items():
        for task in tasks:
            name = task.job_name(run)
            selected = [*run_args(run), "--stage", "sim-eval", *(["--sim-task", task.label] if task.several else [])]
            job_id = submit_job(s, name, "sim", dependency, [*args, *sim, *selected])
            sim_ids.append(job_id)
            rows.append((name, job_id, f"afterok:{dependency}"))
    everything = ":".join(sim_ids)
    # afterany: a failed simulator job leaves the others' results to collect, and the collect job names it
    job_id = submit_job(
        s,
        "sim_collect",
        "prepare",
        everything,
        [*args, *sim, "--configs", ",".join(s.configs), "--stage", "sim-collect"],
        after="afterany",
    )
    rows.append(("sim_collect", job_id, f"afterany:{everything}"))
    return rows


def submit_jobs(s: Settings) -> str:
    """Submits the preparation job, one training job per unfinished config after it, and (unless --no-eval) the
    evaluation after every training; prints the jobs table. Returns the evaluation job's id ("" when none)."""
    if not s.dry_run:
        need_commands("sbatch")
        preflight(s)
        active = active_jobs(s)
        if active:
            listed = " ".join(f"{name} ({id_}, {state})" for name, id_, state in active)
            raise Failure(
                f"jobs of an earlier --slurm call are still queued or running: {listed}; wait for them or --cancel them"
            )
    to_train = []
    for run in s.runs:
        if s.is_finished(run):
            say(f"slurm: {run.name} finished in an earlier run, not submitted (--force repeats it)")
        else:
            to_train.append(run)
    if not to_train:
        say("slurm: every config has finished, nothing to submit (--eval-only evaluates them)")
        return ""
    warn_batch_size(s, s.gpus_per_run or 1)
    os.makedirs(s.slurm_dir, exist_ok=True)
    if not s.dry_run:
        atomic_files.write_json(pathlib.Path(s.slurm_dir, JOBS_FILE), [])
    args = list(s.job_args)
    rows = []
    evaluation_id = ""
    try:
        prepare_id = submit_job(
            s,
            "prepare",
            "prepare",
            "",
            [*args, "--configs", ",".join(dict.fromkeys(r.config for r in to_train)), "--stage", "prepare"],
        )
        rows.append(("prepare", prepare_id, "-"))
        train_ids = {}
        for run in to_train:
            job_id = submit_job(s, run.name, "train", prepare_id, [*args, *run_args(run), "--stage", "train"])
            train_ids[run] = job_id
            rows.append((run.name, job_id, f"afterok:{prepare_id}"))
        if s.evaluate:
            trainings = ":".join(train_ids.values())
            # With --sim-eval the simulator jobs deploy, so the evaluation job must not replace their folders.
            only = ["--stage", "evaluate"] if s.sim_eval else ["--eval-only"]
            evaluation_id = submit_job(
                s, "evaluation", "train", trainings, [*args, "--configs", ",".join(s.configs), *only]
            )
            rows.append(("evaluation", evaluation_id, f"afterok:{trainings}"))
        if s.sim_eval:
            rows += submit_sim_jobs(s, args, {run: train_ids.get(run, prepare_id) for run in s.runs})
    except Failure as failure:
        err(str(failure))
        list_submitted(s)
        raise Failure("") from None
    say()
    width = name_width([name for name, _, _ in rows])
    say(job_row(width, "job", "job id", "dependency"))
    for name, job_id, dependency in rows:
        say(job_row(width, name, "(dry run)" if s.dry_run else job_id, dependency))
    say()
    if s.dry_run:
        say(f"slurm: dry run, nothing submitted; the job scripts are in {s.slurm_dir}")
    else:
        say(f"slurm: follow with: bash {LAUNCHER} --status --log-dir {s.log_dir} (--cancel cancels them)")
    return evaluation_id


def submit_folds(s: Settings, folds: list[Settings]) -> None:
    """--folds K with --slurm: every fold's jobs (as submit_jobs), then one job pooling the folds' evaluations after
    all of them (--stage pool), recorded in LOG_DIR/slurm/jobs.json."""
    evaluations = []
    for f in folds:
        say(f"fold {f.fold} of {s.folds}:")
        evaluations.append(submit_jobs(f))
        say()
    if not s.evaluate:
        return
    if not all(evaluations):
        return say(
            f"slurm: no pooling job; once every fold is evaluated: bash {LAUNCHER} --folds {s.folds} --stage pool"
        )
    os.makedirs(s.slurm_dir, exist_ok=True)
    if not s.dry_run:
        atomic_files.write_json(pathlib.Path(s.slurm_dir, JOBS_FILE), [])
    everything = ":".join(evaluations)
    job_id = submit_job(s, "pool", "prepare", everything, [*s.job_args, "--stage", "pool"])
    width = name_width(["pool"])
    say(job_row(width, "job", "job id", "dependency"))
    say(job_row(width, "pool", "(dry run)" if s.dry_run else job_id, f"afterok:{everything}"))


# --- the whole sequence ---------------------------------------------------------------------------------------------


def run_experiments(s: Settings) -> int:
    """preflight -> split -> conversion -> field and column checks -> norm stats -> trainings -> deploy ->
    evaluation -> simulator evaluation; the exit status."""
    groups = preflight(s)
    split = split_episodes(s)
    converted = False
    if s.stage in ("", "prepare"):
        converted = convert_dataset(s, split)
        check_dataset(s)
    if not s.dry_run:
        os.makedirs(s.log_dir, exist_ok=True)
    runner = Runner(s.env)
    outcomes = {run: Outcome() for run in s.runs}
    status = 0
    interrupted = False
    try:
        if not s.eval_only and s.stage != "train":
            compute_norm_stats(s, runner, converted)
        if not s.eval_only and s.stage != "prepare":
            status = 0 if train_runs(s, runner, groups, outcomes) else 1
    except Failure as failure:
        err(str(failure))
        status = 1
    except Interrupted:
        interrupted = True
    if s.stage == "prepare":
        if not status and not interrupted:
            say("prepare: done, the trainings can start")
    elif not s.eval_only:
        print_summary(s, outcomes)
    if interrupted:
        remaining = [run.name for run, o in outcomes.items() if o.result in ("interrupted", "not run")]
        say()
        say(f"interrupted; configs that remain: {' '.join(remaining)}")
        return 130
    trained = trained_runs(s, outcomes)
    # The demo's small CPU checkpoints are no model RoboTwin can load: it deploys nothing. Under SLURM with
    # --sim-eval each simulator job deploys its run, and the evaluation job (--stage evaluate) none, lest it replace
    # a folder a simulator job reads.
    if not s.demo and s.stage in ("", "sim-eval"):
        say()
        status |= 0 if deploy_runs(s, trained) else 1
    # A SLURM job runs one stage; the evaluation and simulator jobs come after the trainings.
    for wanted, stage, message in (
        (s.evaluate and s.stage in ("", "evaluate"), evaluate_runs, "interrupted during the evaluation"),
        (bool(s.sim_eval) and s.stage in ("", "sim-eval", "sim-collect"), sim_eval_runs,
         "interrupted during the simulator evaluation"),
    ):  # fmt: skip
        if not wanted:
            continue
        try:
            if stage(s, runner, trained) is False:
                status = 1
        except Failure as failure:
            if str(failure):
                err(str(failure))
            status = 1
        except Interrupted:
            say(message)
            return 130
    return status


# --- cross-validation: the whole sequence once per fold, then the folds pooled --------------------------------------


def fold_settings(s: Settings, argv: list[str], environ: dict[str, str]) -> list[Settings]:
    """Each fold's settings, as `--fold F` added to the command line gives them (less --stage pool: pooling is no
    stage of one fold)."""
    words = list(argv)
    if s.stage == "pool":
        del words[words.index("--stage") : words.index("--stage") + 2]
    return [settings_from([*words, "--fold", str(fold)], environ) for fold in range(s.folds)]


def pool_folds(s: Settings, folds: list[Settings]) -> None:
    """evaluate.py --pool-folds over every fold's evaluation into EVAL_DIR (run by PYTHON: it reads results files
    and needs no openpi); prints the pooled table."""
    missing = [f.eval_dir for f in folds if not pathlib.Path(f.eval_dir, "results.json").is_file()]
    exp_names = ",".join(dict.fromkeys(run.exp_name for run in s.runs))
    fold_dirs = ",".join(absolute(f.eval_dir) for f in folds)
    pool = [s.python, f"{SCRIPT_DIR}/openpi_patch/evaluate.py", "--pool-folds", fold_dirs, "--exp-name", exp_names,
            "--out", absolute(s.eval_dir)]  # fmt: skip
    if s.dry_run:
        return show_cmd(pool)
    if missing:
        raise Failure(f"not every fold was evaluated (no results.json in {', '.join(missing)}): nothing pooled")
    say()
    say(f"pool: the {s.folds} folds' evaluations -> {s.eval_dir}")
    if subprocess.run(pool, stdout=subprocess.DEVNULL, check=False, env=s.env).returncode != 0:
        raise Failure("pooling the folds' evaluations failed")
    say()
    sys.stdout.write(pathlib.Path(s.eval_dir, "results.md").read_text())
    sys.stdout.flush()


def run_folds(s: Settings, folds: list[Settings]) -> int:
    """--folds K: the whole sequence for fold 0, 1, ... in turn (each its own split, datasets, trainings and
    evaluation), then the folds' evaluations pooled; a failed fold stops the folds after it (unless --keep-going)
    and the pooling. The exit status."""
    # every fold's checkpoints stay: each fold's preflight asks for room for the later folds' too
    unfinished = [sum(not f.is_finished(run) for run in f.runs) for f in folds]
    folds = [dataclasses.replace(f, later_trainings=sum(unfinished[f.fold + 1 :])) for f in folds]
    status = 0
    if s.stage != "pool":
        for f in folds:
            say(f"fold {f.fold} of {s.folds}: {f.repo_id}, experiment {f.exp_name}, logs {f.log_dir}")
            fold_status = run_experiments(f)
            if fold_status == 130:
                return 130
            status |= fold_status
            if status and not s.keep_going:
                left = " ".join(str(later.fold) for later in folds if later.fold > f.fold)
                err(f"fold {f.fold} failed" + (f"; folds {left} not run (--keep-going runs them)" if left else ""))
                return status
            say()
    if s.evaluate and s.stage in ("", "evaluate", "pool"):
        try:
            pool_folds(s, folds)
        except Failure as failure:
            err(str(failure))
            status = 1
    return status


def main(argv: list[str]) -> int:
    try:
        environ = dict(os.environ)
        s = settings_from(argv, environ)
        # --folds without --fold: every command below for each fold
        each = fold_settings(s, argv, environ) if s.folds and s.fold is None else [s]
        if s.status or s.cancel:
            for one in each:
                if len(each) > 1:
                    say(f"fold {one.fold}:")
                if s.status:
                    show_status(one)
                elif len(each) == 1 or recorded_jobs(one):
                    cancel_jobs(one)
            if len(each) > 1 and recorded_jobs(s):
                say("pooling:")
                if s.status:
                    show_status(s, trainings=False)
                else:
                    cancel_jobs(s)
            return 0
        if s.slurm:
            submit_folds(s, each) if len(each) > 1 else submit_jobs(s)
            return 0
        return run_folds(s, each) if len(each) > 1 else run_experiments(s)
    except UsageError as error:
        err(str(error))
        return 2
    except Failure as failure:
        if str(failure):
            err(str(failure))
        return 1
    except KeyboardInterrupt:
        # Ctrl-C outside the stages that stop their commands (the conversion, a check): the foreground command got
        # it too; the exit status is the one a shell gives.
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
