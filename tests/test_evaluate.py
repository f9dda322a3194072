"""openpi_patch/evaluate.py: its metrics against hand-computed cases, the table, the split check and the plots.

The evaluation of real checkpoints runs in tests/test_run_experiments.py's demo test.
"""

import json
import pathlib
import re

import numpy as np
import PIL.Image
import pytest

from openpi_patch import evaluate

HORIZON = 2


def chunk(**columns: float) -> np.ndarray:
    """One (HORIZON, 14) action chunk of zeros with the given columns (c0..c13) set on its first step."""
    actions = np.zeros((HORIZON, 14), np.float32)
    for name, value in columns.items():
        actions[0, int(name[1:])] = value
    return actions


def test_action_errors_split_arms_and_grippers_and_leave_out_padding() -> None:
    recorded = chunk(c0=1.0, c6=2.0)[None]  # one frame: arm joint 0 off by 1, the left gripper by 2
    recorded[0, 1] = 100.0  # the second step is padding: lerobot repeated the last frame, never compared
    predicted = np.zeros_like(recorded)
    is_pad = np.array([[False, True]])

    errors = evaluate.action_errors(predicted, recorded, is_pad)

    # squared errors of the one compared step: 1 in one of 12 arm joints, 4 in one of 2 grippers, over 14 joints
    assert errors["action_mse"] == pytest.approx(5 / 14)
    assert errors["action_mse_arms"] == pytest.approx(1 / 12)
    assert errors["action_mse_grippers"] == pytest.approx(4 / 2)


def test_the_right_gripper_is_column_13() -> None:
    recorded = chunk(c13=3.0)[None]

    errors = evaluate.action_errors(np.zeros_like(recorded), recorded, np.zeros((1, HORIZON), bool))

    assert errors["action_mse_grippers"] == pytest.approx(9 / (2 * HORIZON))
    assert errors["action_mse_arms"] == 0


def frame_outputs(predicted_progress, true_progress, injected_offset: float) -> evaluate.FrameOutputs:
    frames = len(true_progress)
    recorded = np.zeros((frames, HORIZON, 14), np.float32)
    return evaluate.FrameOutputs(
        episode=np.zeros(frames, int),
        frame=np.arange(frames),
        recorded=recorded,
        is_pad=np.zeros((frames, HORIZON), bool),
        predicted=recorded + 1.0,
        true_progress=np.asarray(true_progress, np.float32),
        predicted_progress=np.asarray(predicted_progress, np.float32),
        predicted_with_true_progress=recorded + injected_offset,
    )


def test_progress_metrics_against_a_hand_computed_case() -> None:
    # both true values above the training mean, so the constant's MAE depends on which constant it is
    outputs = frame_outputs([[0.2], [0.7]], [[0.6], [0.8]], injected_offset=0.5)

    metrics = evaluate.checkpoint_metrics(outputs, training_mean=np.array([0.4]))

    assert metrics["progress_mae"] == pytest.approx((0.4 + 0.1) / 2)
    assert metrics["progress_mae_constant"] == pytest.approx((0.2 + 0.4) / 2)
    assert metrics["action_mse"] == pytest.approx(1.0)
    assert metrics["action_mse_true_progress"] == pytest.approx(0.25)


def test_distance_progress_averages_over_both_arms_with_their_own_means() -> None:
    outputs = frame_outputs([[0.5, 0.5]], [[0.0, 1.0]], injected_offset=0.0)

    metrics = evaluate.checkpoint_metrics(outputs, training_mean=np.array([0.1, 0.7]))

    assert metrics["progress_mae"] == pytest.approx(0.5)
    assert metrics["progress_mae_constant"] == pytest.approx((0.1 + 0.3) / 2)


def test_a_model_without_a_head_gets_null_progress_metrics() -> None:
    outputs = frame_outputs([[0.0]], [[0.0]], 0.0)
    outputs.predicted_progress = outputs.true_progress = outputs.predicted_with_true_progress = None

    metrics = evaluate.checkpoint_metrics(outputs, training_mean=None)

    assert metrics["progress_mae"] is None
    assert metrics["progress_mae_constant"] is None
    assert metrics["action_mse_true_progress"] is None
    assert metrics["action_mse"] == pytest.approx(1.0)


def test_evenly_spaced_frames_keep_the_first_and_the_last() -> None:
    assert evaluate.evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    assert evaluate.evenly_spaced(3, None).tolist() == [0, 1, 2]
    assert evaluate.evenly_spaced(3, 8).tolist() == [0, 1, 2]


