"""Shared fixtures: the tools are single scripts at the repository root, imported here as modules."""

import os
import pathlib
import shutil
import signal
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import generate_robotwin_samples  # noqa: E402

SAMPLE_EPISODES = 3
SAMPLE_FRAMES = 40
# The same episodes in every layout RoboTwin writes (fixture `layouts`).
LAYOUT_EPISODES = 2
LAYOUT_FRAMES = 30
LAYOUT_SEED = 2
# The quick conversion most converter tests need: one process, the head camera alone.
ONE_WORKER_ONE_CAMERA = ("--workers", "1", "--cameras", "head_camera")
# .ci/run sets TOOLKIT_STRICT=1: CI must run every test, so a missing test tool fails and any skip fails the run.
STRICT = os.environ.get("TOOLKIT_STRICT") == "1"


def require_tool(name: str, install: str, path: str | None = None) -> str:
    """The path of a program a test drives; without it the test is skipped, or fails under TOOLKIT_STRICT=1."""
    found = shutil.which(name, path=path)
    if found is None:
        message = f"{name} is not installed ({install})"
        if STRICT:
            pytest.fail(f"{message}; TOOLKIT_STRICT=1 runs every test", pytrace=False)
        pytest.skip(message)
    return found


def strict_skips(config: pytest.Config) -> list:
    """The skipped tests' reports when TOOLKIT_STRICT=1 forbids skipping, else none."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if STRICT and reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under TOOLKIT_STRICT=1 a run that skipped anything fails, whatever the reason for the skip."""
    if strict_skips(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = strict_skips(config)
    if skipped:
        terminalreporter.write_line(f"TOOLKIT_STRICT=1: {len(skipped)} test(s) skipped; CI runs every test", red=True)


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """lerobot's reader copies datasets into HF_DATASETS_CACHE; keep that inside the test's temporary folder.

    Modules that read datasets in this process ask for it with `pytest.mark.usefixtures("datasets_cache")`.
    """
    import datasets  # here: most test modules never read a dataset, and the import costs them most of a second

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield


@pytest.fixture(scope="session")
def demo_clean(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A read-only place_dual_shoes/demo_clean folder of three 40-frame episodes, shared by the whole session.

    Tests that modify episodes copy them first.
    """
    out = tmp_path_factory.mktemp("samples")
    return generate_robotwin_samples.write_demo_clean(out, episodes=SAMPLE_EPISODES, frames=SAMPLE_FRAMES, seed=0)


@pytest.fixture(scope="session")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Two 30-frame episodes written in each layout (legacy, xpolicylab, migrated): layout -> the folder above data/.

    Read only, shared by the whole session; the migrated form is converted from its own legacy copy.
    """
    out = tmp_path_factory.mktemp("layouts")
    return {
        layout: generate_robotwin_samples.write_demo_clean(
            out / layout, episodes=LAYOUT_EPISODES, frames=LAYOUT_FRAMES, seed=LAYOUT_SEED, layout=layout
        )
        for layout in generate_robotwin_samples.LAYOUTS
    }


def default_sigint() -> None:
    """preexec_fn for a child that a test interrupts: SIGINT back to its default, as under a terminal.

    A process started with SIGINT ignored (a CI runner, `nohup`, a background job of a script) passes that on, and
    an ignored SIGINT can be neither trapped by bash nor turned into KeyboardInterrupt by Python.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
