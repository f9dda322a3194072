"""openpi_patch/sim_eval.py: deploy files loaded by RoboTwin's and XPolicyLab's rules, run and collect end to end
through a stand-in RoboTwin checkout, the SAPIEN refusal, and the statistics against published or hand-computed values.

The stand-in checkout (written by `robotwin_checkout`) has RoboTwin stable_2.0's (13c3c47) interface, checked
against these lines of its files:
- script/eval_policy.py, `__main__` (lines 356-362): `from test_render import Sapien_TEST; Sapien_TEST()`, then
  `parse_args_and_config()` (327-353: --config YAML, --overrides as `--key value` pairs, each value through eval and
  kept as a string when that fails) and `main(usr_args)`.
- main (64-186): `st_seed = 100000 * (1 + seed)`, `test_num = 100`, `topk = 1`; save_dir (124) is
  `eval_result/{task_name}/{policy_name}/{task_config}/{ckpt_setting}/{current_time}` with current_time from
  `datetime.now().strftime("%Y-%m-%d %H:%M:%S")` (65), made before the evaluation; `_result.txt` (178-183) holds
  `Timestamp: {current_time}\\n\\n`, `Instruction Type: {instruction_type}\\n\\n`, then
  `"\\n".join(map(str, np.array(suc_nums) / test_num))` with no final newline, suc_nums holding one success count.
- eval_policy (189-324): from st_seed on, a seed is skipped when the expert fails it (`now_seed += 1`, no episode);
  otherwise one episode runs on it, then "Success!" or "Fail!" and (317-320) the line
  `f"\\033[93m{task_name}\\033[0m | \\033[94m{policy_name}\\033[0m | \\033[92m{task_config}\\033[0m | "
  f"\\033[91m{ckpt_setting}\\033[0m\\n" f"Success rate: \\033[96m{suc}/{test_num}\\033[0m => "
  f"\\033[95m{round(suc / test_num * 100, 1)}%\\033[0m, current seed: \\033[90m{now_seed}\\033[0m\\n"` (test_num here
  is the running TASK_ENV.test_num), until test_num episodes ran; main calls it with `test_num=test_num`.
- script/test_render.py: Sapien_TEST() prints "Render Well" in green, or on any exception "Render Error" in red and
  calls exit(), status 0; it imports sapien at module level.
- policy/pi05/pi_model.py (lines 34-42): the checkpoint is
  `policy/pi05/checkpoints/{train_config_name}/{model_name}/{checkpoint_id}` relative to the checkout's root, and the
  asset id is `os.listdir(<checkpoint>/assets/)[0]`; policy_config.create_trained_policy then resolves the checkpoint
  path (download.maybe_download: `path.resolve()`) and loads `<checkpoint>/assets/<asset id>` through
  openpi.shared.normalize.load (training/checkpoints.py load_norm_stats, lines 110-114).
The stand-in's environments: the expert fails every seed with seed % 4 == 3; the policy succeeds on the seeds the
test lists in outcomes.json (for its task, when the test lists them per task), after loading its norm stats by
pi_model.py's rule with openpi's own normalize.load.
"""

import json
import math
import os
import pathlib
import sys

import numpy as np
import pytest
import yaml

from openpi_patch import cpu_variants, experiment_configs, sim_eval

ARM = experiment_configs.PROGRESS_ARMS[0]
BASELINE = experiment_configs.BASELINE
REPO_ID = "robotwin/place_dual_shoes"
TASK = "place_dual_shoes"
# With --eval-seed 0 the first seed is 100000; the stand-in's expert fails 100003 (seed % 4 == 3).
FIRST_SIX_SEEDS = [100000, 100001, 100002, 100004, 100005, 100006]


@pytest.fixture(scope="module", autouse=True)
def patched_openpi(tmp_path_factory):
    """These tests import openpi in this process; the copy imported first stays in sys.modules for the test modules
    after this one, which need the patched copy (cpu_variants refuses an unpatched one), so it is that one here too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "path", list(sys.path))
        cpu_variants.use_patched_openpi(tmp_path_factory.mktemp("patched") / "site")
        yield


def openpi_normalize():
    """openpi's normalize module, imported when a test runs: imported at collection, it would put the unpatched
    openpi into sys.modules before the modules that need cpu_variants' patched copy."""
    from openpi.shared import normalize

    return normalize


