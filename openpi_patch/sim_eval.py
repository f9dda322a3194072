"""Closed-loop evaluation in RoboTwin 2.0's simulator: deploy files, RoboTwin's own rollouts, one table with intervals.

    python openpi_patch/sim_eval.py deploy --checkpoint-base-dir DIR --config CONFIG --exp-name NAME --task TASK
                                           --out DEPLOY_DIR [--task-config demo_clean] [--step N] [--repo-id ID]
                                           [--overwrite]
    python openpi_patch/sim_eval.py run --robotwin-dir ROBOTWIN --deploy DEPLOY_DIR/CONFIG/NAME --out SIM_DIR
                                        [--trials 100] [--eval-seed 0] [--gpu-id G] [--python PYTHON]
                                        [--probe-timeout S] [--overwrite]
    python openpi_patch/sim_eval.py collect --sim-dir SIM_DIR --out EVAL_DIR [--baseline CONFIG]
    python openpi_patch/sim_eval.py power [--base-rate 0.5] [--differences 0.1,0.2] [--discordance 0.2,0.3,0.5]

deploy: for the trained checkpoint DIR/CONFIG/NAME/STEP (openpi's layout; the latest step unless --step) writes
DEPLOY_DIR/CONFIG/NAME/ with
  checkpoint/STEP/params                    a link to the trained parameters (not copied: they are gigabytes)
  checkpoint/STEP/assets/ASSET/norm_stats.json
                                            the checkpoint's norm stats under a one-component name, ASSET = the repo
                                            id with '/' turned into '_': RoboTwin stable_2.0's pi_model.py takes the
                                            first entry of assets/ as the asset id, which for the repo id
                                            robotwin/place_dual_shoes is `robotwin`, a folder without norm_stats.json
  robotwin/deploy_policy.yml                the file RoboTwin's script/eval_policy.py reads with --config
                                            (policy pi05, task, train_config_name, model_name, checkpoint_id, ...)
  xpolicylab/deploy.yml                     XPolicyLab policy/Pi_05's deploy.yml (train_config_name, repo_id = ASSET,
                                            model_path = checkpoint/, checkpoint_num = STEP); copy it over
                                            XPolicyLab/policy/Pi_05/deploy.yml, which its scripts read
  deploy.json                               what was deployed, and RoboTwin's eval.sh arguments for a run by hand
run: evaluates one deployed checkpoint with RoboTwin's own script/eval_policy.py from the checkout ROBOTWIN, as its
policy/pi05/eval.sh does (from the checkout's root, XLA_PYTHON_CLIENT_MEM_FRACTION=0.4, CUDA_VISIBLE_DEVICES =
--gpu-id, or the one SLURM set, or 0; the checkout's openpi, policy/pi05/src, patched by openpi_patch/apply.py):
first it checks that SAPIEN renders (RoboTwin's own check, script/test_render.py, in a subprocess of --python within
--probe-timeout seconds); then it links ROBOTWIN/policy/pi05/checkpoints/CONFIG/NAME
to the deployed checkpoint, where pi_model.py looks, and runs the evaluation. eval_policy.py starts at environment
seed 100000 x (1 + --eval-seed) and keeps the seeds on which RoboTwin's expert succeeds until it has --trials of
them, so every arm evaluated with the same --eval-seed meets the same seeds (collect checks it). It hard-codes 100
trials; another --trials runs the same script through a loader that passes that number to its eval_policy()
(RoboTwin's file then still divides the successes by 100). Writes SIM_DIR/CONFIG/NAME/eval.log (RoboTwin's output,
live) and, when RoboTwin wrote its result file, run.json (the result file's path, the success count, each
episode's environment seed and outcome, read from the per-episode lines RoboTwin prints, since it records no
per-episode outcome in a file). A run with a run.json is skipped unless --overwrite.
collect: reads every SIM_DIR/CONFIG/NAME/run.json (one task) and SIM_DIR/TASK/TASK_CONFIG/CONFIG/NAME/run.json
(several, as the launcher lays them out) and RoboTwin's result file each names into EVAL_DIR/sim_results.json and
EVAL_DIR/sim_results.md: per task, config and run the success rate with its Wilson 95% interval, and against the
baseline's run of the same NAME on the same task the episodes paired by environment seed: the two discordant counts,
the difference in success rate with its 95% interval given the discordant pairs (it excludes 0 exactly when the test
rejects) and the exact McNemar p-value (pooled over the NAMEs for the config's row). With several tasks, also each
config and run pooled over its tasks: the episodes of every task counted once, each task's pairs summed.
power: the trials per arm needed to resolve a difference in success rate, unpaired and paired (docs/sim_eval.md).

Errors are one line on stderr and exit status 1; --debug shows the traceback. Details: docs/sim_eval.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import time

# experiment_configs sits next to this file, atomic_files one level up.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))
import experiment_configs  # noqa: E402

import atomic_files  # noqa: E402

PROG = "sim_eval.py"
DEPLOY_JSON = "deploy.json"
RUN_JSON = "run.json"
EVAL_LOG = "eval.log"
RESULTS_JSON = "sim_results.json"
RESULTS_MD = "sim_results.md"
# RoboTwin stable_2.0 (13c3c47): the policy folder eval.sh names, its fixed trial count, the first environment seed.
ROBOTWIN_POLICY = "pi05"
ROBOTWIN_TEST_NUM = 100
SEED_STRIDE = 100_000
# deploy_policy.yml's other fields, at RoboTwin's defaults: the instruction set, and actions executed per inference.
INSTRUCTION_TYPE = "unseen"
PI0_STEP = 50
# XPolicyLab 7198143e policy/Pi_05/deploy.yml's fields other than the checkpoint's, at its defaults.
XPOLICYLAB_DEFAULTS = {
    "policy_name": "Pi_05",
    "protocol": "ws",
    "host": "localhost",
    "port": 6000,
    "bench_name": None,
    "task_name": None,
    "env_cfg_type": None,
    "seed": None,
    "eval_batch": True,
    "action_type": "joint",
    "obs_transform_pipeline": "xspark-v1.0",
    "result_dir": "./results/pi05/",
    "policy_uv_env_path": "openpi",
}
# eval.sh's environment for the evaluation (it caps JAX at 40% of the GPU so SAPIEN's renderer has room).
EVAL_ENVIRONMENT = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.4", "PYTHONWARNINGS": "ignore::UserWarning"}
# RoboTwin's own render check, run as eval_policy.py runs it before anything else (it prints one of two words).
RENDER_PROBE = "import sys; sys.path.insert(0, 'script'); from test_render import Sapien_TEST; Sapien_TEST()"
RENDER_OK = "Render Well"
# Runs eval_policy.py as its __main__ block does, with another trial count: argv = [trials, script, its arguments].
TRIALS_LOADER = """\
import importlib.util, sys
trials, script = int(sys.argv[1]), sys.argv[2]
sys.argv = sys.argv[2:]
sys.path.insert(0, 'script')
spec = importlib.util.spec_from_file_location('eval_policy', script)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
robotwin_eval_policy = module.eval_policy
def eval_policy(*args, **kwargs):
    kwargs['test_num'] = trials
    return robotwin_eval_policy(*args, **kwargs)