def results_of(configs: dict, curves: dict | None = None) -> dict:
    return {
        "train_episodes": [0, 1],
        "heldout_episodes": [2],
        "heldout_frames": 3,
        "configs": configs,
        "progress_curves": curves or {},
    }


def entry(step: int, action: float, progress: float | None, true_progress: float | None, history=None) -> dict:
    metrics = {
        "checkpoint_step": step,
        "action_mse": action,
        "action_mse_arms": action,
        "action_mse_grippers": action,
        "progress_mae": progress,
        "progress_mae_constant": None if progress is None else 0.25,
        "action_mse_true_progress": true_progress,
    }
    return {**metrics, "history": history or [metrics]}


def table_rows(results: dict) -> dict[str, list[str]]:
    lines = evaluate.render_table(results).split("\n\n")[1].splitlines()  # the first table only
    return {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in lines
        if line.startswith("| pi05")
    }


def versus(low: float, high: float) -> dict:
    return {"difference": (low + high) / 2, "interval": [low, high]}


def test_the_table_marks_a_value_only_when_its_interval_against_the_baseline_excludes_zero() -> None:
    clear = entry(9, 0.3, 0.2, 0.45)
    clear["versus_baseline"] = {"action_mse": versus(-0.2, -0.01)}
    unclear = entry(9, 0.25, 0.1, 0.4)  # lower still, but its interval holds 0
    unclear["versus_baseline"] = {"action_mse": versus(-0.3, 0.05)}
    results = results_of(
        {
            "pi05_robotwin_progress_lasttoken_time": unclear,
            "pi05_robotwin_progress_specialtoken_time": clear,
            "pi05_robotwin_baseline": entry(9, 0.4, None, None),
        }
    )

    rows = table_rows(results)

    assert rows["pi05_robotwin_progress_specialtoken_time"][1] == "**0.3**"
    assert rows["pi05_robotwin_progress_lasttoken_time"][1] == "0.25"
    # no interval against the baseline, no mark, however low
    assert rows["pi05_robotwin_progress_lasttoken_time"][4] == "0.1"
    assert rows["pi05_robotwin_baseline"][1] == "0.4"
    assert rows["pi05_robotwin_baseline"][4:] == ["n/a", "n/a", "n/a"]
    assert "**" not in rows["pi05_robotwin_progress_lasttoken_time"][5]


def test_the_best_marking_rule_needs_the_interval_on_the_better_side() -> None:
    assert evaluate.clearly_better(versus(-0.2, -0.01))
    assert not evaluate.clearly_better(versus(-0.2, 0.0))
    assert not evaluate.clearly_better(versus(0.01, 0.2))  # clearly worse
    assert evaluate.clearly_better(versus(0.01, 0.2), lower_is_better=False)  # a correlation
    assert not evaluate.clearly_better(None)


def test_the_table_shows_intervals_beside_the_values() -> None:
    arm = entry(9, 0.3, 0.2, 0.45)
    arm["intervals"] = {"action_mse": [0.25, 0.35]}
    rows = table_rows(results_of({"pi05_robotwin_progress_lasttoken_time": arm}))
    assert rows["pi05_robotwin_progress_lasttoken_time"][1] == "0.3 [0.25, 0.35]"


def test_the_bootstrap_interval_is_the_percentile_interval_of_the_resampled_means() -> None:
    values = np.array([1.0, 2.0, 4.0])
    indices = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1]])  # means 1, 7/3, 10/3
    # numpy's linear percentile of three sorted means: 2.5 % at 0.05 of the way from the first to the second,
    # 97.5 % at 0.95 of the way from the second to the third
    low, high = evaluate.bootstrap_interval(values, indices)
    assert low == pytest.approx(1 + 0.05 * (7 / 3 - 1))
    assert high == pytest.approx(7 / 3 + 0.95 * (10 / 3 - 7 / 3))


def test_the_bootstrap_over_every_resample_of_two_episodes() -> None:
    # all four resamples of two episodes: means 1, 2, 2, 3 -> 2.5 % at 0.075 (1.075), 97.5 % at 2.925 (2.925)
    indices = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert evaluate.bootstrap_interval(np.array([1.0, 3.0]), indices) == pytest.approx((1.075, 2.925))