STAND_IN_EVAL_POLICY = """\
import argparse
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from openpi.shared import normalize


def check_config(name):
    # openpi's get_config raises this for a name the checkout's (patched or not) config.py lacks.
    if f'"{name}"' not in Path("policy/pi05/src/openpi/training/config.py").read_text():
        raise ValueError(f"Config '{name}' not found.")


def load_norm_stats(usr_args):
    # pi_model.py's rule: the first entry of the checkpoint's assets folder is the asset id.
    checkpoint = (f"policy/pi05/checkpoints/{usr_args['train_config_name']}/{usr_args['model_name']}/"
                  f"{usr_args['checkpoint_id']}")
    asset_id = os.listdir(checkpoint + "/assets/")[0]
    return normalize.load(Path(checkpoint).resolve() / "assets" / asset_id)


def main(usr_args):
    current_time = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    save_dir = Path(f"eval_result/{usr_args['task_name']}/{usr_args['policy_name']}/{usr_args['task_config']}/"
                    f"{usr_args['ckpt_setting']}/{current_time}")
    save_dir.mkdir(parents=True, exist_ok=True)
    print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
          "XLA_PYTHON_CLIENT_MEM_FRACTION=" + os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "unset"))
    check_config(usr_args["train_config_name"])
    load_norm_stats(usr_args)
    key = f"{usr_args['train_config_name']}/{usr_args['model_name']}"
    outcomes = json.loads(Path("outcomes.json").read_text())
    task_key = f"{usr_args['task_name']}/{key}"
    solved = set(outcomes[task_key] if task_key in outcomes else outcomes[key])
    test_num = 100
    st_seed = 100000 * (1 + usr_args["seed"])
    st_seed, suc_num = eval_policy(usr_args, solved, st_seed, test_num=test_num)
    suc_nums = [suc_num]
    with open(os.path.join(save_dir, "_result.txt"), "w") as file:
        file.write(f"Timestamp: {current_time}\\n\\n")
        file.write(f"Instruction Type: {usr_args['instruction_type']}\\n\\n")
        file.write("\\n".join(map(str, np.array(suc_nums) / test_num)))


def eval_policy(usr_args, solved, st_seed, test_num=100):
    suc, tested, now_seed = 0, 0, st_seed
    while tested < test_num:
        if now_seed % 4 == 3:
            now_seed += 1
            continue
        if now_seed in solved:
            suc += 1
            print("\\033[92mSuccess!\\033[0m")
        else:
            print("\\033[91mFail!\\033[0m")
        tested += 1
        print(
            f"\\033[93m{usr_args['task_name']}\\033[0m | \\033[94m{usr_args['policy_name']}\\033[0m | "
            f"\\033[92m{usr_args['task_config']}\\033[0m | \\033[91m{usr_args['ckpt_setting']}\\033[0m\\n"
            f"Success rate: \\033[96m{suc}/{tested}\\033[0m => \\033[95m{round(suc / tested * 100, 1)}%\\033[0m, "
            f"current seed: \\033[90m{now_seed}\\033[0m\\n"
        )
        now_seed += 1
    return now_seed, suc


def parse_args_and_config():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--overrides", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    pairs = args.overrides or []
    for key, value in zip(pairs[0::2], pairs[1::2]):
        try:
            value = eval(value)
        except Exception:
            pass
        config[key.lstrip("-")] = value
    return config


if __name__ == "__main__":
    from test_render import Sapien_TEST

    Sapien_TEST()
    main(parse_args_and_config())
"""

RENDERERS = {
    "well": 'def Sapien_TEST():\n    print("\\033[32mRender Well\\033[0m")\n',
    "error": 'def Sapien_TEST():\n    print("\\033[31mRender Error\\033[0m")\n    exit()\n',
    "no_sapien": "import sapien_is_not_installed_here\n",
    "hangs": "import time\ntime.sleep(60)\n",
}


def robotwin_checkout(
    root: pathlib.Path, renderer: str = "well", configs=experiment_configs.ALL_CONFIGS
) -> pathlib.Path:
    (root / "script").mkdir(parents=True)
    (root / "script" / "eval_policy.py").write_text(STAND_IN_EVAL_POLICY)
    (root / "script" / "test_render.py").write_text(RENDERERS[renderer])
    (root / "policy" / "pi05").mkdir(parents=True)
    (root / "policy" / "pi05" / "deploy_policy.py").write_text("")
    training = root / "policy" / "pi05" / "src" / "openpi" / "training"
    training.mkdir(parents=True)
    (training / "config.py").write_text("".join(f'TrainConfig(name="{name}")\n' for name in configs))
    return root


