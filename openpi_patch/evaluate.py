"""Evaluate the progress experiments' checkpoints on held-out episodes: action error, progress error, one table.

    python openpi_patch/evaluate.py --configs A,B,... --exp-name NAME --split LOG_DIR/split.json --out DIR
                                    [--eval-frames N] [--num-steps N] [--batch-size N] [--checkpoint-base-dir DIR]
                                    [--demo [--openpi-out DIR]] [--no-plots] [--debug]
    python openpi_patch/evaluate.py --plots-only --out DIR
    python openpi_patch/evaluate.py --pool-folds DIR,DIR,... --exp-name NAME[,NAME...] --out DIR [--no-plots]

run_experiments.sh runs it after the last training (the first form in OPENPI_DIR with the interpreter that imports
the patched openpi, with --no-plots; the second with its own PYTHON, which has matplotlib). For every config that has
checkpoints in <checkpoint dir>/CONFIG/NAME/STEP (openpi's layout), each checkpoint is loaded with openpi's own
restore code (models.model.restore_params, the config's model.load, the norm stats saved with it, as
policies.policy_config does) and run on the held-out dataset named in split.json (all its frames, or --eval-frames
evenly spaced ones) through the config's own transforms:
  action_mse                 sample_actions (same noise for every run) against the recorded 50-step action chunk,
                             both in joint space (the policy's output transforms), steps past the episode's end
                             (padding) left out; also split into the 12 arm joints and the 2 grippers
  progress_mae               the progress head's prediction against the true progress (experiments only)
  progress_mae_constant      the same for a constant predictor: the training dataset's mean progress
  action_mse_true_progress   action_mse with the TRUE progress given to the action expert instead of the prediction;
                             the gap to action_mse is the cost of predicting progress instead of knowing it
The baseline's progress entries are null.

Writes into --out: results.json (split, per config the latest checkpoint's metrics and every checkpoint's history,
per experiment the predicted and true progress of every evaluated frame), results.md (the table with 95% bootstrap
intervals over episodes and seed runs, a value bold only where its paired difference against the baseline excludes
0), and with matplotlib progress.png (predicted vs true progress over each held-out episode, one panel per
experiment) and, where a config has several checkpoints, metrics_by_step.png. With several tasks in one dataset
(split.json's tasks) an episode is "task:N" and every config also gets per-task entries and table rows.
The third form pools the folds of a cross-validation (run_experiments.sh --folds K): every episode was held out by
one fold, and the intervals are recomputed over all of them.
--demo evaluates run_experiments.sh --demo's small CPU variants (openpi_patch/train_demo.py's checkpoints under
--openpi-out), with openpi from the installed package patched in a temporary copy.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

# cpu_variants and train_demo sit next to this file; the converter, which defines the joint layout, one level up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))
import cpu_variants
import experiment_configs
import train_demo

import atomic_files

PROG = "evaluate.py"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PROGRESS_PLOT = "progress.png"
STEP_PLOT = "metrics_by_step.png"
DEFAULT_BATCH_SIZE = 8
DEFAULT_NUM_STEPS = 10  # openpi's default number of flow-matching integration steps
EVALUATION_SEED = 0  # noise draw k uses seed EVALUATION_SEED + k, whatever the config and its training seed
# (key, column title) of the table; lower is better in every column but the step and the constant predictor's.
TABLE_COLUMNS = (
    ("checkpoint_step", "step"),
    ("action_mse", "action MSE"),
    ("action_mse_arms", "arms"),
    ("action_mse_grippers", "grippers"),
    ("progress_mae", "progress MAE"),
    ("progress_mae_constant", "constant MAE"),
    ("action_mse_true_progress", "action MSE, true progress"),
)
RANKED_COLUMNS = ("action_mse", "action_mse_arms", "action_mse_grippers", "progress_mae", "action_mse_true_progress")
# The metrics computed per held-out episode, the unit the 95% bootstrap intervals resample (lower is better in all
# but the rank correlation).
EPISODE_METRICS = ("action_mse", "action_mse_true_progress", "progress_mae", "progress_rank_correlation")
HIGHER_IS_BETTER = ("progress_rank_correlation",)
BOOTSTRAP_RESAMPLES = 2000
PLOTTED_METRICS = ("action_mse", "progress_mae", "action_mse_true_progress")


class EvaluationError(Exception):
    """Bad input (split file, missing checkpoints or datasets), reported as one line."""


@dataclasses.dataclass(frozen=True)
class Split:
    """What run_experiments.sh recorded: the episodes trained on and held out, and the two datasets."""

    repo_id: str
    heldout_repo_id: str
    train_episodes: list[int]
    heldout_episodes: list[int]
    # per held-out dataset episode, the key of its metrics: the source episode number, or "task:N" when several
    # tasks share a dataset (their numbers repeat)
    heldout_labels: list[int | str]
    tasks: dict[str, str]  # label -> task, with several tasks only


@dataclasses.dataclass
class FrameOutputs:
    """What the evaluation collects over the held-out frames of one checkpoint (n frames, horizon h)."""

    episode: np.ndarray  # (n,) episode numbers of the source
    frame: np.ndarray  # (n,) frame index within the episode
    recorded: np.ndarray  # (n, h, 14) the recorded action chunk
    is_pad: np.ndarray  # (n, h) True where lerobot repeated the last frame past the episode's end
    predicted: np.ndarray  # (n, h, 14) sample_actions in joint space
    true_progress: np.ndarray | None = None  # (n, k)
    predicted_progress: np.ndarray | None = None  # (n, k)
    predicted_with_true_progress: np.ndarray | None = None  # (n, h, 14)


# ---- metrics (pure) ---------------------------------------------------------------------------------------------


def joint_columns() -> tuple[list[int], list[int]]:
    """(arm joint columns, gripper columns) of the 14-dim RoboTwin action, as the converter lays it out."""
    import convert_robotwin_democlean_to_lerobot as converter

    grippers = sorted(converter.GRIPPER_COLUMNS.values())
    return [c for c in range(len(converter.JOINT_NAMES)) if c not in grippers], grippers


def action_errors(predicted: np.ndarray, recorded: np.ndarray, is_pad: np.ndarray) -> dict[str, float]:
    """Mean squared error over the recorded (not padded) steps of every chunk: all joints, arms, grippers."""
    squared = np.square(predicted.astype(np.float64) - recorded.astype(np.float64))[~is_pad]  # (steps, 14)
    arms, grippers = joint_columns()
    return {
        "action_mse": float(squared.mean()),
        "action_mse_arms": float(squared[:, arms].mean()),
        "action_mse_grippers": float(squared[:, grippers].mean()),
    }


def progress_mae(predicted: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute error over frames and progress targets."""
    return float(np.abs(predicted.astype(np.float64) - true.astype(np.float64)).mean())