def test_the_bootstrap_resamples_seeds_and_episodes_together() -> None:
    values = np.array([[1.0, 2.0], [5.0, 6.0]])  # two seeds x two episodes
    episodes = np.array([[0, 0], [1, 1]])
    seeds = np.array([[0, 0], [1, 1]])
    # resample 1: seed 0 twice, episode 0 twice -> 1; resample 2: seed 1 twice, episode 1 twice -> 6
    low, high = evaluate.bootstrap_interval(values, episodes, seeds)
    assert (low, high) == pytest.approx((1 + 0.025 * 5, 1 + 0.975 * 5))


def test_the_paired_difference_resamples_the_episodes_of_both_sides_together() -> None:
    arm, baseline = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.5, 3.0])  # differences -1, -0.5, 0
    indices = np.array([[0, 0, 0], [2, 2, 2]])
    paired = evaluate.paired_difference(arm, baseline, indices)
    assert paired["difference"] == pytest.approx(-0.5)
    assert paired["interval"] == pytest.approx([-1 + 0.025, -1 + 0.975])
    # unpaired, the episodes' spread (1 to 3) would swamp a difference that is the same sign in every episode


def test_interval_entries_pair_each_arm_with_the_baseline_episode_by_episode() -> None:
    arm = {"run": {0: {"action_mse": 1.0}, 1: {"action_mse": 3.0}}}
    baseline = {"run": {0: {"action_mse": 2.0}, 1: {"action_mse": 4.0}}}
    intervals, versus_baseline = evaluate.interval_entries(arm, baseline, resamples=200)
    assert 1.0 <= intervals["action_mse"][0] <= intervals["action_mse"][1] <= 3.0
    assert versus_baseline["action_mse"] == {"difference": -1.0, "interval": [-1.0, -1.0]}


def test_one_episode_and_one_seed_give_no_interval_and_no_mark() -> None:
    arm = {"run": {2: {"action_mse": 0.5, "progress_mae": 0.2}}}
    baseline = {"run": {2: {"action_mse": 0.9}}}
    intervals, versus_baseline = evaluate.interval_entries(arm, baseline, resamples=200)
    assert intervals == {}
    assert versus_baseline == {"action_mse": {"difference": pytest.approx(-0.4), "interval": None}}

    lower = entry(9, 0.5, 0.2, 0.45)
    lower["intervals"], lower["versus_baseline"] = intervals, versus_baseline
    table = evaluate.render_table(
        results_of(
            {"pi05_robotwin_progress_lasttoken_time": lower, "pi05_robotwin_baseline": entry(9, 0.9, None, None)}
        )
    )
    assert "| pi05_robotwin_progress_lasttoken_time | -0.4 [no interval] |" in table
    assert "**" not in table
    assert "No intervals: one held-out episode and one seed" in table


def test_rank_correlation_is_spearmans_with_tied_ranks_averaged() -> None:
    assert evaluate.rank_correlation(np.array([0.1, 0.5, 0.2]), np.array([1, 3, 2])) == pytest.approx(1.0)
    assert evaluate.rank_correlation(np.array([3.0, 2.0, 1.0]), np.array([1, 2, 3])) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5) against (1, 2, 3): Pearson of the ranks = 0.866...
    assert evaluate.rank_correlation(np.array([0.0, 1.0, 1.0]), np.array([1, 2, 3])) == pytest.approx(np.sqrt(3) / 2)
    assert evaluate.rank_correlation(np.array([0.5, 0.5]), np.array([1, 2])) is None


def test_per_episode_progress_metrics_count_each_frame_once_across_noise_draws() -> None:
    frames = evaluate.FrameOutputs(
        episode=np.array([7, 7, 7, 7, 8, 8]),
        frame=np.array([0, 1, 0, 1, 0, 1]),  # episode 7 drawn twice
        recorded=np.zeros((6, 1, 14)),
        is_pad=np.zeros((6, 1), bool),
        predicted=np.zeros((6, 1, 14)),
        true_progress=np.array([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]]),
        predicted_progress=np.array([[0.2], [0.6], [0.2], [0.6], [0.9], [0.1]]),
    )
    metrics = evaluate.episode_progress_metrics(frames)
    assert metrics[7] == pytest.approx({"progress_mae": 0.3, "progress_rank_correlation": 1.0})
    assert metrics[8] == pytest.approx({"progress_mae": 0.9, "progress_rank_correlation": -1.0})


def test_a_split_that_trains_on_a_held_out_episode_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "split.json"
    record = {"repo_id": "a/b", "heldout_repo_id": "a/b_heldout", "train_episodes": [0, 1, 2]}
    path.write_text(json.dumps({**record, "heldout_episodes": [2]}))

    with pytest.raises(evaluate.EvaluationError, match="both trained on and held out"):
        evaluate.read_split(path)