def norm_stats(offset: float) -> dict:
    return {
        "state": openpi_normalize().NormStats(mean=np.arange(14.0) + offset, std=np.ones(14)),
        "actions": openpi_normalize().NormStats(mean=np.arange(14.0) - offset, std=np.full(14, 2.0)),
    }


def trained_checkpoint(
    base: pathlib.Path, config: str, exp_name: str, steps=(999, 1999), orbax_params: bool = False
) -> pathlib.Path:
    """openpi's layout: BASE/CONFIG/EXP/STEP/{params, train_state, assets/<repo id>/norm_stats.json}; the params
    saved by orbax as openpi's save_state saves them (a "params" tree of nnx "value" leaves) when asked."""
    run_dir = base / config / exp_name
    for step in steps:
        step_dir = run_dir / str(step)
        if orbax_params:
            import orbax.checkpoint as ocp

            with ocp.PyTreeCheckpointer() as checkpointer:
                checkpointer.save(step_dir / "params", {"params": {"head": {"value": np.arange(3.0) + step}}})
        else:
            (step_dir / "params").mkdir(parents=True)
            (step_dir / "params" / "_METADATA").write_text(f"params of step {step}")
        (step_dir / "train_state").mkdir()
        openpi_normalize().save(step_dir / "assets" / REPO_ID, norm_stats(step))
    (run_dir / "wandb_id.txt").write_text("x")
    return run_dir


def call(capsys, *argv: str) -> tuple[int, str, str]:
    status = sim_eval.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def deploy(capsys, base: pathlib.Path, out: pathlib.Path, config: str, exp_name: str, *extra: str) -> pathlib.Path:
    status, _, err = call(
        capsys, "deploy", "--checkpoint-base-dir", base, "--config", config, "--exp-name", exp_name,
        "--task", TASK, "--out", out, *extra,
    )  # fmt: skip
    assert status == 0, err
    return out / config / exp_name


def assert_same_stats(loaded: dict, expected: dict) -> None:
    assert loaded.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(loaded[key].mean, expected[key].mean)
        np.testing.assert_array_equal(loaded[key].std, expected[key].std)


# ---- deploy --------------------------------------------------------------------------------------------------------


def robotwin_norm_stats(robotwin: pathlib.Path, deploy_yml: dict) -> dict:
    """RoboTwin stable_2.0 pi_model.py's rule, run from the checkout's root as eval.sh does."""
    cwd = os.getcwd()
    os.chdir(robotwin)
    try:
        checkpoint = (
            f"policy/pi05/checkpoints/{deploy_yml['train_config_name']}/{deploy_yml['model_name']}/"
            f"{deploy_yml['checkpoint_id']}"
        )
        asset_id = os.listdir(f"{checkpoint}/assets/")[0]
        return openpi_normalize().load(pathlib.Path(checkpoint).resolve() / "assets" / asset_id)
    finally:
        os.chdir(cwd)


def xpolicylab_model_root(deploy_yml: dict, policy_dir: pathlib.Path) -> pathlib.Path:
    """XPolicyLab 7198143e Pi_05 model.py _resolve_pi05_model_root with utils/checkpoint_resolver.py's precedence:
    model_path first (relative to policy/Pi_05), the root itself or its children holding params/ or assets/, the
    child whose name is checkpoint_num (leading zeros ignored), else the highest numeric one."""
    root = pathlib.Path(os.path.expanduser(str(deploy_yml["model_path"])))
    root = (root if root.is_absolute() else policy_dir / root).resolve()
    holds = [root] if (root / "params").exists() or (root / "assets").exists() else []
    holds += [child for child in sorted(root.iterdir()) if (child / "params").exists() or (child / "assets").exists()]
    wanted = str(deploy_yml["checkpoint_num"])
    named = [child for child in holds if (child.name.lstrip("0") or "0") == wanted]
    return named[0] if named else max(holds, key=lambda child: int(child.name))