def checkpoint_metrics(outputs: FrameOutputs, training_mean: np.ndarray | None) -> dict[str, float | None]:
    """Every metric of one checkpoint; the progress ones are None for a model without a progress head."""
    metrics: dict[str, float | None] = dict(action_errors(outputs.predicted, outputs.recorded, outputs.is_pad))
    if outputs.predicted_progress is None:
        return {
            **metrics,
            "progress_mae": None,
            "progress_mae_constant": None,
            "action_mse_true_progress": None,
            "action_mse_true_progress_arms": None,
            "action_mse_true_progress_grippers": None,
        }
    injected = action_errors(outputs.predicted_with_true_progress, outputs.recorded, outputs.is_pad)
    constant = np.broadcast_to(training_mean, outputs.true_progress.shape)
    return {
        **metrics,
        "progress_mae": progress_mae(outputs.predicted_progress, outputs.true_progress),
        "progress_mae_constant": progress_mae(constant, outputs.true_progress),
        **{key.replace("action_mse", "action_mse_true_progress"): value for key, value in injected.items()},
    }


def episode_action_mse(outputs: FrameOutputs, predicted: np.ndarray) -> dict:
    """Action MSE per held-out episode (its frames' recorded steps), the unit the intervals resample."""
    squared = np.square(predicted.astype(np.float64) - outputs.recorded.astype(np.float64)).mean(axis=-1)
    return {
        e: float(squared[outputs.episode == e][~outputs.is_pad[outputs.episode == e]].mean())
        for e in dict.fromkeys(outputs.episode.tolist())
    }


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        ranked = np.empty(len(x))
        ranked[order] = np.arange(len(x))
        for value in np.unique(x):  # ties share their mean rank
            ranked[x == value] = ranked[x == value].mean()
        return ranked

    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def episode_progress_metrics(outputs: FrameOutputs) -> dict[int, dict[str, float | None]]:
    """Per held-out episode: progress MAE, and the rank correlation of predicted with true progress over its frames
    (mean over the targets), which asks only whether the head orders the frames right, as GVL's value-order metric."""
    metrics = {}
    for e in dict.fromkeys(outputs.episode.tolist()):
        rows = outputs.episode == e
        # the K noise draws repeat a frame; its progress prediction is the same, so one copy per frame
        _, first = np.unique(outputs.frame[rows], return_index=True)
        predicted, true = outputs.predicted_progress[rows][first], outputs.true_progress[rows][first]
        correlations = [rank_correlation(predicted[:, k], true[:, k]) for k in range(true.shape[1])]
        correlations = [c for c in correlations if c is not None]
        metrics[e] = {
            "progress_mae": progress_mae(predicted, true),
            "progress_rank_correlation": float(np.mean(correlations)) if correlations else None,
        }
    return metrics