def test_a_split_of_several_tasks_checks_each_task_apart(tmp_path: pathlib.Path) -> None:
    # as run_experiments.sh records several roots: episode numbers repeat across tasks, the flat lists in dataset order
    tasks = [
        {"task": "a", "root": "data/a/demo_clean", "train": [0, 1, 2, 3], "heldout": [4]},
        {"task": "b", "root": "data/b/demo_clean", "train": [0, 1], "heldout": [2]},
    ]
    record = {"root": ["data/a/demo_clean", "data/b/demo_clean"], "repo_id": "a/b", "heldout_repo_id": "a/b_heldout",
              "train_episodes": [0, 1, 2, 3, 0, 1], "heldout_episodes": [4, 2], "tasks": tasks}  # fmt: skip
    path, overlapping = tmp_path / "split.json", tmp_path / "overlapping.json"
    path.write_text(json.dumps(record))
    tasks[1]["heldout"] = [1]
    overlapping.write_text(json.dumps({**record, "heldout_episodes": [4, 1], "tasks": tasks}))

    split = evaluate.read_split(path)

    assert (split.train_episodes, split.heldout_episodes) == ([0, 1, 2, 3, 0, 1], [4, 2])
    with pytest.raises(evaluate.EvaluationError, match="both trained on and held out"):
        evaluate.read_split(overlapping)


def test_plots_show_each_experiments_progress_and_the_metrics_by_step(tmp_path: pathlib.Path) -> None:
    history = [entry(4, 0.6, 0.3, 0.5), entry(9, 0.5, 0.2, 0.4)]
    curve = {"episode": 2, "targets": ["time"], "frame": [0, 1, 2], "true": [[0], [0.5], [1]], "predicted": [[0.1]] * 3}
    results = results_of(
        {"pi05_robotwin_progress_lasttoken_time": {**history[-1], "history": history}},
        {"pi05_robotwin_progress_lasttoken_time": [curve]},
    )

    drawn = evaluate.draw_plots(results, tmp_path)

    assert drawn == [tmp_path / evaluate.PROGRESS_PLOT, tmp_path / evaluate.STEP_PLOT]
    for path in drawn:
        with PIL.Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in drawn)


def test_one_checkpoint_per_config_draws_no_step_plot(tmp_path: pathlib.Path) -> None:
    results = results_of({"pi05_robotwin_baseline": entry(9, 0.4, None, None)})

    assert evaluate.draw_plots(results, tmp_path) == []
    assert list(tmp_path.iterdir()) == []


ARM, BASE = "pi05_robotwin_progress_lasttoken_time", "pi05_robotwin_baseline"


def two_task_split(tmp_path: pathlib.Path) -> evaluate.Split:
    """Two tasks holding out the same episode numbers, 4 and 5, as two roots' numbers repeat."""
    tasks = [
        {"task": "a", "root": "data/a/demo_clean", "train": [0, 1, 2, 3], "heldout": [4, 5]},
        {"task": "b", "root": "data/b/demo_clean", "train": [0, 1, 2, 3], "heldout": [4, 5]},
    ]
    record = {"root": ["data/a/demo_clean", "data/b/demo_clean"], "repo_id": "a/b", "heldout_repo_id": "a/b_heldout",
              "train_episodes": [0, 1, 2, 3] * 2, "heldout_episodes": [4, 5, 4, 5], "tasks": tasks}  # fmt: skip
    (tmp_path / "split.json").write_text(json.dumps(record))
    return evaluate.read_split(tmp_path / "split.json")


def test_several_tasks_keep_episodes_of_the_same_number_apart(tmp_path: pathlib.Path) -> None:
    split = two_task_split(tmp_path)
    assert split.heldout_labels == ["a:4", "a:5", "b:4", "b:5"]
    assert split.tasks == {"a:4": "a", "a:5": "a", "b:4": "b", "b:5": "b"}
    # frames of episode 4 of both tasks: each task's own error, not their mixture
    recorded = np.zeros((4, HORIZON, 14), np.float32)
    predicted = recorded + np.array([1.0, 1.0, 3.0, 3.0], np.float32)[:, None, None]
    outputs = evaluate.FrameOutputs(
        episode=np.array(["a:4", "a:4", "b:4", "b:4"]),
        frame=np.array([0, 1, 0, 1]),
        recorded=recorded,
        is_pad=np.zeros((4, HORIZON), bool),
        predicted=predicted,
    )
    assert evaluate.episode_metrics(outputs) == {"a:4": {"action_mse": 1.0}, "b:4": {"action_mse": 9.0}}


