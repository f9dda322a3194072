"""The dataset columns openpi's own train configs read, checked against a LeRobot dataset's meta/info.json (v2.x or
v3.0: both name the columns as the keys of "features").

    python openpi_patch/config_columns.py [--demo] INFO_JSON CONFIG[,CONFIG...]

Run by the interpreter that imports the patched openpi (run_experiments.sh's OPENPI_PYTHON), all configs in one
process: importing openpi's training config costs most of the check's time. For each config it takes the columns
the data pipeline reads (the repack transform's sources and the action sequence keys; the prompt is not a column
when it comes from the task) and the repo id it trains on. --demo patches a temporary copy of the installed
rpent-openpi first, as the CPU demo does. Exit status 1 with one line per problem; 0 when every column is there.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile

# --demo imports cpu_variants (beside this file), which imports the toolkit's atomic_files (one folder up).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def columns_read(factory, openpi_config, transforms) -> dict[str, str]:
    """{column: where the config reads it} for one config's data factory."""
    base = factory.base_config or openpi_config.DataConfig()
    action_keys = getattr(factory, "action_sequence_keys", base.action_sequence_keys)
    sources = {key: "action_sequence_keys" for key in action_keys}
    for transform in getattr(factory, "repack_transforms", transforms.Group()).inputs:
        if isinstance(transform, transforms.RepackTransform):
            sources.update({source: "repack" for source in transforms.flatten_dict(transform.structure).values()})
    if base.prompt_from_task:
        sources.pop("prompt", None)
    return sources


def config_problems(columns: set[str], configs: list[str], repo_id: str) -> list[str]:
    from openpi import transforms
    from openpi.training import config as openpi_config

    problems = []
    for name in configs:
        factory = openpi_config.get_config(name).data
        if factory.repo_id != repo_id:
            problems.append(f"{name} reads the dataset {factory.repo_id}, not {repo_id}")
        problems += [
            f"{name} reads the column '{column}' ({origin}), which the dataset does not have"
            for column, origin in sorted(columns_read(factory, openpi_config, transforms).items())
            if column not in columns
        ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", action="store_true", help="patch a temporary copy of the installed openpi first")
    parser.add_argument("info", type=pathlib.Path, help="the dataset's meta/info.json")
    parser.add_argument("configs", help="comma-separated train config names")
    args = parser.parse_args(argv)
    with open(args.info) as f:
        columns = set(json.load(f)["features"])
    with tempfile.TemporaryDirectory(prefix="openpi-patched.") as site:
        if args.demo:
            import cpu_variants

            cpu_variants.use_patched_openpi(pathlib.Path(site))
        problems = config_problems(columns, args.configs.split(","), os.environ["OPENPI_ROBOTWIN_REPO_ID"])
    for problem in problems:
        print(f"run_experiments.sh: {args.info}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