def resample_indices(count: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, count) indices drawn with replacement: one fixed set, shared by every config (paired)."""
    return np.random.default_rng(seed).integers(0, count, size=(resamples, count))


def bootstrap_interval(
    values: np.ndarray, indices: np.ndarray, seed_indices: np.ndarray | None = None, level: float = 0.95
) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of values (episodes, or seeds x episodes) over resampled index
    sets: row r of indices picks the episodes of resample r, row r of seed_indices its seeds (both levels vary)."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    if seed_indices is None:
        seed_indices = np.zeros((len(indices), len(values)), int)
    means = values[seed_indices[:, :, None], indices[:, None, :]].mean(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(
    arm: np.ndarray, baseline: np.ndarray, indices: np.ndarray, seed_indices: np.ndarray | None = None
) -> dict[str, float | list]:
    """Mean of arm - baseline over the same episodes (and seeds, same frames and noise) and its bootstrap interval."""
    difference = np.asarray(arm, np.float64) - np.asarray(baseline, np.float64)
    interval = bootstrap_interval(difference, indices, seed_indices)
    return {"difference": float(difference.mean()), "interval": list(interval)}


def interval_entries(per_episode: dict, baseline: dict | None, resamples: int) -> tuple[dict, dict]:
    """(intervals, versus_baseline) of one config from its per-episode metrics {exp_name: {episode: {metric: v}}}:
    the mean's 95% interval per metric and, against the baseline's seed runs in the same order, the paired
    difference; a metric missing for an episode (a constant progress curve has no rank) leaves it out."""
    runs = list(per_episode.values())
    episodes = sorted(runs[0])
    if len(episodes) * len(runs) < 2:
        # resampling one value gives it back every time: a zero-width interval would claim a certainty never measured
        return {}, unresampled_differences(runs, baseline, episodes)
    indices = resample_indices(len(episodes), resamples)
    seed_indices = resample_indices(len(runs), resamples, seed=1) if len(runs) > 1 else None
    intervals, versus = {}, {}
    for metric in EPISODE_METRICS:
        values = np.array([[run[e].get(metric) for e in episodes] for run in runs], dtype=float)
        if np.isnan(values).any():
            continue
        intervals[metric] = list(bootstrap_interval(values, indices, seed_indices))
        if baseline is not None and metric in next(iter(baseline.values()))[episodes[0]]:
            reference = np.array([[run[e][metric] for e in episodes] for run in baseline.values()], dtype=float)
            if reference.shape == values.shape and not np.isnan(reference).any():
                versus[metric] = paired_difference(values, reference, indices, seed_indices)
    return intervals, versus


def unresampled_differences(runs: list[dict], baseline: dict | None, episodes: list[int]) -> dict:
    """The differences against the baseline of a single episode and run, with no interval (interval None)."""
    if baseline is None:
        return {}
    arm, reference = runs[0][episodes[0]], next(iter(baseline.values()))[episodes[0]]
    return {
        metric: {"difference": float(arm[metric] - reference[metric]), "interval": None}
        for metric in EPISODE_METRICS
        if arm.get(metric) is not None and reference.get(metric) is not None
    }


def clearly_better(versus_baseline: dict | None, lower_is_better: bool = True) -> bool:
    """Best only when the interval of the difference against the baseline excludes 0 on the better side."""
    if not versus_baseline or versus_baseline["interval"] is None:
        return False
    low, high = versus_baseline["interval"]
    return high < 0 if lower_is_better else low > 0


def episode_metrics(outputs: FrameOutputs) -> dict[int, dict[str, float | None]]:
    """Every per-episode metric of one checkpoint (the progress ones only for a model with a head)."""
    metrics = {e: {"action_mse": v} for e, v in episode_action_mse(outputs, outputs.predicted).items()}
    if outputs.predicted_progress is not None:
        for e, v in episode_action_mse(outputs, outputs.predicted_with_true_progress).items():
            metrics[e]["action_mse_true_progress"] = v
        for e, values in episode_progress_metrics(outputs).items():
            metrics[e].update(values)
    return metrics


def evenly_spaced(count: int, wanted: int | None) -> np.ndarray:
    """All indices below count, or `wanted` of them evenly spaced, first and last included."""
    if wanted is None or wanted >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, wanted).round().astype(int))


# ---- rendering (pure) -------------------------------------------------------------------------------------------


def format_value(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def interval_text(interval: list | None) -> str:
    return "[no interval]" if interval is None else f"[{format_value(interval[0])}, {format_value(interval[1])}]"


def render_table(results: dict) -> str:
    """results.md: one row per config; a value in bold where its paired difference against the baseline has a 95%
    interval that excludes 0 on the better side (never the baseline's own, never by ranking alone)."""
    configs = results["configs"]
    episodes = results.get("heldout_labels") or results["heldout_episodes"]
    if results.get("folds"):
        heading = (
            f"Cross-validated over {results['folds']} folds: {results['heldout_frames']} frames of {len(episodes)} "
            "episodes, each evaluated by the checkpoints of the fold that held it out (trained on the other folds)"
        )
    else:
        heading = (
            f"Held-out evaluation: {results['heldout_frames']} frames of episodes "
            f"{', '.join(map(str, episodes))} (trained on {len(results['train_episodes'])} episodes)"
        )
    lines = [
        heading,
        "",
        "| config | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * len(TABLE_COLUMNS),
    ]
    for name, entry in configs.items():
        cells = []
        for key, _ in TABLE_COLUMNS:
            text = format_value(entry.get(key))
            versus = entry.get("versus_baseline", {}).get(key)
            interval = entry.get("intervals", {}).get(key)
            if interval is not None:
                text += " " + interval_text(interval)
            cells.append(f"**{text}**" if key in RANKED_COLUMNS and clearly_better(versus) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ranked = [(n, e) for n, e in configs.items() if e.get("versus_baseline")]
    compared = [m for m in EPISODE_METRICS if any(m in e["versus_baseline"] for _, e in ranked)]
    if ranked:
        lines += ["", "| config | " + " | ".join(f"{m} - baseline" for m in compared) + " |"]
        lines.append("|---|" + "---:|" * len(compared))
        for name, entry in ranked:
            cells = []
            for metric in compared:
                versus = entry["versus_baseline"].get(metric)
                if versus is None:
                    cells.append("n/a")
                    continue
                text = f"{format_value(versus['difference'])} {interval_text(versus['interval'])}"
                better = clearly_better(versus, lower_is_better=metric not in HIGHER_IS_BETTER)
                cells.append(f"**{text}**" if better else text)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += task_table(configs)
    lines += [
        "",
        "Action MSE in joint space (rad; grippers 0-1) against the recorded 50-step chunk; progress MAE in [0, 1];",
        "constant MAE: always predicting the training mean; [low, high]: 95% bootstrap interval over held-out episodes",
        "(and seeds); bold: better than the baseline with the paired difference's 95% interval excluding 0.",
    ]
    if not any(entry.get("intervals") for entry in configs.values()):
        lines.append(
            "No intervals: one held-out episode and one seed give nothing to resample, so no difference above is"
            " evidence (more --heldout episodes, --folds or --seeds give intervals)."
        )
    return "\n".join(lines) + "\n"


def task_table(configs: dict) -> list[str]:
    """The per-task rows (several tasks only): each metric with its interval over the task's episodes, and the
    action error's paired difference against the baseline, bold when its interval excludes 0 on the better side."""
    rows = [(name, task, entry) for name, c in configs.items() for task, entry in c.get("per_task", {}).items()]
    if not rows:
        return []
    metrics = ("action_mse", "progress_mae", "progress_rank_correlation")
    lines = ["", "| config | task | episodes | " + " | ".join(metrics) + " | action_mse - baseline |"]
    lines.append("|---|---|---:|" + "---:|" * (len(metrics) + 1))
    for name, task, entry in rows:
        cells = [str(entry["episodes"])]
        for metric in metrics:
            interval = entry["intervals"].get(metric)
            text = format_value(entry.get(metric))
            cells.append(text if interval is None else f"{text} {interval_text(interval)}")
        versus = entry["versus_baseline"].get("action_mse")
        if versus is None:
            cells.append("n/a")
        else:
            text = f"{format_value(versus['difference'])} {interval_text(versus['interval'])}"
            cells.append(f"**{text}**" if clearly_better(versus) else text)
        lines.append(f"| {name} | {task} | " + " | ".join(cells) + " |")
    return lines


def draw_plots(results: dict, out: pathlib.Path) -> list[pathlib.Path]:
    """progress.png, and metrics_by_step.png where some config has several checkpoints; returns what was drawn."""
    curves = results.get("progress_curves", {})
    histories = {name: entry["history"] for name, entry in results["configs"].items() if len(entry["history"]) > 1}
    if not curves and not histories:
        return []
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    drawn = []
    if curves:
        figure, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.6), squeeze=False)
        for axis, (name, episodes) in zip(axes[0], curves.items()):
            for episode in episodes:
                true, predicted = np.asarray(episode["true"]), np.asarray(episode["predicted"])
                for target in range(true.shape[1]):
                    label = f"ep {episode['episode']}" + (f" {episode['targets'][target]}" if true.shape[1] > 1 else "")
                    (line,) = axis.plot(episode["frame"], true[:, target], label=f"{label} true")
                    axis.plot(episode["frame"], predicted[:, target], "o", ms=3, color=line.get_color(), alpha=0.8)
            axis.set_title(name.removeprefix("pi05_robotwin_progress_"), fontsize=9)
            axis.set_xlabel("frame")
            low = min(0.0, *(min(map(min, episode["predicted"])) for episode in episodes))
            high = max(1.0, *(max(map(max, episode["predicted"])) for episode in episodes))
            axis.set_ylim(low - 0.05, high + 0.05)
            axis.legend(fontsize=6, title="line: true, dots: predicted", title_fontsize=6)
        axes[0][0].set_ylabel("progress")
        figure.tight_layout()
        with atomic_files.temporary_path(out / PROGRESS_PLOT) as path:
            figure.savefig(path, dpi=100, format="png")
        plt.close(figure)
        drawn.append(out / PROGRESS_PLOT)
    if histories:
        figure, axes = plt.subplots(1, len(PLOTTED_METRICS), figsize=(4.5 * len(PLOTTED_METRICS), 3.6), squeeze=False)
        for axis, metric in zip(axes[0], PLOTTED_METRICS):
            for name, history in histories.items():
                points = [(entry["checkpoint_step"], entry[metric]) for entry in history if entry[metric] is not None]
                if points:
                    axis.plot(*zip(*points), "o-", label=name.removeprefix("pi05_robotwin_"))
            axis.set_title(metric, fontsize=9)
            axis.set_xlabel("training step")
            axis.legend(fontsize=6)
        figure.tight_layout()
        with atomic_files.temporary_path(out / STEP_PLOT) as path:
            figure.savefig(path, dpi=100, format="png")
        plt.close(figure)
        drawn.append(out / STEP_PLOT)
    return drawn