def test_several_tasks_get_each_task_its_own_means_intervals_and_differences(tmp_path: pathlib.Path) -> None:
    split = two_task_split(tmp_path)
    arm = {"a:4": 1.0, "a:5": 3.0, "b:4": 10.0, "b:5": 20.0}
    base = {"a:4": 2.0, "a:5": 5.0, "b:4": 10.0, "b:5": 10.0}
    per_episode = {
        name: {"run": {e: {"action_mse": v} for e, v in values.items()}} for name, values in ((ARM, arm), (BASE, base))
    }
    results = results_of({ARM: entry(9, 8.5, 0.2, 8.0), BASE: entry(9, 6.75, None, None)})
    results["heldout_labels"] = split.heldout_labels

    evaluate.add_intervals(results, per_episode, split.tasks)

    a, b = (results["configs"][ARM]["per_task"][task] for task in ("a", "b"))
    assert (a["episodes"], a["action_mse"], b["action_mse"]) == (2, 2.0, 15.0)
    # two episodes: the 2.5 % and 97.5 % points of the resampled means are the smaller and the larger value
    assert a["intervals"]["action_mse"] == [1.0, 3.0]
    assert b["intervals"]["action_mse"] == [10.0, 20.0]
    # differences per episode: a -1, -2; b 0, 10
    assert a["versus_baseline"]["action_mse"] == {"difference": -1.5, "interval": [-2.0, -1.0]}
    assert b["versus_baseline"]["action_mse"] == {"difference": 5.0, "interval": [0.0, 10.0]}
    table = evaluate.render_table(results)
    assert f"| {ARM} | a | 2 | 2 [1, 3] | n/a | n/a | **-1.5 [-2, -1]** |" in table
    assert f"| {ARM} | b | 2 | 15 [10, 20] | n/a | n/a | 5 [0, 10] |" in table
    assert "frames of episodes a:4, a:5, b:4, b:5" in table


def fold_results(labels: list[int], arm: list[float], base: list[float], frames: int) -> dict:
    """What evaluate.py writes for one fold: per config its scalar metrics and per-episode action errors."""

    def config(values: list[float], exp: str) -> dict:
        return {**entry(9, float(np.mean(values)), None, None), "checkpoint": f"ckpt/{exp}", "seed_runs": [exp],
                "per_episode": {exp: {str(e): {"action_mse": v} for e, v in zip(labels, values)}}}  # fmt: skip

    exp = f"name-fold{labels[0] % 2}"
    return {"train_episodes": [], "heldout_episodes": labels, "heldout_labels": [str(e) for e in labels],
            "episode_tasks": {}, "heldout_frames": frames, "num_steps": 10, "eval_samples": 1, "progress_curves": {},
            "configs": {ARM: config(arm, exp), BASE: config(base, exp)}}  # fmt: skip


def test_pooled_folds_cover_every_episode_once_with_intervals_over_all_of_them(tmp_path: pathlib.Path) -> None:
    folds = [fold_results([0, 2], [1.0, 2.0], [2.0, 2.0], 30), fold_results([1, 3], [3.0, 5.0], [4.0, 5.0], 10)]
    dirs = []
    for number, fold in enumerate(folds):
        (tmp_path / f"fold{number}").mkdir()
        (tmp_path / f"fold{number}" / "results.json").write_text(json.dumps(fold))
        dirs.append(str(tmp_path / f"fold{number}"))

    code = evaluate.main(["--pool-folds", ",".join(dirs), "--exp-name", "name", "--out", str(tmp_path / "pooled")])

    assert code == 0
    pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
    assert pooled["folds"] == 2 and pooled["heldout_frames"] == 40
    assert sorted(pooled["heldout_labels"]) == ["0", "1", "2", "3"]
    arm = pooled["configs"][ARM]
    assert arm["per_episode"] == {"name": {"0": {"action_mse": 1.0}, "2": {"action_mse": 2.0},
                                           "1": {"action_mse": 3.0}, "3": {"action_mse": 5.0}}}  # fmt: skip
    # the folds' means (1.5 over 30 frames, 4.0 over 10) weighted by their frames
    assert arm["action_mse"] == pytest.approx((1.5 * 30 + 4.0 * 10) / 40)
    assert arm["fold_checkpoints"] == ["ckpt/name-fold0", "ckpt/name-fold1"]
    # differences -1, 0, -1, 0 over the four episodes: every resample's mean lies in [-1, 0]
    difference = arm["versus_baseline"]["action_mse"]
    assert difference["difference"] == pytest.approx(-0.5)
    assert -1.0 <= difference["interval"][0] < -0.5 < difference["interval"][1] <= 0.0
    assert "Cross-validated over 2 folds: 40 frames of 4 episodes" in (tmp_path / "pooled" / "results.md").read_text()