def test_deployed_checkpoint_loads_by_robotwin_pi_model_and_xpolicylab_rules(tmp_path, capsys) -> None:
    base = tmp_path / "checkpoints"
    trained_checkpoint(base, ARM, "exp", orbax_params=True)
    deployed = deploy(capsys, base, tmp_path / "deploy", ARM, "exp")
    robotwin = robotwin_checkout(tmp_path / "RoboTwin")

    # The trained checkpoint itself fails pi_model.py's rule: the asset id it finds is "robotwin".
    original = base / ARM / "exp" / "1999"
    assert os.listdir(original / "assets") == ["robotwin"]
    with pytest.raises(FileNotFoundError):
        openpi_normalize().load(original / "assets" / os.listdir(original / "assets")[0])

    manifest = json.loads((deployed / "deploy.json").read_text())
    assert manifest["step"] == 1999 and manifest["repo_id"] == REPO_ID
    assert manifest["asset_id"] == "robotwin_place_dual_shoes"
    robotwin_yml = yaml.safe_load((deployed / "robotwin" / "deploy_policy.yml").read_text())
    assert robotwin_yml == {
        "policy_name": "pi05", "task_name": TASK, "task_config": "demo_clean", "ckpt_setting": f"{ARM}-exp",
        "seed": None, "instruction_type": "unseen", "train_config_name": ARM, "model_name": "exp",
        "checkpoint_id": 1999, "pi0_step": 50,
    }  # fmt: skip
    link = robotwin / manifest["robotwin"]["checkpoint_link"]
    link.parent.mkdir(parents=True)
    link.symlink_to(deployed / "checkpoint")
    assert_same_stats(robotwin_norm_stats(robotwin, robotwin_yml), norm_stats(1999))
    # The parameters are the trained step's, linked, not copied, and openpi's restore_params reads them there.
    params = robotwin / manifest["robotwin"]["checkpoint_link"] / "1999" / "params"
    assert params.resolve() == (original / "params").resolve()
    from openpi.models import model

    np.testing.assert_array_equal(model.restore_params(params, restore_type=np.ndarray)["head"], np.arange(3.0) + 1999)

    xpolicylab_yml = yaml.safe_load((deployed / "xpolicylab" / "deploy.yml").read_text())
    assert xpolicylab_yml["train_config_name"] == ARM and xpolicylab_yml["policy_name"] == "Pi_05"
    policy_dir = tmp_path / "XPolicyLab" / "policy" / "Pi_05"
    model_root = xpolicylab_model_root(xpolicylab_yml, policy_dir)
    assert model_root == (deployed / "checkpoint" / "1999").resolve()
    assert_same_stats(openpi_normalize().load(model_root / "assets" / xpolicylab_yml["repo_id"]), norm_stats(1999))
    # XPolicyLab's rule also reads the trained checkpoint as it is, given the repo id with its slash.
    original_yml = {**xpolicylab_yml, "model_path": str(base / ARM / "exp"), "repo_id": REPO_ID}
    assert_same_stats(
        openpi_normalize().load(xpolicylab_model_root(original_yml, policy_dir) / "assets" / REPO_ID), norm_stats(1999)
    )