# ---- openpi (imported inside functions, after the demo has put its patched copy first on sys.path) --------------


def head_prediction(model, observation):
    """The progress head's prediction (b, k) for a batch, clipped to [0, 1]: exactly what sample_actions conditions
    the actions on (Pi0.predict_progress)."""
    return model.predict_progress(observation)


def sample_actions_with_progress(model, rng, observation, progress, num_steps: int, noise):
    """sample_actions with the given progress (b, k) in place of the head's prediction (Pi0.sample_actions'
    progress argument)."""
    return model.sample_actions(rng, observation, num_steps=num_steps, noise=noise, progress=progress)


def make_evaluate_batch(num_steps: int):
    """One jitted call per batch: the actions, and for a progress model the head's prediction and the actions with
    the true progress injected, all from the same noise.

    A progress model samples once for a doubled batch, the head's prediction injected into the first half and the
    true progress into the second: one sample_actions to compile instead of two. Injecting the head's own
    prediction is what sample_actions does by itself (tests/test_openpi_patch.py checks the adapter for that).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def evaluate_batch(model, observation, actions_shape_like, rng):
        noise = jax.random.normal(rng, actions_shape_like.shape)
        if getattr(model, "progress", None) is None:
            return model.sample_actions(rng, observation, num_steps=num_steps, noise=noise), None, None
        predicted = head_prediction(model, observation)
        if not model.progress.condition_actions:
            # an expert that never sees progress (the nocond ablation): the true progress would change nothing
            actions = model.sample_actions(rng, observation, num_steps=num_steps, noise=noise)
            return actions, predicted, actions
        doubled = lambda x: jnp.concatenate([x, x])  # noqa: E731
        progress = jnp.concatenate([predicted.astype(jnp.float32), observation.aux_targets])
        actions = sample_actions_with_progress(
            model, rng, jax.tree.map(doubled, observation), progress, num_steps, doubled(noise)
        )
        batch = noise.shape[0]
        return actions[:batch], predicted, actions[batch:]

    return evaluate_batch


def read_split(path: pathlib.Path) -> Split:
    try:
        record = json.loads(path.read_text())
        train, heldout = [int(n) for n in record["train_episodes"]], [int(n) for n in record["heldout_episodes"]]
        repo_ids = str(record["repo_id"]), str(record["heldout_repo_id"])
        # Several tasks (run_experiments.sh with several --root) repeat episode numbers across tasks: each task's own.
        tasks = record.get("tasks") or [{"train": train, "heldout": heldout}]
        overlap = any(set(task["train"]) & set(task["heldout"]) for task in tasks)
        labels, task_of = episode_labels(tasks) if len(tasks) > 1 else (heldout, {})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"{path}: not a split record of run_experiments.sh ({error!r})") from None
    if not heldout:
        raise EvaluationError(f"{path}: no held-out episodes")
    if overlap:
        raise EvaluationError(f"{path}: episodes both trained on and held out")
    if len(labels) != len(heldout):
        raise EvaluationError(
            f"{path}: its tasks hold out {len(labels)} episodes, heldout_episodes lists {len(heldout)}"
        )
    return Split(*repo_ids, train, heldout, labels, task_of)


def episode_labels(tasks: list[dict]) -> tuple[list[str], dict[str, str]]:
    """The held-out episodes' labels "task:N" in dataset order (task by task) and each label's task; two roots of
    one task (demo_clean and demo_randomized, say) are told apart by their roots."""
    names = [task["task"] for task in tasks]
    if len(set(names)) < len(names):
        names = [task["root"] for task in tasks]
    labels = [(f"{name}:{n}", name) for name, task in zip(names, tasks) for n in task["heldout"]]
    return [label for label, _ in labels], dict(labels)


def checkpoint_steps(checkpoint_dir: pathlib.Path) -> list[int]:
    """The steps saved under checkpoint_dir (STEP/params, openpi's layout), in order."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit() and (p / "params").is_dir())


def load_checkpoint(config, step_dir: pathlib.Path):
    """(model, norm stats) as openpi's policy_config.create_trained_policy loads them."""
    import jax.numpy as jnp
    from openpi.models import model as _model
    from openpi.training import checkpoints

    model = config.model.load(_model.restore_params(step_dir / "params", dtype=jnp.bfloat16))
    data_config = config.data.create(config.assets_dirs, config.model)
    return model, checkpoints.load_norm_stats(step_dir / "assets", data_config.asset_id)


def stored_means(root: pathlib.Path, names: tuple[str, ...]) -> np.ndarray:
    """The mean of each named one-value feature over a dataset's frames, from the per-episode statistics lerobot
    stored with it, each episode weighted by its frame count (as lerobot's aggregate_stats weights them):
    meta/episodes_stats.jsonl in v2.x, the stats/NAME/mean and stats/NAME/count columns of meta/episodes/*/*.parquet
    in v3.0 (lerobot 0.4.4). Read from the files, so that any lerobot (or none) will do."""
    import pyarrow.parquet as pq

    try:
        version = str(json.loads((root / "meta" / "info.json").read_text()).get("codebase_version", ""))
        if version.startswith("v3."):
            source = root / "meta" / "episodes"
            columns = [f"stats/{name}/{stat}" for name in names for stat in ("mean", "count")]
            tables = [pq.read_table(path, columns=columns).to_pydict() for path in sorted(source.glob("*/*.parquet"))]
            rows = [{name: {stat: t[f"stats/{name}/{stat}"][i] for stat in ("mean", "count")} for name in names}
                    for t in tables for i in range(len(t[columns[0]]))]  # fmt: skip
        else:
            source = root / "meta" / "episodes_stats.jsonl"
            rows = [json.loads(line)["stats"] for line in source.read_text().splitlines() if line.strip()]
        means = np.array([[float(np.ravel(row[name]["mean"])[0]) for name in names] for row in rows])
        counts = np.array([[float(np.ravel(row[name]["count"])[0]) for name in names] for row in rows])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise EvaluationError(
            f"{root}: no per-episode statistics of {', '.join(names)} ({type(e).__name__}: {e})"
        ) from None
    if not rows:
        raise EvaluationError(f"{source}: no episodes")
    return (means * counts).sum(axis=0) / counts.sum(axis=0)


def training_mean(repo_id: str, target: str) -> np.ndarray:
    """The mean progress over the training dataset's frames, from the statistics lerobot stored with it, in the
    dataset openpi's loader opens (HF_LEROBOT_HOME/repo_id)."""
    from norm_stats import dataset_root

    return stored_means(dataset_root(repo_id, None), tuple(experiment_configs.TARGET_COLUMNS[target]))


class HeldoutFrames:
    """The held-out dataset as a config's pipeline reads it, and the frames evaluated; frames are read batch by
    batch (thousands of frames of three cameras would not fit in memory)."""

    def __init__(self, config, split: Split, eval_frames: int | None):
        from openpi.training import data_loader

        self.data_config = dataclasses.replace(
            config.data.create(config.assets_dirs, config.model), repo_id=split.heldout_repo_id
        )
        self.dataset = data_loader.create_torch_dataset(self.data_config, config.model.action_horizon, config.model)
        self.indices = evenly_spaced(len(self.dataset), eval_frames)
        self.episode_labels = split.heldout_labels

    def transforms(self, norm_stats):
        from openpi import transforms

        config = self.data_config
        inputs = transforms.compose(
            [
                *config.repack_transforms.inputs,
                *config.data_transforms.inputs,
                transforms.Normalize(norm_stats, use_quantiles=config.use_quantile_norm),
                *config.model_transforms.inputs,
            ]
        )
        # The policy's output transforms (policy_config.create_trained_policy): back to absolute joints.
        outputs = transforms.compose(
            [
                *config.model_transforms.outputs,
                transforms.Unnormalize(norm_stats, use_quantiles=config.use_quantile_norm),
                *config.data_transforms.outputs,
            ]
        )
        return inputs, outputs


def run_checkpoint(frames: HeldoutFrames, model, norm_stats, evaluate_batch, batch_size: int, seed: int):
    """FrameOutputs of one checkpoint over the held-out frames, in batches padded to one size (one compilation)."""
    import jax
    import jax.numpy as jnp
    from openpi.models import model as _model

    inputs, outputs = frames.transforms(norm_stats)
    key = frames.data_config.action_sequence_keys[0]
    collected: dict[str, list] = {"predicted": [], "progress": [], "injected": [], "true": []}
    recorded, is_pad, episode, frame = [], [], [], []
    for start in range(0, len(frames.indices), batch_size):
        raw = [frames.dataset[int(i)] for i in frames.indices[start : start + batch_size]]
        recorded += [np.asarray(item[key], np.float32) for item in raw]
        is_pad += [np.asarray(item[f"{key}_is_pad"], bool) for item in raw]
        episode += [frames.episode_labels[int(item["episode_index"])] for item in raw]
        frame += [int(item["frame_index"]) for item in raw]
        chunk = [inputs(item) for item in raw]
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)
        batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *chunk)
        observation = _model.Observation.from_dict(batch)
        rng = jax.random.fold_in(jax.random.key(seed), start)
        actions, predicted, injected = evaluate_batch(model, observation, jnp.asarray(batch["actions"]), rng)

        def joint_space(array):
            array = np.asarray(jnp.asarray(array, jnp.float32))
            return [outputs({"state": batch["state"][i], "actions": array[i]})["actions"] for i in range(real)]

        collected["predicted"] += joint_space(actions)
        if predicted is not None:
            collected["progress"].append(np.asarray(jnp.asarray(predicted, jnp.float32))[:real])
            collected["true"].append(np.asarray(batch["aux_targets"])[:real])
            collected["injected"] += joint_space(injected)
    result = FrameOutputs(
        episode=np.array(episode),
        frame=np.array(frame),
        recorded=np.stack(recorded),
        is_pad=np.stack(is_pad),
        predicted=np.stack(collected["predicted"]),
    )
    if collected["progress"]:
        result.predicted_progress = np.concatenate(collected["progress"])
        result.true_progress = np.concatenate(collected["true"])
        result.predicted_with_true_progress = np.stack(collected["injected"])
    return result