module.eval_policy = eval_policy
from test_render import Sapien_TEST
Sapien_TEST()
module.main(module.parse_args_and_config())
"""
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# eval_policy.py prints after every episode: "Success rate: SUC/TESTED => PCT%, current seed: SEED" (colours removed).
EPISODE_LINE = re.compile(r"^Success rate: (\d+)/(\d+) => [0-9.]+%, current seed: (\d+)$")
SEED_SUFFIX = re.compile(r"-seed(\d+)$")
Z_95 = statistics.NormalDist().inv_cdf(0.975)


class SimEvalError(Exception):
    """A problem with the user's input or environment; the message names the file and what is wrong."""


# ---- statistics ----------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion; stays inside [0, 1] and is sound at 0 or n successes."""
    if trials == 0:
        return (0.0, 1.0)
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def binomial_pmf(n: int, k: int, p: float) -> float:
    if p in (0.0, 1.0):
        return float(k == (n if p == 1.0 else 0))
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)
    return math.exp(log)


def binomial_tail(successes: int, trials: int, p: float, upper: bool) -> float:
    """P(X >= successes) when upper, else P(X <= successes), for X ~ Binomial(trials, p)."""
    counts = range(successes, trials + 1) if upper else range(successes + 1)
    return sum(binomial_pmf(trials, k, p) for k in counts)


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact interval: the rates at which each one-sided binomial tail is alpha / 2 (by bisection)."""

    def solve(tail, rising: bool) -> float:
        low, high = 0.0, 1.0
        for _ in range(60):
            middle = (low + high) / 2
            if (tail(middle) < alpha / 2) == rising:
                low = middle
            else:
                high = middle
        return (low + high) / 2

    lower = 0.0 if successes == 0 else solve(lambda p: binomial_tail(successes, trials, p, upper=True), True)
    upper = 1.0 if successes == trials else solve(lambda p: binomial_tail(successes, trials, p, upper=False), False)
    return (lower, upper)


def paired_difference_interval(arm_only: int, baseline_only: int, pairs: int) -> tuple[float, float] | None:
    """95% interval of the paired difference in success rate, given the discordant pairs: Clopper-Pearson on the
    arm's share b / (b + c), scaled by (b + c) / pairs. It excludes 0 exactly when the exact McNemar p is below 0.05;
    it treats the share of discordant pairs as known. None without a discordant pair."""
    discordant = arm_only + baseline_only
    if discordant == 0:
        return None
    low, high = clopper_pearson(arm_only, discordant)
    return (discordant / pairs * (2 * low - 1), discordant / pairs * (2 * high - 1))


def mcnemar_exact_p(arm_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar test: the smaller discordant count against Binomial(b + c, 1/2), doubled."""
    discordant = arm_only + baseline_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(arm_only, baseline_only) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def z_scores(alpha: float, power: float) -> tuple[float, float]:
    """The normal quantiles of a two-sided test at alpha and of the power."""
    normal = statistics.NormalDist()
    return normal.inv_cdf(1 - alpha / 2), normal.inv_cdf(power)


