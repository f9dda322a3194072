"""Shared fixtures: the tools are single scripts at the repository root, imported here as modules."""

import pathlib
import signal
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import generate_robotwin_samples  # noqa: E402

SAMPLE_EPISODES = 3
SAMPLE_FRAMES = 40


@pytest.fixture(scope="session")
def demo_clean(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A read-only place_dual_shoes/demo_clean folder of three 40-frame episodes, shared by the whole session.

    Tests that modify episodes copy them first.
    """
    out = tmp_path_factory.mktemp("samples")
    return generate_robotwin_samples.write_demo_clean(out, episodes=SAMPLE_EPISODES, frames=SAMPLE_FRAMES, seed=0)


def default_sigint() -> None:
    """preexec_fn for a child that a test interrupts: SIGINT back to its default, as under a terminal.

    A process started with SIGINT ignored (a CI runner, `nohup`, a background job of a script) passes that on, and
    an ignored SIGINT can be neither trapped by bash nor turned into KeyboardInterrupt by Python.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