def progress_curves(outputs: FrameOutputs, target: str) -> list[dict]:
    """Per held-out episode: frames, true and predicted progress, for the plot."""
    curves = []
    for episode in dict.fromkeys(outputs.episode.tolist()):
        rows = outputs.episode == episode
        curves.append(
            {
                "episode": episode,
                "targets": [name.removeprefix("manip_progress_") for name in experiment_configs.TARGET_COLUMNS[target]],
                "frame": outputs.frame[rows].tolist(),
                "true": outputs.true_progress[rows].round(5).tolist(),
                "predicted": outputs.predicted_progress[rows].round(5).tolist(),
            }
        )
    return curves


def concatenate_outputs(draws: list[FrameOutputs]) -> FrameOutputs:
    """The K noise draws of one checkpoint as one set of frames (each frame K times)."""
    fields = {}
    for field in dataclasses.fields(FrameOutputs):
        parts = [getattr(draw, field.name) for draw in draws]
        fields[field.name] = None if parts[0] is None else np.concatenate(parts)
    return FrameOutputs(**fields)


def evaluation_config(name: str, exp_name: str, args: argparse.Namespace):
    from openpi.training import config as openpi_config

    if args.demo:
        config = train_demo.demo_config(name, args.openpi_out.resolve(), exp_name, 1, args.batch_size)
    else:
        config = dataclasses.replace(openpi_config.get_config(name), exp_name=exp_name)
    if args.checkpoint_base_dir is not None:
        config = dataclasses.replace(config, checkpoint_base_dir=str(args.checkpoint_base_dir))
    return config


