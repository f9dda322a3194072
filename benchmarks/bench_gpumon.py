"""Benchmark: CPU time and NVML calls per refresh of gpumon against gpustat and nvitop, on the fake NVML.

    python benchmarks/bench_gpumon.py [--ticks 50] [--runs 3] [--processes 200] [--tools-venv /tmp/gpumon-bench-venv]

gpustat and nvitop run from a throwaway virtual environment, never the project's:

    python3 -m venv /tmp/gpumon-bench-venv && /tmp/gpumon-bench-venv/bin/pip install gpustat nvitop

All three import `pynvml`, which PYTHONPATH=tests/fake_nvml shadows with the fake (8 GPUs, --processes processes,
about half of them real PIDs of this machine, the rest PIDs that do not exist). Two tables, measured in the same run:

- steady state: one process refreshing --ticks times after a first, warm-up refresh: gpumon's collect + screen
  render at 120x50 (what each full-screen tick costs), gpustat's new_query + print_formatted (what `gpustat -i` does
  each tick), nvitop's cli.main() with --once called again and again in one process (nvitop's own full-screen loop
  cannot be driven without a terminal);
- one-shot: a fresh process per run (`gpumon.py --once`, `gpustat`, `nvitop --once`), median CPU time (user + system
  of the child) of --runs runs and the NVML calls of one run.

Wall time is printed too: gpustat sleeps 0.1 s per GPU in every query to prime psutil's CPU counters, so its
refresh takes about 0.8 s at 8 GPUs whatever the CPU does. Runs in about a minute and a half.

NVML calls are counted by the fake per nvml* function, and per C symbol where a tool calls the library through
_nvmlGetFunctionPointer (nvitop does so for memory, temperature and process lists: two calls per process list,
as the real library needs). Prints the tables to stdout; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import ModuleType

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE_DIR = REPO_ROOT / "tests" / "fake_nvml"
DEFAULT_TOOLS_VENV = pathlib.Path("/tmp/gpumon-bench-venv")
SCREEN = (120, 50)
# (CPU seconds, NVML calls, wall seconds), or why the tool did not run
Result = tuple[float, float, float] | str


def steady_gpumon(ticks: int) -> Result:
    sys.path.insert(0, str(REPO_ROOT))
    import pynvml

    import gpumon

    session = gpumon.NvmlSession(pynvml)
    host = gpumon.HostProcesses()
    history = gpumon.History()
    view = gpumon.View()

    def refresh() -> None:
        snapshot = gpumon.collect(session, host)
        history.record(snapshot.devices)
        gpumon.frame(gpumon.render_screen(snapshot, history, view, *SCREEN), *SCREEN)

    return measure(refresh, ticks, pynvml)


def steady_gpustat(ticks: int) -> Result:
    import gpustat
    import pynvml

    def refresh() -> None:
        gpustat.new_query().print_formatted(
            fp=io.StringIO(),
            force_color=True,
            show_cmd=True,
            show_user=True,
            show_pid=True,
            show_power=True,
            show_fan_speed=True,
        )

    return measure(refresh, ticks, pynvml)


def steady_nvitop(ticks: int) -> Result:
    import pynvml
    from nvitop import cli

    def refresh() -> None:
        sys.argv = ["nvitop", "--once"]
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main()

    return measure(refresh, ticks, pynvml)


def measure(refresh: Callable[[], None], ticks: int, fake: ModuleType) -> Result:
    """(CPU seconds, NVML calls, wall seconds) per refresh, after one warm-up refresh."""
    refresh()
    fake.fake_reset_calls()
    start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(ticks):
        refresh()
    cpu, wall = (time.process_time() - start) / ticks, (time.perf_counter() - wall_start) / ticks
    return cpu, sum(fake.fake_calls().values()) / ticks, wall


STEADY = {"gpumon": steady_gpumon, "gpustat": steady_gpustat, "nvitop": steady_nvitop}


def fake_env(processes: int, calls_file: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}
    env.update(PYTHONPATH=str(FAKE_DIR), FAKE_NVML_SCENARIO="eight", FAKE_NVML_PROCESSES=str(processes))
    if calls_file:
        env["FAKE_NVML_CALLS_FILE"] = calls_file
    return env


def run_steady(python: str, tool: str, ticks: int, processes: int) -> Result:
    command = [python, __file__, "--inner", tool, "--ticks", str(ticks)]
    result = subprocess.run(command, env=fake_env(processes), capture_output=True, text=True)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["failed"])[-1]
    cpu, calls, wall = json.loads(result.stdout.strip().splitlines()[-1])
    return cpu, calls, wall


def run_one_shot(command: list[str], runs: int, processes: int) -> Result:
    cpu_times, wall_times = [], []
    calls = 0.0
    with tempfile.TemporaryDirectory() as folder:
        calls_file = os.path.join(folder, "calls.json")
        for _ in range(runs):
            before, wall_start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            result = subprocess.run(
                command,
                env=fake_env(processes, calls_file),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall_times.append(time.perf_counter() - wall_start)
            if result.returncode != 0:
                return (result.stderr.strip().splitlines() or ["failed"])[-1]
            cpu_times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            with open(calls_file, encoding="utf-8") as f:
                calls = float(sum(json.load(f).values()))
    return statistics.median(cpu_times), calls, statistics.median(wall_times)


def table(title: str, rows: list[tuple[str, Result]]) -> str:
    lines = [title, f"  {'tool':<44} {'CPU ms':>9} {'NVML calls':>11} {'CPU vs gpumon':>14} {'wall ms':>9}"]
    base = rows[0][1]
    for name, value in rows:
        if isinstance(value, str):
            lines.append(f"  {name:<44} not run: {value}")
            continue
        ratio = f"{value[0] / base[0]:.1f}x" if not isinstance(base, str) and base[0] > 0 else "-"
        lines.append(f"  {name:<44} {value[0] * 1000:>9.2f} {value[1]:>11.1f} {ratio:>14} {value[2] * 1000:>9.1f}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=50, help="refreshes measured in the steady state")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per one-shot tool (median)")
    parser.add_argument("--processes", type=int, default=200, help="processes on the 8 fake GPUs")
    parser.add_argument(
        "--tools-venv", type=pathlib.Path, default=DEFAULT_TOOLS_VENV, help="throwaway venv holding gpustat and nvitop"
    )
    parser.add_argument("--inner", choices=sorted(STEADY), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.inner:
        print(json.dumps(STEADY[args.inner](args.ticks)))
        return 0
    tools_python = args.tools_venv / "bin" / "python"
    missing = None if tools_python.exists() else f"no {tools_python} (see the docstring)"

    def other(tool: str) -> Result:
        return missing or run_steady(str(tools_python), tool, args.ticks, args.processes)

    def other_once(command: list[str]) -> Result:
        return missing or run_one_shot(command, args.runs, args.processes)

    print(f"fake NVML: 8 GPUs x {args.processes} processes; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    steady = [
        (
            f"gpumon (collect + {SCREEN[0]}x{SCREEN[1]} screen)",
            run_steady(sys.executable, "gpumon", args.ticks, args.processes),
        ),
        ("gpustat (new_query + print_formatted)", other("gpustat")),
        ("nvitop (cli.main --once, same process)", other("nvitop")),
    ]
    print(table(f"\nSteady state, per refresh (mean of {args.ticks} after a warm-up):", steady))
    bin_dir = args.tools_venv / "bin"
    one_shot = [
        (
            "gpumon.py --once",
            run_one_shot([sys.executable, str(REPO_ROOT / "gpumon.py"), "--once"], args.runs, args.processes),
        ),
        ("gpustat", other_once([str(bin_dir / "gpustat"), "--no-color"])),
        ("nvitop --once", other_once([str(bin_dir / "nvitop"), "--once"])),
    ]
    print(table(f"\nOne-shot, whole process (median of {args.runs} runs):", one_shot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