def test_deploy_takes_the_given_step_and_replaces_only_with_overwrite(tmp_path, capsys) -> None:
    base = tmp_path / "checkpoints"
    trained_checkpoint(base, BASELINE, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp", "--step", "999")
    assert json.loads((deployed / "deploy.json").read_text())["step"] == 999
    assert os.listdir(deployed / "checkpoint" / "999" / "assets") == ["robotwin_place_dual_shoes"]

    status, _, err = call(
        capsys, "deploy", "--checkpoint-base-dir", base, "--config", BASELINE, "--exp-name", "exp",
        "--task", TASK, "--out", tmp_path / "deploy",
    )  # fmt: skip
    assert status == 1 and err == f"sim_eval.py: {deployed}: exists; --overwrite replaces it\n"
    deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp", "--overwrite")
    assert json.loads((deployed / "deploy.json").read_text())["step"] == 1999
    assert [path.name for path in deployed.parent.iterdir()] == ["exp"]


def test_deploy_refuses_a_missing_step_and_an_ambiguous_asset_in_one_line(tmp_path, capsys) -> None:
    base = tmp_path / "checkpoints"
    run_dir = trained_checkpoint(base, BASELINE, "exp", steps=(5,))
    openpi_normalize().save(run_dir / "5" / "assets" / "other", norm_stats(0))
    args = ("deploy", "--checkpoint-base-dir", base, "--config", BASELINE, "--exp-name", "exp", "--task", TASK,
            "--out", tmp_path / "deploy")  # fmt: skip
    status, _, err = call(capsys, *args, "--step", "7")
    assert status == 1 and err == f"sim_eval.py: {run_dir / '7' / 'params'}: missing\n"
    status, _, err = call(capsys, *args)
    assert status == 1 and err.count("\n") == 1
    assert f"{run_dir / '5' / 'assets'}: 2 norm_stats.json (other, {REPO_ID}); --repo-id" in err
    assert not (tmp_path / "deploy").exists() or not any((tmp_path / "deploy").rglob("*"))
    deployed = deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp", "--repo-id", "other")
    assert os.listdir(deployed / "checkpoint" / "5" / "assets") == ["other"]


# ---- run and collect -----------------------------------------------------------------------------------------------


def write_outcomes(robotwin: pathlib.Path, solved: dict[tuple[str, ...], list[int]]) -> None:
    """The seeds the stand-in policy solves, per (config, exp name) on every task or per (task, config, exp name)."""
    (robotwin / "outcomes.json").write_text(json.dumps({"/".join(key): seeds for key, seeds in solved.items()}))


def test_run_then_collect_pairs_arms_on_the_same_seeds(tmp_path, capsys) -> None:
    base, deploy_dir, sim_dir = tmp_path / "checkpoints", tmp_path / "deploy", tmp_path / "sim"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin")
    solved = {
        (BASELINE, "exp-seed42"): [100000, 100001],
        (ARM, "exp-seed42"): [100000, 100002, 100004, 100005],
        (BASELINE, "exp-seed43"): [100002],
        (ARM, "exp-seed43"): FIRST_SIX_SEEDS,
    }
    write_outcomes(robotwin, solved)
    for config, exp_name in solved:
        trained_checkpoint(base, config, exp_name)
        deployed = deploy(capsys, base, deploy_dir, config, exp_name)
        status, out, err = call(
            capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", sim_dir, "--trials", 6,
            "--gpu-id", 3, "--python", sys.executable,
        )  # fmt: skip
        assert status == 0, err
        assert out == f"run: {sim_dir.resolve() / config / exp_name}\n"

    record = json.loads((sim_dir / ARM / "exp-seed42" / "run.json").read_text())
    assert [episode["env_seed"] for episode in record["episodes"]] == FIRST_SIX_SEEDS
    assert [episode["success"] for episode in record["episodes"]] == [True, False, True, True, True, False]
    result_file = pathlib.Path(record["result_file"])
    assert (
        result_file.parent.parent
        == robotwin.resolve() / "eval_result" / TASK / "pi05" / "demo_clean" / f"{ARM}-exp-seed42"
    )
    # RoboTwin divides by its fixed 100 whatever the number of trials.
    assert result_file.read_text().split("\n")[4] == "0.04"
    log = (sim_dir / ARM / "exp-seed42" / "eval.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=3 XLA_PYTHON_CLIENT_MEM_FRACTION=0.4" in log

    status, out, _ = call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deploy_dir / ARM / "exp-seed42",
                          "--out", sim_dir, "--trials", 6, "--python", sys.executable)  # fmt: skip
    assert status == 0 and out.startswith("run: skipped (finished")

    status, out, err = call(capsys, "collect", "--sim-dir", sim_dir, "--out", tmp_path / "evaluation")
    assert status == 0, err
    results = json.loads((tmp_path / "evaluation" / "sim_results.json").read_text())
    arm, baseline = results["configs"][ARM], results["configs"][BASELINE]
    assert list(results["configs"]) == [ARM, BASELINE]
    assert (baseline["successes"], baseline["trials"], arm["successes"], arm["trials"]) == (3, 12, 10, 12)
    seed42, seed43 = arm["runs"]
    # seed42: arm only 100002, 100004, 100005; baseline only 100001 -> p = 2 * (1 + 4) / 2**4.
    assert seed42["vs_baseline"] == {
        "pairs": 6, "arm_only": 3, "baseline_only": 1, "unmatched": 0, "difference": 2 / 6,
        "difference_95": pytest.approx([4 / 6 * (2 * 0.19412 - 1), 4 / 6 * (2 * 0.975**0.25 - 1)], abs=1e-4),
        "mcnemar_p": 0.625,
    }  # fmt: skip
    # That interval: Clopper-Pearson of 3 of 4 discordant pairs (P(X >= 3) = 0.025 at 0.19412, P(X <= 3) = 1 - p**4
    # = 0.025 at 0.975**(1/4)), scaled from the arm's share to the difference by 4 / 6.
    # seed43: arm only 5 of 6, baseline only none -> p = 2 / 2**5.
    assert (seed43["vs_baseline"]["arm_only"], seed43["vs_baseline"]["baseline_only"]) == (5, 0)
    assert seed43["vs_baseline"]["mcnemar_p"] == 0.0625
    # Pooled: 8 against 1 discordant pairs -> p = 2 * (1 + 9) / 2**9.
    assert arm["vs_baseline"]["pairs"] == 12 and arm["vs_baseline"]["mcnemar_p"] == 20 / 512
    assert seed42["training_seed"] == 42 and seed42["wilson_95"] == list(sim_eval.wilson_interval(4, 6))
    assert baseline["vs_baseline"] is None
    table = (tmp_path / "evaluation" / "sim_results.md").read_text()
    assert out == table
    assert f"| {ARM} | all 2 | 10/12 | 83.3% |" in table
    # Wilson 4/6 by hand: centre (0.6667 + 0.3201) / 1.6402 = 0.6016, half 1.96 * 0.2524 / 1.6402 = 0.3016.
    assert f"| {ARM} | exp-seed42 | 4/6 | 66.7% | 30.0% - 90.3% | 6 | 3 | 1 | +33.3 | -40.8 to +65.8 | 0.625 |" in table


def test_collect_reports_each_task_on_its_own_seeds_and_pools_the_tasks(tmp_path, capsys) -> None:
    base, deploy_dir, sim_dir = tmp_path / "checkpoints", tmp_path / "deploy", tmp_path / "sim"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin")
    other_arm = experiment_configs.PROGRESS_ARMS[1]
    # Seed numbers repeat from task to task: each task's pairs are its own.
    solved = {
        (TASK, BASELINE, "exp"): [100000, 100001],
        (TASK, ARM, "exp"): [100000, 100002, 100004, 100005],
        (TASK, other_arm, "exp"): [100000],
        ("lift_pot", BASELINE, "exp"): [100006],
        ("lift_pot", ARM, "exp"): FIRST_SIX_SEEDS,
    }
    write_outcomes(robotwin, solved)
    for task, config, exp_name in solved:
        if not (base / config / exp_name).exists():
            trained_checkpoint(base, config, exp_name)
        # The launcher's layout for several tasks: DEPLOY_DIR/TASK/TASK_CONFIG and SIM_DIR/TASK/TASK_CONFIG.
        deployed = deploy(capsys, base, deploy_dir / task / "demo_clean", config, exp_name, "--task", task)
        status, _, err = call(
            capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", sim_dir / task / "demo_clean",
            "--trials", 6, "--python", sys.executable,
        )  # fmt: skip
        assert status == 0, err

    status, out, err = call(capsys, "collect", "--sim-dir", sim_dir, "--out", tmp_path / "evaluation")

    assert status == 0, err
    results = json.loads((tmp_path / "evaluation" / "sim_results.json").read_text())
    assert set(results) == {"baseline", "tasks", "pooled"} and results["baseline"] == BASELINE
    lift_pot, shoes = results["tasks"]
    assert [(block["task"], block["task_config"], block["baseline"]) for block in results["tasks"]] == [
        ("lift_pot", "demo_clean", BASELINE), (TASK, "demo_clean", BASELINE),
    ]  # fmt: skip
    for block in results["tasks"]:
        for entry in block["configs"].values():
            assert [episode["env_seed"] for episode in entry["runs"][0]["episodes"]] == FIRST_SIX_SEEDS
    # place_dual_shoes: arm only 100002, 100004, 100005, baseline only 100001 -> p = 2 * (1 + 4) / 2**4.
    assert shoes["configs"][ARM]["vs_baseline"]["mcnemar_p"] == 0.625
    assert (shoes["configs"][ARM]["successes"], shoes["configs"][BASELINE]["successes"]) == (4, 2)
    # lift_pot: arm only the five seeds other than 100006, baseline only none -> p = 2 / 2**5.
    lift_arm = lift_pot["configs"][ARM]["vs_baseline"]
    assert (lift_arm["arm_only"], lift_arm["baseline_only"], lift_arm["mcnemar_p"]) == (5, 0, 0.0625)
    assert list(lift_pot["configs"]) == [ARM, BASELINE]
    # Pooled: 10 of 12 against 3 of 12; 8 against 1 discordant pairs -> p = 2 * (1 + 9) / 2**9.
    arm, baseline = results["pooled"][ARM], results["pooled"][BASELINE]
    assert arm["tasks"] == ["lift_pot/demo_clean", f"{TASK}/demo_clean"]
    assert (arm["successes"], arm["trials"], baseline["successes"], baseline["trials"]) == (10, 12, 3, 12)
    assert arm["wilson_95"] == list(sim_eval.wilson_interval(10, 12))
    assert (arm["vs_baseline"]["pairs"], arm["vs_baseline"]["arm_only"], arm["vs_baseline"]["baseline_only"]) == (
        12, 8, 1,
    )  # fmt: skip
    assert arm["vs_baseline"]["mcnemar_p"] == 20 / 512 and baseline["vs_baseline"] is None
    assert arm["runs"][0]["exp_name"] == "exp" and arm["runs"][0]["successes"] == 10
    assert results["pooled"][other_arm]["tasks"] == [f"{TASK}/demo_clean"]
    table = (tmp_path / "evaluation" / "sim_results.md").read_text()
    assert out == table
    assert table.startswith(f"Closed-loop success in RoboTwin on 2 tasks: lift_pot (demo_clean), {TASK} (demo_clean);")
    assert (
        f"| {TASK} (demo_clean) | {ARM} | exp | 4/6 | 66.7% | 30.0% - 90.3% | 6 | 3 | 1 | +33.3 | -40.8 to +65.8 | "
        "0.625 |"
    ) in table
    assert f"| lift_pot (demo_clean) | {BASELINE} | exp | 1/6 |" in table
    assert f"| all 2 tasks | {ARM} | exp | 10/12 | 83.3% |" in table
    assert f"| 1 of 2 tasks | {other_arm} | exp | 1/6 |" in table


def test_collect_refuses_a_run_met_twice_on_one_task(tmp_path, capsys) -> None:
    base, sim_dir = tmp_path / "checkpoints", tmp_path / "sim"
    trained_checkpoint(base, BASELINE, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp")
    # Two checkouts: RoboTwin names its result folder by the second, which two runs in one checkout may share.
    for name, out in (("RoboTwin", sim_dir), ("RoboTwin2", sim_dir / TASK / "demo_clean")):
        robotwin = robotwin_checkout(tmp_path / name)
        write_outcomes(robotwin, {(BASELINE, "exp"): [100000]})
        assert call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", out, "--trials", 2,
                    "--python", sys.executable)[0] == 0  # fmt: skip

    status, _, err = call(capsys, "collect", "--sim-dir", sim_dir, "--out", tmp_path / "evaluation")

    assert status == 1 and err.count("\n") == 1
    assert f"{BASELINE}/exp on {TASK}/demo_clean again (also " in err
    assert not (tmp_path / "evaluation").exists()


def test_run_with_robotwins_own_100_trials_calls_its_script_unchanged(tmp_path, capsys) -> None:
    base, sim_dir = tmp_path / "checkpoints", tmp_path / "sim"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin")
    seeds = [seed for seed in range(100000, 100200) if seed % 4 != 3][:100]
    write_outcomes(robotwin, {(BASELINE, "exp"): seeds[::3]})
    trained_checkpoint(base, BASELINE, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp")
    status, _, err = call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", sim_dir,
                          "--python", sys.executable)  # fmt: skip
    assert status == 0, err
    record = json.loads((sim_dir / BASELINE / "exp" / "run.json").read_text())
    assert record["command"][1:] == ["script/eval_policy.py", "--config", str(deployed.resolve() / "robotwin" /
                                     "deploy_policy.yml"), "--overrides", "--seed", "0"]  # fmt: skip
    assert (record["trials"], record["successes"]) == (100, 34)
    assert pathlib.Path(record["result_file"]).read_text().endswith("Instruction Type: unseen\n\n0.34")
    assert [episode["env_seed"] for episode in record["episodes"]] == seeds


@pytest.mark.parametrize(
    ("renderer", "says"),
    [
        ("error", "Render Error"),
        ("no_sapien", "ModuleNotFoundError: No module named 'sapien_is_not_installed_here'"),
        ("hangs", "did not finish within 1 s"),
    ],
)
def test_run_refuses_in_one_line_when_sapien_cannot_render(tmp_path, capsys, renderer, says) -> None:
    base = tmp_path / "checkpoints"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin", renderer=renderer)
    trained_checkpoint(base, ARM, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", ARM, "exp")
    status, _, err = call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", tmp_path / "sim",
                          "--python", sys.executable, "--probe-timeout", 1)  # fmt: skip
    assert status == 1 and err.count("\n") == 1
    assert err.startswith("sim_eval.py: SAPIEN cannot render: ") and says in err
    assert not (tmp_path / "sim").exists()
    assert not (robotwin / "eval_result").exists() and not (robotwin / "policy" / "pi05" / "checkpoints").exists()


def test_run_reports_a_failed_evaluation_in_one_line_with_its_last_words(tmp_path, capsys) -> None:
    base = tmp_path / "checkpoints"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin", configs=(BASELINE,))
    trained_checkpoint(base, ARM, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", ARM, "exp")
    status, _, err = call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", tmp_path / "sim",
                          "--python", sys.executable)  # fmt: skip
    log = tmp_path / "sim" / ARM / "exp" / "eval.log"
    assert status == 1
    assert err == (
        f"sim_eval.py: RoboTwin's evaluation exited with 1: ValueError: Config '{ARM}' not found. (see {log})\n"
    )
    assert not (tmp_path / "sim" / ARM / "exp" / "run.json").exists()


def test_collect_refuses_a_run_whose_result_file_disagrees(tmp_path, capsys) -> None:
    base, sim_dir = tmp_path / "checkpoints", tmp_path / "sim"
    robotwin = robotwin_checkout(tmp_path / "RoboTwin")
    write_outcomes(robotwin, {(BASELINE, "exp"): [100000]})
    trained_checkpoint(base, BASELINE, "exp")
    deployed = deploy(capsys, base, tmp_path / "deploy", BASELINE, "exp")
    assert call(capsys, "run", "--robotwin-dir", robotwin, "--deploy", deployed, "--out", sim_dir, "--trials", 2,
                "--python", sys.executable)[0] == 0  # fmt: skip
    result_file = pathlib.Path(json.loads((sim_dir / BASELINE / "exp" / "run.json").read_text())["result_file"])
    result_file.write_text(result_file.read_text().replace("0.01", "0.02"))
    status, _, err = call(capsys, "collect", "--sim-dir", sim_dir, "--out", tmp_path / "evaluation")
    assert status == 1 and "disagrees with" in err and err.count("\n") == 1
    assert not (tmp_path / "evaluation").exists()


# ---- statistics ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval without continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_matches_newcombes_table(successes, trials, low, high) -> None:
    assert [round(bound, 4) for bound in sim_eval.wilson_interval(successes, trials)] == [low, high]


@pytest.mark.parametrize(
    ("arm_only", "baseline_only", "p"),
    # 2 * P(X <= min) for X ~ Binomial(b + c, 1/2), capped at 1.
    [(1, 6, 2 * (1 + 7) / 2**7), (0, 5, 2 / 2**5), (2, 10, 2 * (1 + 12 + 66) / 2**12), (3, 3, 1.0), (0, 0, 1.0)],
)
def test_exact_mcnemar_against_hand_computed_binomial_tails(arm_only, baseline_only, p) -> None:
    assert sim_eval.mcnemar_exact_p(arm_only, baseline_only) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    # 0 and n successes in closed form (1 - 0.025**(1/n), 0.025**(1/n)); 3 of 10 as in textbook tables.
    [(0, 5, 0.0, 1 - 0.025**0.2), (5, 5, 0.025**0.2, 1.0), (3, 10, 0.0667, 0.6525)],
)
def test_clopper_pearson_against_closed_forms_and_tables(successes, trials, low, high) -> None:
    assert sim_eval.clopper_pearson(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_paired_difference_interval_excludes_zero_exactly_when_mcnemar_rejects() -> None:
    for arm_only in range(16):
        for baseline_only in range(16 - arm_only):
            interval = sim_eval.paired_difference_interval(arm_only, baseline_only, 20)
            if arm_only + baseline_only == 0:
                assert interval is None
                continue
            assert interval[0] <= (arm_only - baseline_only) / 20 <= interval[1]
            assert (interval[0] > 0 or interval[1] < 0) == (sim_eval.mcnemar_exact_p(arm_only, baseline_only) < 0.05)


def test_power_figures_against_hand_computed_formulas_and_enumeration() -> None:
    # 0.5 vs 0.6: (1.95996 * sqrt(2 * .55 * .45) + .84162 * sqrt(.25 + .24))^2 / .01 = 387.3.
    assert sim_eval.unpaired_trials(0.5, 0.1) == 388
    # Connor: (1.95996 * sqrt(.2) + .84162 * sqrt(.2 - .01))^2 / .01 = 154.6.
    assert sim_eval.paired_trials(0.1, 0.2) == 155
    # The exact test's power at 12 pairs, by enumerating every (arm only, baseline only, concordant) split.
    arm_share, baseline_share, concordant = 0.35, 0.05, 0.6
    enumerated = sum(
        math.factorial(12) / (math.factorial(b) * math.factorial(c) * math.factorial(12 - b - c))
        * arm_share**b * baseline_share**c * concordant ** (12 - b - c)
        for b in range(13) for c in range(13 - b) if sim_eval.mcnemar_exact_p(b, c) < 0.05
    )  # fmt: skip
    assert sim_eval.exact_mcnemar_power(12, 0.3, 0.4) == pytest.approx(enumerated, rel=1e-9)