def evaluate_config(
    name: str, exp_name: str, args: argparse.Namespace, split: Split, evaluate_batch
) -> tuple[dict, list, dict] | None:
    """The results entry, progress curves and per-episode metrics of one seed run of a config, or None when it has
    no checkpoint."""
    config = evaluation_config(name, exp_name, args)
    if config.data.repo_id != split.repo_id:
        # the held-out episodes are held out from split.repo_id only
        raise EvaluationError(f"{name} trains on {config.data.repo_id}, but the split was made for {split.repo_id}")
    steps = checkpoint_steps(pathlib.Path(config.checkpoint_dir))
    if not steps:
        print(f"{name}: no checkpoint in {config.checkpoint_dir}, not evaluated", flush=True)
        return None
    progress = getattr(config.model, "progress", None)
    mean = training_mean(split.repo_id, progress.target) if progress is not None else None
    frames = HeldoutFrames(config, split, args.eval_frames)
    history, outputs = [], None
    for step in steps:
        started = time.monotonic()
        with cpu_variants.tiny_siglip(train_demo.SIGLIP_VARIANT) if args.demo else contextlib.nullcontext():
            model, norm_stats = load_checkpoint(config, pathlib.Path(config.checkpoint_dir) / str(step))
        # the same K noise draws for every config and seed run: the evaluation seed, not the training one
        draws = [
            run_checkpoint(frames, model, norm_stats, evaluate_batch, args.batch_size, EVALUATION_SEED + draw)
            for draw in range(args.eval_samples)
        ]
        outputs = concatenate_outputs(draws)
        metrics = {"checkpoint_step": step, **checkpoint_metrics(outputs, mean)}
        history.append(metrics)
        shown = ", ".join(f"{key} {format_value(value)}" for key, value in metrics.items() if value is not None)
        print(f"{name}: {shown} ({len(frames.indices)} frames, {time.monotonic() - started:.1f} s)", flush=True)
    entry = {
        **history[-1],
        "eval_frames": len(frames.indices),
        "checkpoint": str(pathlib.Path(config.checkpoint_dir) / str(steps[-1])),
        "progress_training_mean": None if mean is None else mean.tolist(),
        "history": history,
    }
    curves = [] if progress is None else progress_curves(concatenate_outputs(draws[:1]), progress.target)
    return entry, curves, episode_metrics(outputs)