def unpaired_trials(base_rate: float, difference: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Trials per arm for a two-sided two-proportion z-test (normal approximation, no continuity correction)."""
    other = base_rate + difference
    pooled = (base_rate + other) / 2
    z_alpha, z_beta = z_scores(alpha, power)
    root = z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_beta * math.sqrt(
        base_rate * (1 - base_rate) + other * (1 - other)
    )
    return math.ceil(root**2 / difference**2)


def paired_trials(difference: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Pairs (= trials per arm) for McNemar's test, Connor's (1987) approximation; discordance: P(outcomes differ)."""
    z_alpha, z_beta = z_scores(alpha, power)
    root = z_alpha * math.sqrt(discordance) + z_beta * math.sqrt(discordance - difference**2)
    return math.ceil(root**2 / difference**2)


def mcnemar_rejection_bound(discordant: int, alpha: float) -> int:
    """The largest k for which b = k (or b = discordant - k) rejects at alpha; -1 when none does."""
    bound, tail = -1, 0.0
    for k in range(discordant // 2 + 1):
        tail += binomial_pmf(discordant, k, 0.5)
        if 2 * tail >= alpha:
            break
        bound = k
    return bound


def exact_mcnemar_power(pairs: int, difference: float, discordance: float, alpha: float = 0.05) -> float:
    """Power of the exact McNemar test: the number of discordant pairs is binomial, the arm's share among them too."""
    arm_share = (discordance + difference) / (2 * discordance)
    power = 0.0
    for discordant in range(pairs + 1):
        bound = mcnemar_rejection_bound(discordant, alpha)
        if bound < 0:
            continue
        rejected = sum(binomial_pmf(discordant, b, arm_share) for b in range(bound + 1)) + sum(
            binomial_pmf(discordant, b, arm_share) for b in range(discordant - bound, discordant + 1)
        )
        power += binomial_pmf(pairs, discordant, discordance) * rejected
    return power


def exact_paired_trials(difference: float, discordance: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """The fewest pairs at which the exact McNemar test reaches the power (it is conservative, so above Connor's)."""
    pairs = max(1, paired_trials(difference, discordance, alpha, power) // 2)
    while exact_mcnemar_power(pairs, difference, discordance, alpha) < power:
        pairs += 1
    return pairs


# ---- deploy --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Deployment:
    config: str
    exp_name: str
    step: int
    source: str
    repo_id: str
    asset_id: str
    task: str
    task_config: str

    @property
    def ckpt_setting(self) -> str:
        """RoboTwin's result folder name: eval.sh uses the model name alone, which every config shares here."""
        return f"{self.config}-{self.exp_name}"


def latest_step(run_dir: pathlib.Path) -> int:
    steps = [int(path.name) for path in run_dir.iterdir() if path.name.isdigit() and (path / "params").is_dir()]
    if not steps:
        raise SimEvalError(f"{run_dir}: no checkpoint (a numeric step folder with params/)")
    return max(steps)


def checkpoint_repo_id(step_dir: pathlib.Path, wanted: str | None) -> str:
    """The asset id openpi saved the norm stats under (assets/<repo id>/norm_stats.json)."""
    assets = step_dir / "assets"
    found = sorted(path.parent.relative_to(assets).as_posix() for path in assets.rglob("norm_stats.json"))
    if wanted is not None:
        if wanted not in found:
            raise SimEvalError(f"{assets / wanted / 'norm_stats.json'}: missing (found: {', '.join(found) or 'none'})")
        return wanted
    if len(found) != 1:
        raise SimEvalError(
            f"{assets}: {len(found)} norm_stats.json ({', '.join(found) or 'none'}); --repo-id names the one to deploy"
        )
    return found[0]


def flat_asset_id(repo_id: str) -> str:
    return repo_id.replace("/", "_")


def yaml_scalar(value: object) -> str:
    """A YAML 1.1 scalar: JSON's strings are valid double-quoted YAML, null/true/false/ints as YAML spells them."""
    return json.dumps(value)


def render_yaml(header: str, fields: dict[str, object]) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    return "\n".join([*lines, *(f"{key}: {yaml_scalar(value)}" for key, value in fields.items())]) + "\n"


def robotwin_fields(deployment: Deployment) -> dict[str, object]:
    """deploy_policy.yml as eval_policy.py and deploy_policy.py read it; run overrides only the seed."""
    return {
        "policy_name": ROBOTWIN_POLICY,
        "task_name": deployment.task,
        "task_config": deployment.task_config,
        "ckpt_setting": deployment.ckpt_setting,
        "seed": None,
        "instruction_type": INSTRUCTION_TYPE,
        "train_config_name": deployment.config,
        "model_name": deployment.exp_name,
        "checkpoint_id": deployment.step,
        "pi0_step": PI0_STEP,
    }


def xpolicylab_fields(deployment: Deployment, checkpoint_root: pathlib.Path) -> dict[str, object]:
    """model_path is the explicit key XPolicyLab's checkpoint resolver honours first; checkpoint_num picks the step."""
    return {
        **XPOLICYLAB_DEFAULTS,
        "train_config_name": deployment.config,
        "repo_id": deployment.asset_id,
        "checkpoint_num": deployment.step,
        "model_path": str(checkpoint_root),
    }


def robotwin_link(deployment: Deployment) -> str:
    """Where pi_model.py looks for the checkpoint, relative to the RoboTwin checkout (its working directory)."""
    return f"policy/{ROBOTWIN_POLICY}/checkpoints/{deployment.config}/{deployment.exp_name}"


def deploy_manifest(deployment: Deployment) -> dict:
    return {
        **dataclasses.asdict(deployment),
        "ckpt_setting": deployment.ckpt_setting,
        "robotwin": {
            "checkpoint_link": robotwin_link(deployment),
            "eval_sh_args": [deployment.task, deployment.task_config, deployment.config, deployment.exp_name],
            "deploy_policy_yml": "robotwin/deploy_policy.yml",
        },
        "xpolicylab": {"deploy_yml": "xpolicylab/deploy.yml"},
    }


def write_deploy_folder(folder: pathlib.Path, final: pathlib.Path, deployment: Deployment) -> None:
    """Fills folder (a temporary name) with what final will hold; paths written into files name final."""
    step_source = pathlib.Path(deployment.source)
    step_dir = folder / "checkpoint" / str(deployment.step)
    (step_dir / "assets" / deployment.asset_id).mkdir(parents=True)
    (step_dir / "params").symlink_to((step_source / "params").resolve(), target_is_directory=True)
    shutil.copyfile(
        step_source / "assets" / deployment.repo_id / "norm_stats.json",
        step_dir / "assets" / deployment.asset_id / "norm_stats.json",
    )
    header = f"Written by openpi_patch/sim_eval.py deploy: {deployment.config}/{deployment.exp_name}/{deployment.step}."
    (folder / "robotwin").mkdir()
    (folder / "robotwin" / "deploy_policy.yml").write_text(
        render_yaml(
            f"{header}\nRoboTwin stable_2.0: script/eval_policy.py --config this file.", robotwin_fields(deployment)
        )
    )
    (folder / "xpolicylab").mkdir()
    (folder / "xpolicylab" / "deploy.yml").write_text(
        render_yaml(
            f"{header}\nXPolicyLab: copy over policy/Pi_05/deploy.yml.",
            xpolicylab_fields(deployment, final / "checkpoint"),
        )
    )
    (folder / DEPLOY_JSON).write_text(json.dumps(deploy_manifest(deployment), indent=2) + "\n")


def deploy(args: argparse.Namespace) -> pathlib.Path:
    run_dir = args.checkpoint_base_dir / args.config / args.exp_name
    if not run_dir.is_dir():
        raise SimEvalError(f"{run_dir}: no such checkpoint folder (CHECKPOINT_BASE/CONFIG/EXP_NAME)")
    step = args.step if args.step is not None else latest_step(run_dir)
    step_dir = run_dir / str(step)
    if not (step_dir / "params").is_dir():
        raise SimEvalError(f"{step_dir / 'params'}: missing")
    repo_id = checkpoint_repo_id(step_dir, args.repo_id)
    deployment = Deployment(
        config=args.config,
        exp_name=args.exp_name,
        step=step,
        source=str(step_dir.resolve()),
        repo_id=repo_id,
        asset_id=flat_asset_id(repo_id),
        task=args.task,
        task_config=args.task_config,
    )
    final = (args.out / args.config / args.exp_name).resolve()
    if final.exists() and not args.overwrite:
        raise SimEvalError(f"{final}: exists; --overwrite replaces it")
    old = atomic_files.hidden_name(final)
    if final.exists():
        final.rename(old)
    try:
        with atomic_files.temporary_path(final) as folder:
            write_deploy_folder(folder, final, deployment)
    except BaseException:
        if old.exists():
            old.rename(final)
        raise
    atomic_files.remove(old)
    return final


# ---- run -----------------------------------------------------------------------------------------------------------


def read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SimEvalError(f"{path}: cannot be read ({error})") from None


def check_checkout(robotwin: pathlib.Path) -> None:
    for relative in ("script/eval_policy.py", "script/test_render.py", f"policy/{ROBOTWIN_POLICY}/deploy_policy.py"):
        if not (robotwin / relative).is_file():
            raise SimEvalError(f"{robotwin}: not a RoboTwin checkout ({relative} missing)")


def probe_render(robotwin: pathlib.Path, python: str, timeout: float) -> None:
    """Refuses before any model loads when SAPIEN cannot render (eval_policy.py would print 'Render Error', exit 0)."""
    try:
        probe = subprocess.run(
            [python, "-c", RENDER_PROBE], cwd=robotwin, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise SimEvalError(
            f"SAPIEN cannot render: {robotwin}/script/test_render.py did not finish within {timeout:g} s"
        ) from None
    except OSError as error:
        raise SimEvalError(f"SAPIEN cannot render: {python}: {error.strerror}") from None
    said = ANSI_ESCAPE.sub("", probe.stdout + probe.stderr).strip().splitlines()
    if probe.returncode != 0 or RENDER_OK not in probe.stdout:
        last = said[-1] if said else f"exit status {probe.returncode}"
        raise SimEvalError(f"SAPIEN cannot render: {robotwin}/script/test_render.py with {python}: {last}")


def link_checkpoint(robotwin: pathlib.Path, deployment: Deployment, deploy_dir: pathlib.Path) -> pathlib.Path:
    """RoboTwin's checkpoint path becomes a link to the deployed copy; a real folder there is never replaced."""
    link = robotwin / robotwin_link(deployment)
    if link.exists() and not link.is_symlink():
        raise SimEvalError(f"{link}: exists and is not a link; move it away to evaluate {deployment.exp_name} here")
    link.parent.mkdir(parents=True, exist_ok=True)
    temporary = atomic_files.hidden_name(link)
    temporary.symlink_to(deploy_dir / "checkpoint", target_is_directory=True)
    os.replace(temporary, link)
    return link


def eval_command(python: str, deploy_dir: pathlib.Path, trials: int, eval_seed: int) -> list[str]:
    arguments = [
        "--config",
        str(deploy_dir / "robotwin" / "deploy_policy.yml"),
        "--overrides",
        "--seed",
        str(eval_seed),
    ]
    if trials == ROBOTWIN_TEST_NUM:
        return [python, "script/eval_policy.py", *arguments]
    return [python, "-c", TRIALS_LOADER, str(trials), "script/eval_policy.py", *arguments]


def eval_environment(gpu_id: str | None) -> dict[str, str]:
    environment = {**os.environ, **EVAL_ENVIRONMENT, "PYTHONUNBUFFERED": "1"}
    environment["CUDA_VISIBLE_DEVICES"] = gpu_id or os.environ.get("CUDA_VISIBLE_DEVICES") or "0"
    return environment


def result_folder(robotwin: pathlib.Path, deployment: Deployment) -> pathlib.Path:
    """eval_policy.py's save_dir without its last part: eval_result/TASK/POLICY/TASK_CONFIG/CKPT_SETTING/<time>."""
    return (
        robotwin / "eval_result" / deployment.task / ROBOTWIN_POLICY / deployment.task_config / deployment.ckpt_setting
    )


def result_files(folder: pathlib.Path) -> set[pathlib.Path]:
    return set(folder.glob("*/_result.txt")) if folder.is_dir() else set()


def read_result_file(path: pathlib.Path) -> dict:
    """_result.txt: 'Timestamp: T', blank, 'Instruction Type: I', blank, one success rate per line (successes/100)."""
    try:
        lines = path.read_text().split("\n")
    except OSError as error:
        raise SimEvalError(f"{path}: cannot be read ({error.strerror})") from None
    if len(lines) < 5 or not lines[0].startswith("Timestamp: ") or not lines[2].startswith("Instruction Type: "):
        raise SimEvalError(f"{path}: not a RoboTwin result file (Timestamp and Instruction Type lines expected)")
    try:
        rates = [float(line) for line in lines[4:] if line.strip()]
    except ValueError:
        raise SimEvalError(f"{path}: a success rate that is not a number") from None
    if len(rates) != 1:
        raise SimEvalError(f"{path}: {len(rates)} success rates; one evaluation writes one")
    return {
        "timestamp": lines[0].removeprefix("Timestamp: "),
        "instruction_type": lines[2].removeprefix("Instruction Type: "),
        "successes": round(rates[0] * ROBOTWIN_TEST_NUM),
    }


def read_episodes(log: pathlib.Path) -> list[dict]:
    """Each episode's environment seed and outcome from the running count eval_policy.py prints after it."""
    episodes: list[dict] = []
    successes = 0
    for line in ANSI_ESCAPE.sub("", log.read_text(errors="replace")).splitlines():
        match = EPISODE_LINE.match(line.strip())
        if match is None:
            continue
        count, tested, seed = (int(group) for group in match.groups())
        if tested != len(episodes) + 1 or count - successes not in (0, 1):
            raise SimEvalError(f"{log}: episode line out of sequence: {line.strip()!r}")
        episodes.append({"env_seed": seed, "success": count > successes})
        successes = count
    return episodes


def git_commit(folder: pathlib.Path) -> str | None:
    try:
        answer = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return answer.stdout.strip() if answer.returncode == 0 else None


def deployment_from(deploy_dir: pathlib.Path) -> Deployment:
    manifest = read_json(deploy_dir / DEPLOY_JSON)
    fields = {field.name for field in dataclasses.fields(Deployment)}
    try:
        return Deployment(**{key: manifest[key] for key in fields})
    except KeyError as error:
        raise SimEvalError(f"{deploy_dir / DEPLOY_JSON}: no {error.args[0]!r}; deploy again") from None


def last_line(path: pathlib.Path) -> str:
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", path.read_text(errors="replace")).splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


def evaluate_in_checkout(
    command: list[str], robotwin: pathlib.Path, deployment: Deployment, log: pathlib.Path, gpu_id: str | None
) -> pathlib.Path:
    """Runs RoboTwin's evaluation; returns the result file it wrote, the one that was not there before."""
    folder = result_folder(robotwin, deployment)
    before = result_files(folder)
    with open(log, "w") as output:
        finished = subprocess.run(
            command, cwd=robotwin, env=eval_environment(gpu_id), stdout=output, stderr=subprocess.STDOUT
        )
    new = sorted(result_files(folder) - before)
    if finished.returncode != 0:
        raise SimEvalError(f"RoboTwin's evaluation exited with {finished.returncode}: {last_line(log)} (see {log})")
    if not new:
        raise SimEvalError(f"RoboTwin's evaluation wrote no _result.txt under {folder}: {last_line(log)} (see {log})")
    return new[-1]


def checked_episodes(log: pathlib.Path, result_file: pathlib.Path, trials: int) -> tuple[int, list[dict]]:
    """The success count of the result file and the episodes of the log, which must agree."""
    successes = read_result_file(result_file)["successes"]
    episodes = read_episodes(log)
    counted = sum(episode["success"] for episode in episodes)
    if len(episodes) != trials or counted != successes:
        raise SimEvalError(
            f"{log}: {len(episodes)} episodes, {counted} successes; {result_file} says {successes} of {trials} trials"
        )
    return successes, episodes


def run(args: argparse.Namespace) -> pathlib.Path | None:
    deploy_dir = args.deploy.resolve()
    deployment = deployment_from(deploy_dir)
    robotwin = args.robotwin_dir.resolve()
    out = (args.out / deployment.config / deployment.exp_name).resolve()
    if (out / RUN_JSON).exists() and not args.overwrite:
        return None
    check_checkout(robotwin)
    probe_render(robotwin, args.python, args.probe_timeout)
    link_checkpoint(robotwin, deployment, deploy_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_JSON).unlink(missing_ok=True)
    command = eval_command(args.python, deploy_dir, args.trials, args.eval_seed)
    started = time.monotonic()
    result_file = evaluate_in_checkout(command, robotwin, deployment, out / EVAL_LOG, args.gpu_id)
    successes, episodes = checked_episodes(out / EVAL_LOG, result_file, args.trials)
    atomic_files.write_json(
        out / RUN_JSON,
        {
            "config": deployment.config,
            "exp_name": deployment.exp_name,
            "checkpoint_step": deployment.step,
            "deploy": str(deploy_dir),
            "robotwin_dir": str(robotwin),
            "robotwin_commit": git_commit(robotwin),
            "task": deployment.task,
            "task_config": deployment.task_config,
            "eval_seed": args.eval_seed,
            "first_env_seed": SEED_STRIDE * (1 + args.eval_seed),
            "trials": args.trials,
            "ckpt_setting": deployment.ckpt_setting,
            "command": command,
            "result_file": str(result_file),
            "successes": successes,
            "seconds": round(time.monotonic() - started, 1),
            "episodes": episodes,
        },
    )
    return out


# ---- collect -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pairing:
    pairs: int
    arm_only: int
    baseline_only: int
    unmatched: int

    @property
    def difference(self) -> float | None:
        return (self.arm_only - self.baseline_only) / self.pairs if self.pairs else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return paired_difference_interval(self.arm_only, self.baseline_only, self.pairs) if self.pairs else None

    @property
    def p_value(self) -> float | None:
        return mcnemar_exact_p(self.arm_only, self.baseline_only) if self.pairs else None

    def __add__(self, other: Pairing) -> Pairing:
        return Pairing(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def pair_episodes(arm: list[dict], baseline: list[dict]) -> Pairing:
    """Episodes matched by environment seed; a seed only one run met is counted as unmatched, not paired."""
    arm_outcomes = {episode["env_seed"]: episode["success"] for episode in arm}
    baseline_outcomes = {episode["env_seed"]: episode["success"] for episode in baseline}
    common = arm_outcomes.keys() & baseline_outcomes.keys()
    return Pairing(
        pairs=len(common),
        arm_only=sum(arm_outcomes[seed] and not baseline_outcomes[seed] for seed in common),
        baseline_only=sum(baseline_outcomes[seed] and not arm_outcomes[seed] for seed in common),
        unmatched=len(arm_outcomes.keys() ^ baseline_outcomes.keys()),
    )


RUN_KEYS = ("config", "exp_name", "task", "task_config", "eval_seed", "trials", "result_file", "successes", "episodes")


def read_run(path: pathlib.Path) -> dict:
    """run.json, checked against the RoboTwin result file it names."""
    record = read_json(path)
    missing = [key for key in RUN_KEYS if key not in record]
    if missing:
        raise SimEvalError(f"{path}: no {', '.join(missing)}; run it again with --overwrite")
    result = read_result_file(pathlib.Path(record["result_file"]))
    if result["successes"] != record["successes"] or len(record["episodes"]) != record["trials"]:
        raise SimEvalError(f"{path}: disagrees with {record['result_file']}; run it again with --overwrite")
    return record


def training_seed(exp_name: str) -> int | None:
    match = SEED_SUFFIX.search(exp_name)
    return int(match.group(1)) if match else None


def rate_entry(successes: int, trials: int) -> dict:
    low, high = wilson_interval(successes, trials)
    return {"successes": successes, "trials": trials, "success_rate": successes / trials, "wilson_95": [low, high]}


def pairing_entry(pairing: Pairing) -> dict:
    interval = pairing.interval
    return {
        **dataclasses.asdict(pairing),
        "difference": pairing.difference,
        "difference_95": list(interval) if interval else None,
        "mcnemar_p": pairing.p_value,
    }


def config_order(name: str) -> tuple[int, str]:
    known = experiment_configs.ALL_CONFIGS
    return (known.index(name) if name in known else len(known), name)


def task_label(task: str, task_config: str) -> str:
    """A task as the launcher's folders and --sim-task name it."""
    return f"{task}/{task_config}"


def read_runs(sim_dir: pathlib.Path) -> list[dict]:
    """Every run.json of SIM_DIR/CONFIG/NAME (one task) and SIM_DIR/TASK/TASK_CONFIG/CONFIG/NAME (several); a run
    met twice on one task is refused, as its pairing would be ambiguous."""
    paths = sorted([*sim_dir.glob(f"*/*/{RUN_JSON}"), *sim_dir.glob(f"*/*/*/*/{RUN_JSON}")])
    if not paths:
        raise SimEvalError(f"{sim_dir}: no */*/{RUN_JSON} nor */*/*/*/{RUN_JSON} (sim_eval.py run writes them)")
    seen: dict[tuple[str, ...], pathlib.Path] = {}
    records = []
    for path in paths:
        record = read_run(path)
        key = (record["task"], record["task_config"], record["config"], record["exp_name"])
        if key in seen:
            raise SimEvalError(
                f"{path}: {record['config']}/{record['exp_name']} on {task_label(*key[:2])} again (also {seen[key]})"
            )
        seen[key] = path
        records.append(record)
    return records


def collect_task(records: list[dict], baseline: str) -> dict:
    """One task's runs: per config and run the rate, and the pairs with the baseline's run of the same name."""
    by_config: dict[str, dict[str, dict]] = {}
    for record in records:
        by_config.setdefault(record["config"], {})[record["exp_name"]] = record
    baseline_runs = by_config.get(baseline, {})
    configs = {}
    for config in sorted(by_config, key=config_order):
        runs, total = [], Pairing(0, 0, 0, 0)
        for exp_name, record in sorted(by_config[config].items()):
            entry = {
                "exp_name": exp_name,
                "training_seed": training_seed(exp_name),
                "checkpoint_step": record["checkpoint_step"],
                "eval_seed": record["eval_seed"],
                "result_file": record["result_file"],
                **rate_entry(record["successes"], record["trials"]),
            }
            if config != baseline and exp_name in baseline_runs:
                pairing = pair_episodes(record["episodes"], baseline_runs[exp_name]["episodes"])
                entry["vs_baseline"] = pairing_entry(pairing)
                total = total + pairing
            entry["episodes"] = record["episodes"]
            runs.append(entry)
        pooled = rate_entry(sum(run["successes"] for run in runs), sum(run["trials"] for run in runs))
        configs[config] = {**pooled, "vs_baseline": pairing_entry(total) if total.pairs else None, "runs": runs}
    first = records[0]
    return {
        "task": first["task"],
        "task_config": first["task_config"],
        "baseline": baseline if baseline in by_config else None,
        "configs": configs,
    }


def entry_pairing(entry: dict | None) -> Pairing:
    """The counts of a vs_baseline entry (none: no pair)."""
    if entry is None:
        return Pairing(0, 0, 0, 0)
    return Pairing(*(entry[field.name] for field in dataclasses.fields(Pairing)))


def pooled_entry(parts: list[tuple[str, dict]]) -> dict:
    """(task, entry) parts pooled: their successes and trials summed (Wilson on the sum), their pairs summed."""
    pairing = sum((entry_pairing(entry.get("vs_baseline")) for _, entry in parts), Pairing(0, 0, 0, 0))
    return {
        "tasks": [task for task, _ in parts],
        **rate_entry(sum(entry["successes"] for _, entry in parts), sum(entry["trials"] for _, entry in parts)),
        "vs_baseline": pairing_entry(pairing) if pairing.pairs else None,
    }


def pool_tasks(blocks: list[dict]) -> dict:
    """Per config over the tasks it ran on: every episode counted once, and each task's pairs (matched by seed
    within the task, whose seeds repeat from task to task) summed; per run the same over its tasks."""
    pooled = {}
    names = {config for block in blocks for config in block["configs"]}
    for config in sorted(names, key=config_order):
        parts = [
            (task_label(b["task"], b["task_config"]), b["configs"][config]) for b in blocks if config in b["configs"]
        ]
        by_run: dict[str, list[tuple[str, dict]]] = {}
        for task, entry in parts:
            for run in entry["runs"]:
                by_run.setdefault(run["exp_name"], []).append((task, run))
        runs = [
            {"exp_name": exp_name, "training_seed": training_seed(exp_name), **pooled_entry(run_parts)}
            for exp_name, run_parts in sorted(by_run.items())
        ]
        pooled[config] = {**pooled_entry(parts), "runs": runs}
    return pooled


def collect(sim_dir: pathlib.Path, baseline: str) -> dict:
    """One task: its table as ever. Several: each task's table under tasks, and every config pooled over tasks."""
    by_task: dict[tuple[str, str], list[dict]] = {}
    for record in read_runs(sim_dir):
        by_task.setdefault((record["task"], record["task_config"]), []).append(record)
    blocks = [collect_task(by_task[task], baseline) for task in sorted(by_task)]
    if len(blocks) == 1:
        return blocks[0]
    return {
        "baseline": baseline if any(block["baseline"] for block in blocks) else None,
        "tasks": blocks,
        "pooled": pool_tasks(blocks),
    }


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def comparison_cells(entry: dict | None) -> list[str]:
    if entry is None:
        return [""] * 6
    unmatched = f" ({entry['unmatched']} unmatched)" if entry["unmatched"] else ""
    interval = entry["difference_95"]
    return [
        f"{entry['pairs']}{unmatched}",
        str(entry["arm_only"]),
        str(entry["baseline_only"]),
        f"{100 * entry['difference']:+.1f}",
        f"{100 * interval[0]:+.1f} to {100 * interval[1]:+.1f}" if interval else "no discordant pair",
        f"{entry['mcnemar_p']:.3g}",
    ]


def table_row(lead: list[str], label: str, entry: dict, comparison: dict | None) -> str:
    low, high = entry["wilson_95"]
    cells = [
        *lead,
        label,
        f"{entry['successes']}/{entry['trials']}",
        percent(entry["success_rate"]),
        f"{percent(low)} - {percent(high)}",
        *comparison_cells(comparison),
    ]
    return "| " + " | ".join(cells) + " |"


def config_rows(configs: dict, lead: list[str]) -> list[str]:
    """Per config its row over its runs (when several), then one row per run; lead: the cells before the config."""
    lines = []
    for config, entry in configs.items():
        if len(entry["runs"]) > 1:
            lines.append(table_row([*lead, config], f"all {len(entry['runs'])}", entry, entry["vs_baseline"]))
        for run_entry in entry["runs"]:
            lines.append(table_row([*lead, config], run_entry["exp_name"], run_entry, run_entry.get("vs_baseline")))
    return lines


TABLE_COLUMNS = (
    "| config | run | successes | rate | Wilson 95% | pairs | arm only | baseline only | difference | 95% | McNemar p |"
)
TABLE_ALIGNMENT = "|---|---|---:|---:|---|---:|---:|---:|---:|---|---:|"


def render_table(results: dict) -> str:
    if "tasks" in results:
        return render_tasks_table(results)
    lines = [
        f"Closed-loop success in RoboTwin: {results['task']} ({results['task_config']}), baseline "
        f"{results['baseline'] or 'not evaluated'}. Pairs: episodes on the same environment seed as the baseline's "
        "run of the same name; arm only / baseline only: the pairs only one of them solved; difference in points "
        "with its 95% interval given the discordant pairs; exact McNemar p (two-sided).",
        "",
        TABLE_COLUMNS,
        TABLE_ALIGNMENT,
        *config_rows(results["configs"], []),
    ]
    return "\n".join(lines) + "\n"


def render_tasks_table(results: dict) -> str:
    """Several tasks: each task's rows, then each config pooled over the tasks it ran on."""
    tasks = results["tasks"]
    names = [f"{block['task']} ({block['task_config']})" for block in tasks]
    lines = [
        f"Closed-loop success in RoboTwin on {len(tasks)} tasks: {', '.join(names)}; baseline "
        f"{results['baseline'] or 'not evaluated'}. Pairs: episodes on the same task and environment seed as the "
        "baseline's run of the same name; arm only / baseline only: the pairs only one of them solved; difference in "
        "points with its 95% interval given the discordant pairs; exact McNemar p (two-sided). Pooled rows (all N "
        "tasks, or K of N where a config ran on fewer): every episode of those tasks counted once, the Wilson "
        "interval on the pooled count, the pairs of every task summed.",
        "",
        f"| task {TABLE_COLUMNS}",
        f"|---{TABLE_ALIGNMENT}",
    ]
    for name, block in zip(names, tasks):
        lines += config_rows(block["configs"], [name])
    for config, entry in results["pooled"].items():
        covered = len(entry["tasks"])
        pooled = f"all {covered} tasks" if covered == len(tasks) else f"{covered} of {len(tasks)} tasks"
        lines += config_rows({config: entry}, [pooled])
    return "\n".join(lines) + "\n"


# ---- power ---------------------------------------------------------------------------------------------------------


def render_power(base_rate: float, differences: list[float], discordances: list[float]) -> str:
    lines = [
        f"Trials per arm, two-sided test at alpha 0.05 with power 0.8, baseline success rate {percent(base_rate)}.",
        "",
        "| difference | unpaired (two-proportion z) | discordance | paired (McNemar, Connor) | paired (exact test) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for difference in differences:
        unpaired = unpaired_trials(base_rate, difference)
        for discordance in discordances:
            if discordance <= difference:
                continue
            lines.append(
                f"| {100 * difference:.0f} points | {unpaired} | {discordance:g} | "
                f"{paired_trials(difference, discordance)} | {exact_paired_trials(difference, discordance)} |"
            )
    return "\n".join(lines) + "\n"


# ---- command line --------------------------------------------------------------------------------------------------


def fraction_list(text: str) -> list[float]:
    values = [float(part) for part in text.split(",")]
    if not all(0 < value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text}: fractions between 0 and 1 expected")
    return values


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a positive integer expected")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary, _, manual = __doc__.partition("\n")
    parser = argparse.ArgumentParser(
        prog=PROG, description=summary, epilog=manual, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    deploy_parser = commands.add_parser("deploy", help="write the deploy files of one trained checkpoint")
    deploy_parser.add_argument("--checkpoint-base-dir", type=pathlib.Path, required=True, metavar="DIR")
    deploy_parser.add_argument("--config", required=True, help="the train config name")
    deploy_parser.add_argument("--exp-name", required=True, help="the experiment name it trained under")
    deploy_parser.add_argument("--task", required=True, help="the RoboTwin task to evaluate, e.g. place_dual_shoes")
    deploy_parser.add_argument("--task-config", default="demo_clean", help="RoboTwin task_config (%(default)s)")
    deploy_parser.add_argument("--step", type=int, help="the checkpoint step (default: the latest)")
    deploy_parser.add_argument("--repo-id", help="the asset id to deploy when the checkpoint holds several")
    deploy_parser.add_argument("--out", type=pathlib.Path, required=True, metavar="DEPLOY_DIR")
    deploy_parser.add_argument("--overwrite", action="store_true", help="replace an existing deploy folder")

    run_parser = commands.add_parser("run", help="RoboTwin's closed-loop evaluation of one deployed checkpoint")
    run_parser.add_argument(
        "--robotwin-dir", type=pathlib.Path, required=True, metavar="ROBOTWIN", help="a RoboTwin checkout, patched"
    )
    run_parser.add_argument("--deploy", type=pathlib.Path, required=True, metavar="DEPLOY_DIR/CONFIG/NAME")
    run_parser.add_argument("--out", type=pathlib.Path, required=True, metavar="SIM_DIR")
    run_parser.add_argument("--trials", type=positive_int, default=ROBOTWIN_TEST_NUM, help="episodes (%(default)s)")
    run_parser.add_argument("--eval-seed", type=int, default=0, help="RoboTwin's seed argument (%(default)s)")
    run_parser.add_argument("--gpu-id", help="CUDA_VISIBLE_DEVICES for the run (default: as set, else 0)")
    run_parser.add_argument("--python", default="python", help="the checkout's interpreter (%(default)s, as eval.sh)")
    run_parser.add_argument(
        "--probe-timeout", type=float, default=300, metavar="S", help="render check limit (%(default)s)"
    )
    run_parser.add_argument("--overwrite", action="store_true", help="evaluate again a run that has a run.json")

    collect_parser = commands.add_parser("collect", help="every run's result into sim_results.json and .md")
    collect_parser.add_argument("--sim-dir", type=pathlib.Path, required=True, metavar="SIM_DIR")
    collect_parser.add_argument("--out", type=pathlib.Path, required=True, metavar="EVAL_DIR")
    collect_parser.add_argument("--baseline", default=experiment_configs.BASELINE, help="(%(default)s)")

    power_parser = commands.add_parser("power", help="trials per arm to resolve a difference in success rate")
    power_parser.add_argument("--base-rate", type=float, default=0.5, help="the baseline's success rate (%(default)s)")
    power_parser.add_argument("--differences", type=fraction_list, default=[0.1, 0.2], metavar="D,D")
    power_parser.add_argument(
        "--discordance",
        type=fraction_list,
        default=[0.2, 0.3, 0.5],
        metavar="P,P",
        help="assumed share of seeds on which the two arms' outcomes differ",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "deploy":
            print(f"deploy: {deploy(args)}")
        elif args.command == "run":
            out = run(args)
            print(f"run: {out}" if out else f"run: skipped (finished; --overwrite runs it again): {args.deploy}")
        elif args.command == "collect":
            results = collect(args.sim_dir, args.baseline)
            table = render_table(results)
            atomic_files.write_json(args.out / RESULTS_JSON, results)
            atomic_files.write_text(args.out / RESULTS_MD, table)
            print(table, end="")
        else:
            print(render_power(args.base_rate, args.differences, args.discordance), end="")
        return 0
    except SimEvalError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if args.debug:
            raise
        print(f"{PROG}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