def test_pooling_refuses_folds_that_hold_out_an_episode_twice(tmp_path: pathlib.Path, capsys) -> None:
    for number, labels in enumerate(([0, 2], [2, 4])):
        (tmp_path / f"fold{number}").mkdir()
        results = fold_results(labels, [1.0, 2.0], [1.0, 2.0], 10)
        (tmp_path / f"fold{number}" / "results.json").write_text(json.dumps(results))
    dirs = f"{tmp_path / 'fold0'},{tmp_path / 'fold1'}"

    assert evaluate.main(["--pool-folds", dirs, "--exp-name", "name", "--out", str(tmp_path / "pooled")]) == 1
    assert "episode(s) 2 held out by more than one fold" in capsys.readouterr().err
    assert not (tmp_path / "pooled").exists()


def parquet_means(dataset: pathlib.Path, names: tuple[str, ...]) -> np.ndarray:
    """Each named column's mean over every frame of the data files, in float64."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(path, columns=list(names)) for path in sorted((dataset / "data").rglob("*.parquet"))]
    return np.array([np.concatenate([t.column(name).to_numpy() for t in tables]).astype(np.float64).mean()
                     for name in names])  # fmt: skip


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
def test_the_training_mean_reads_the_stored_statistics_of_v21_and_v30_alike(tmp_path, monkeypatch) -> None:
    import datasets

    import convert_robotwin_democlean_to_lerobot as converter
    import generate_robotwin_samples

    # Episodes of unequal length: an unweighted mean of the episodes' means would be off.
    root = generate_robotwin_samples.write_demo_clean(tmp_path / "src", episodes=3, frames=40, length_jitter=12)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    repo_id = "test/mean"
    for dataset_format in ("v2.1", "v3.0"):
        argv = ["--root", str(root), "--repo-id", repo_id, "--output-root", str(tmp_path / dataset_format),
                "--workers", "1", "--format", dataset_format]  # fmt: skip
        assert converter.main(argv) == 0
    v30 = tmp_path / "v3.0" / repo_id
    assert json.loads((v30 / "meta" / "info.json").read_text())["codebase_version"] == "v3.0"
    assert not (v30 / "meta" / "episodes_stats.jsonl").exists()
    names = ("manip_progress_distance_left", "manip_progress_distance_right")
    expected = parquet_means(tmp_path / "v2.1" / repo_id, names)
    assert np.allclose(parquet_means(v30, names), expected, rtol=0, atol=1e-12)
    for dataset_format in ("v2.1", "v3.0"):
        np.testing.assert_allclose(evaluate.stored_means(tmp_path / dataset_format / repo_id, names), expected,
                                   rtol=1e-6, err_msg=dataset_format)  # fmt: skip

    # training_mean finds the dataset where openpi's loader does: HF_LEROBOT_HOME/repo_id
    from openpi_patch import norm_stats

    monkeypatch.setattr(norm_stats.lerobot_dataset_module(), "HF_LEROBOT_HOME", tmp_path / "v3.0")
    np.testing.assert_allclose(evaluate.training_mean(repo_id, "distance"), expected, rtol=1e-6)


def test_missing_stored_statistics_are_one_line_naming_the_dataset(tmp_path) -> None:
    meta = tmp_path / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True)
    (meta / "info.json").write_text(json.dumps({"codebase_version": "v3.0"}))
    with pytest.raises(evaluate.EvaluationError, match=f"^{re.escape(str(meta))}/episodes: no episodes$"):
        evaluate.stored_means(tmp_path, ("manip_progress_time",))
    (meta / "info.json").write_text(json.dumps({"codebase_version": "v2.1"}))
    with pytest.raises(evaluate.EvaluationError, match=f"^{re.escape(str(tmp_path))}: no per-episode statistics of "):
        evaluate.stored_means(tmp_path, ("manip_progress_time",))