def seed_mean(entries: list[dict]) -> dict:
    """The first seed run's entry with every scalar metric averaged over the seed runs."""
    mean = dict(entries[0])
    for key, value in entries[0].items():
        if isinstance(value, float) and all(isinstance(entry.get(key), float) for entry in entries):
            mean[key] = float(np.mean([entry[key] for entry in entries]))
    return mean


def add_intervals(results: dict, per_episode: dict[str, dict], tasks: dict[str, str]) -> None:
    """Every config's 95% intervals and, if the baseline was evaluated on the same seeds, its paired differences;
    with several tasks (tasks: episode label -> task) the same per task too."""
    baseline = per_episode.get(experiment_configs.BASELINE)
    for name, runs in per_episode.items():
        reference = baseline if name != experiment_configs.BASELINE and baseline is not None else None
        if reference is not None and len(reference) != len(runs):
            reference = None  # pairs need the same seed runs on both sides
        intervals, versus = interval_entries(runs, reference, BOOTSTRAP_RESAMPLES)
        results["configs"][name]["intervals"] = intervals
        results["configs"][name]["versus_baseline"] = versus
        if tasks:
            results["configs"][name]["per_task"] = task_entries(runs, reference, tasks)


def task_entries(runs: dict, baseline: dict | None, tasks: dict[str, str]) -> dict:
    """Per task: its episode count, each metric's mean over its episodes (and seed runs), the interval and the
    paired difference against the baseline, resampling that task's episodes only."""

    def of_task(seed_runs: dict, task: str) -> dict:
        return {exp: {e: m for e, m in run.items() if tasks.get(str(e)) == task} for exp, run in seed_runs.items()}

    entries = {}
    for task in dict.fromkeys(tasks.values()):
        own = of_task(runs, task)
        reference = None if baseline is None else of_task(baseline, task)
        values = [m for run in own.values() for m in run.values()]
        means = {
            metric: float(np.mean([m[metric] for m in values]))
            for metric in EPISODE_METRICS
            if values and all(m.get(metric) is not None for m in values)
        }
        intervals, versus = interval_entries(own, reference, BOOTSTRAP_RESAMPLES)
        episodes = len(next(iter(own.values())))
        entries[task] = {"episodes": episodes, **means, "intervals": intervals, "versus_baseline": versus}
    return entries


def evaluate(args: argparse.Namespace) -> dict:
    split = read_split(args.split)
    evaluate_batch = make_evaluate_batch(args.num_steps)
    results = {
        "train_episodes": split.train_episodes,
        "heldout_episodes": split.heldout_episodes,
        "heldout_labels": split.heldout_labels,
        "episode_tasks": split.tasks,
        "heldout_repo_id": split.heldout_repo_id,
        "heldout_frames": 0,
        "num_steps": args.num_steps,
        "eval_samples": args.eval_samples,
        "exp_names": args.exp_name,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "configs": {},
        "progress_curves": {},
    }
    per_episode: dict[str, dict] = {}
    for name in args.configs:
        entries, runs = [], {}
        for exp_name in args.exp_name:
            evaluated = evaluate_config(name, exp_name, args, split, evaluate_batch)
            if evaluated is None:
                continue
            entry, curves, episodes = evaluated
            entries.append(entry)
            runs[exp_name] = episodes
            if curves and name not in results["progress_curves"]:
                results["progress_curves"][name] = curves
        if not entries:
            continue
        results["configs"][name] = {
            **seed_mean(entries),
            "seed_runs": list(runs),
            "per_episode": {exp: {str(e): v for e, v in episodes.items()} for exp, episodes in runs.items()},
        }
        per_episode[name] = runs
        results["heldout_frames"] = entries[0]["eval_frames"]
    if not results["configs"]:
        raise EvaluationError(f"none of {', '.join(args.configs)} has a checkpoint to evaluate")
    add_intervals(results, per_episode, split.tasks)
    return results


def pool_folds(folds: list[dict], exp_names: list[str], sources: list[str]) -> dict:
    """One results dict from the results of the K folds of a cross-validation (run_experiments.sh --folds K):
    every episode was held out by exactly one fold, so the folds' per-episode metrics together cover every episode
    once; the i-th seed run of every fold becomes exp_names[i]. Intervals and paired differences are recomputed over
    the pooled episodes (and seed runs); a config's scalar metrics are the folds' means weighted by their frames.
    Only configs every fold evaluated are pooled."""
    everywhere = [name for name in folds[0]["configs"] if all(name in fold["configs"] for fold in folds)]
    left_out = sorted({name for fold in folds for name in fold["configs"]} - set(everywhere))
    if left_out:
        print(f"pool: {', '.join(left_out)} not evaluated in every fold, left out", flush=True)
    if not everywhere:
        raise EvaluationError("no config was evaluated in every fold")
    frames = [fold["heldout_frames"] for fold in folds]
    labels = [str(label) for fold in folds for label in fold.get("heldout_labels") or fold["heldout_episodes"]]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise EvaluationError(f"episode(s) {', '.join(twice)} held out by more than one fold: {', '.join(sources)}")
    results = {
        "folds": len(folds),
        "fold_results": sources,
        "train_episodes": [],
        "heldout_episodes": [n for fold in folds for n in fold["heldout_episodes"]],
        "heldout_labels": labels,
        "episode_tasks": {k: v for fold in folds for k, v in fold.get("episode_tasks", {}).items()},
        "heldout_frames": sum(frames),
        "num_steps": folds[0]["num_steps"],
        "eval_samples": folds[0]["eval_samples"],
        "exp_names": exp_names,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "configs": {},
        "progress_curves": {},
    }
    per_episode = {}
    for name in everywhere:
        entries = [fold["configs"][name] for fold in folds]
        if any(len(entry["seed_runs"]) != len(exp_names) for entry in entries):
            counts = ", ".join(str(len(entry["seed_runs"])) for entry in entries)
            raise EvaluationError(f"{name}: the folds hold {counts} seed run(s), --exp-name names {len(exp_names)}")
        runs = {
            exp: {e: m for entry in entries for e, m in entry["per_episode"][entry["seed_runs"][i]].items()}
            for i, exp in enumerate(exp_names)
        }
        pooled = {
            key: float(np.average([entry[key] for entry in entries], weights=frames))
            for key, _ in TABLE_COLUMNS
            if all(isinstance(entry.get(key), float) for entry in entries)
        }
        steps = {entry.get("checkpoint_step") for entry in entries}
        pooled["checkpoint_step"] = steps.pop() if len(steps) == 1 else None
        results["configs"][name] = {
            **{key: None for key, _ in TABLE_COLUMNS},
            **pooled,
            "eval_frames": sum(frames),
            "seed_runs": exp_names,
            "per_episode": runs,
            "history": [],
            "fold_checkpoints": [entry["checkpoint"] for entry in entries],
        }
        per_episode[name] = runs
        curves = [curve for fold in folds for curve in fold.get("progress_curves", {}).get(name, [])]
        if curves:
            results["progress_curves"][name] = curves
    add_intervals(results, per_episode, results["episode_tasks"])
    return results


# ---- command line ------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=pathlib.Path, required=True, metavar="DIR", help="where the results go")
    parser.add_argument("--plots-only", action="store_true", help="draw the plots from DIR/results.json and stop")
    parser.add_argument(
        "--pool-folds",
        type=lambda text: [pathlib.Path(part) for part in text.split(",")],
        metavar="DIR,DIR,...",
        help="pool the results.json of each fold's --out (run_experiments.sh --folds K) into one, with --exp-name",
    )
    parser.add_argument("--configs", type=lambda text: text.split(","), metavar="A,B", help="configs to evaluate")
    parser.add_argument(
        "--exp-name",
        type=lambda text: text.split(","),
        metavar="NAME[,NAME...]",
        help="the experiment name the configs were trained under; one per seed run (e.g. NAME-seed42,NAME-seed43)",
    )
    parser.add_argument("--split", type=pathlib.Path, metavar="FILE", help="run_experiments.sh's split.json")
    parser.add_argument("--eval-frames", type=int, metavar="N", help="N evenly spaced held-out frames (default: all)")
    parser.add_argument("--num-steps", type=int, default=DEFAULT_NUM_STEPS, metavar="N", help="flow-matching steps")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="frames per call")
    parser.add_argument(
        "--eval-samples", type=int, default=1, metavar="K", help="noise draws per frame (default: %(default)s)"
    )
    parser.add_argument(
        "--checkpoint-base-dir", type=pathlib.Path, metavar="DIR", help="where checkpoints are (default: the config's)"
    )
    parser.add_argument("--demo", action="store_true", help="the CPU demo's small variants (train_demo.py)")
    parser.add_argument(
        "--openpi-out",
        type=pathlib.Path,
        default=pathlib.Path("demo_output/openpi"),
        metavar="DIR",
        help="--demo: train_demo.py's --out (default: %(default)s)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write results.json and results.md only")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.pool_folds is not None and (args.exp_name is None or len(args.pool_folds) < 2):
        parser.error("--pool-folds needs two or more folders and --exp-name")
    if not (args.plots_only or args.pool_folds) and None in (args.configs, args.exp_name, args.split):
        parser.error("--configs, --exp-name and --split are needed (or --plots-only, or --pool-folds)")
    if args.configs is not None:
        known = experiment_configs.KNOWN_CONFIGS
        unknown = [name for name in args.configs if name not in known]
        if unknown:
            parser.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name in ("eval_frames", "num_steps", "batch_size", "eval_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def read_results(out: pathlib.Path) -> dict:
    try:
        return json.loads((out / RESULTS_JSON).read_text())
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{out / RESULTS_JSON}: cannot be read ({error})") from None


def run(args: argparse.Namespace, site: pathlib.Path) -> int:
    out = args.out.resolve()
    if args.plots_only:
        for path in draw_plots(read_results(out), out):
            print(f"plot: {path}")
        return 0
    started = time.monotonic()
    if args.pool_folds:
        results = pool_folds([read_results(d.resolve()) for d in args.pool_folds], args.exp_name,
                             [str(d.resolve()) for d in args.pool_folds])  # fmt: skip
    else:
        if args.demo:
            cpu_variants.use_patched_openpi(site)
            print(train_demo.use_some_tokenizer(args.openpi_out.resolve()), flush=True)
        results = evaluate(args)
    atomic_files.write_json(out / RESULTS_JSON, results)
    atomic_files.write_text(out / RESULTS_MD, render_table(results))
    print(f"evaluation: {len(results['configs'])} config(s) in {time.monotonic() - started:.1f} s -> {out}")
    if not args.no_plots:
        for path in draw_plots(results, out):
            print(f"plot: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="openpi-patched.") as site:
            return run(args, pathlib.Path(site))
    except EvaluationError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    # Whatever openpi, jax or lerobot raise becomes one line, as in every tool here; --debug shows the traceback.
    except Exception as error:
        if args.debug:
            raise
        print(f"{PROG}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
