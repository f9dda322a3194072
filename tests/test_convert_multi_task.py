"""convert_robotwin_democlean_to_lerobot.py with several task folders: real generated episodes of three tasks (both
layouts) in, one real LeRobot dataset out; the per-task split and the source record checked against the folders."""

import json
import pathlib
import shutil

import pytest

import atomic_files
import convert_robotwin_democlean_to_lerobot as converter
import generate_robotwin_samples as samples
from conftest import ONE_WORKER_ONE_CAMERA

FRAMES = samples.MIN_FRAMES
# task -> (layout, episodes); eleven episodes make 10% round down to one, three make it round up to the minimum one
TASKS = {"stack_blocks": ("legacy", 11), "place_dual_shoes": ("legacy", 3), "handover_block": ("xpolicylab", 2)}
pytestmark = [
    pytest.mark.usefixtures("datasets_cache"),
    pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning"),
]


def instruction(task: str, number: int) -> str:
    return f"{task.replace('_', ' ')} variant {number}"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, pathlib.Path]:
    """task -> its root: data/<task>/demo_clean for the legacy tasks (own instructions), an XPolicyLab folder else."""
    base = tmp_path_factory.mktemp("tasks")
    roots = {}
    for task, (layout, episodes) in TASKS.items():
        written = samples.write_demo_clean(base / "gen" / task, episodes=episodes, frames=FRAMES, seed=3, layout=layout)
        if layout == "legacy":
            root = base / "data" / task / "demo_clean"
            root.parent.mkdir(parents=True)
            shutil.move(written, root)
            for number in range(episodes):
                texts = {"seen": [instruction(task, number)], "unseen": ["unused"]}
                (root / "instructions" / f"episode{number}.json").write_text(json.dumps(texts))
        else:
            root = base / "xpl" / task / written.name
            root.parent.mkdir(parents=True)
            shutil.move(written, root)
        roots[task] = root
    return roots


def legacy_glob(tasks) -> str:
    return str(tasks["stack_blocks"].parents[1] / "*" / "demo_clean")


def convert(argv: list[str], capsys) -> tuple[int, str]:
    code = converter.main(argv)
    return code, capsys.readouterr().err


def dataset_meta(path: pathlib.Path) -> tuple[list[dict], list[str], list[dict]]:
    """lerobot's episodes.jsonl rows, tasks.jsonl texts, and our episode_sources.json rows."""
    lines = lambda name: [json.loads(line) for line in (path / "meta" / name).read_text().splitlines()]  # noqa: E731
    sources = json.loads((path / "meta" / converter.SOURCES_FILE).read_text())["episodes"]
    return lines("episodes.jsonl"), [row["task"] for row in lines("tasks.jsonl")], sources


def test_split_holds_out_the_last_tenth_of_each_task_at_least_one(tasks):
    roots = [tasks["stack_blocks"], tasks["place_dual_shoes"], tasks["handover_block"]]
    split = json.loads(json.dumps(converter.split_tasks(roots)))  # JSON-serialisable as it is
    assert [entry["task"] for entry in split["tasks"]] == list(TASKS)
    expected_heldout = {"stack_blocks": [10], "place_dual_shoes": [2], "handover_block": [1]}
    for entry in split["tasks"]:
        _, episodes = TASKS[entry["task"]]
        assert entry["heldout"] == expected_heldout[entry["task"]]
        assert set(entry["train"]).isdisjoint(entry["heldout"])
        assert entry["train"] + entry["heldout"] == list(range(episodes))


def test_split_with_a_count_and_a_cap_per_task(tasks):
    split = converter.split_tasks([tasks["stack_blocks"], tasks["place_dual_shoes"]], heldout=2, max_per_task=5)
    assert [(e["train"], e["heldout"]) for e in split["tasks"]] == [([0, 1, 2], [3, 4]), ([0], [1, 2])]
    assert converter.split_tasks([tasks["place_dual_shoes"]], heldout=0)["tasks"][0]["heldout"] == []
    with pytest.raises(converter.ConversionError, match="place_dual_shoes/demo_clean: holding out 3 of its 3"):
        converter.split_tasks([tasks["place_dual_shoes"]], heldout=3)


def test_folds_hold_out_every_episode_once_and_a_share_of_each_task(tasks):
    roots = [tasks["stack_blocks"], tasks["place_dual_shoes"], tasks["handover_block"]]
    splits = [converter.split_tasks(roots, fold=(f, 3)) for f in range(3)]
    # dealt by hand: positions 0-10 stack_blocks, 11-13 place_dual_shoes, 14-15 handover_block; fold f gets
    # the positions p with p % 3 == f
    assert [(e["task"], e["heldout"]) for e in splits[0]["tasks"]] == [
        ("stack_blocks", [0, 3, 6, 9]), ("place_dual_shoes", [1]), ("handover_block", [1])
    ]  # fmt: skip
    assert [len(e["heldout"]) for s in splits for e in s["tasks"]] == [4, 1, 1, 4, 1, 0, 3, 1, 1]
    for position, (task, (_, episodes)) in enumerate(TASKS.items()):
        held = [n for s in splits for n in s["tasks"][position]["heldout"]]
        assert sorted(held) == list(range(episodes)), task  # every episode held out exactly once
        for s in splits:
            entry = s["tasks"][position]
            assert sorted(entry["train"] + entry["heldout"]) == list(range(episodes))
            assert set(entry["train"]).isdisjoint(entry["heldout"])
    assert (splits[2]["folds"], splits[2]["fold"]) == (3, 2)
    with pytest.raises(
        converter.ConversionError, match="place_dual_shoes/demo_clean: fold 1 of 2 holds out all its 1 "
    ):
        converter.split_tasks(roots, max_per_task=1, fold=(1, 2))
    with pytest.raises(converter.ConversionError, match="17 folds: 16 episode"):
        converter.split_tasks(roots, fold=(0, 17))


def test_glob_and_repeated_roots_make_one_multi_task_dataset(tasks, tmp_path, capsys):
    argv = ["--root", legacy_glob(tasks), "--root", str(tasks["handover_block"]), "--repo-id", "t/multi"]
    argv += ["--output-root", str(tmp_path), "--max-episodes-per-task", "2", "--verify", *ONE_WORKER_ONE_CAMERA]
    code, err = convert(argv, capsys)
    assert code == 0, err
    episodes, task_texts, sources = dataset_meta(tmp_path / "t" / "multi")
    # glob matches sorted (place_dual_shoes before stack_blocks), then the second --root; episodes by number
    order = [("place_dual_shoes", 0), ("place_dual_shoes", 1), ("stack_blocks", 0), ("stack_blocks", 1)]
    order += [("handover_block", 0), ("handover_block", 1)]
    assert [(row["task"], row["episode"]) for row in sources] == order
    assert [row["episode_index"] for row in sources] == [row["episode_index"] for row in episodes] == list(range(6))
    for row, episode in zip(sources, episodes):
        if row["task"] != "handover_block":
            assert episode["tasks"] == [instruction(row["task"], row["episode"])]
        assert pathlib.Path(row["file"]).parent.parent == pathlib.Path(row["root"])
    legacy_texts = {instruction(task, n) for task in ("place_dual_shoes", "stack_blocks") for n in range(2)}
    assert legacy_texts <= set(task_texts)
    assert len(task_texts) == len(set(task_texts)) >= 5


def test_split_file_converts_exactly_one_part(tasks, tmp_path, capsys):
    split = converter.split_tasks([tasks["stack_blocks"], tasks["handover_block"]])
    atomic_files.write_json(tmp_path / "split.json", split)
    for part, expected in (("heldout", [("stack_blocks", 10), ("handover_block", 1)]), ("train", None)):
        argv = ["--split", str(tmp_path / "split.json"), "--part", part, "--repo-id", f"t/{part}"]
        code, err = convert([*argv, "--output-root", str(tmp_path), *ONE_WORKER_ONE_CAMERA], capsys)
        assert code == 0, err
        _, _, sources = dataset_meta(tmp_path / "t" / part)
        got = [(row["task"], row["episode"]) for row in sources]
        if expected is None:
            expected = [("stack_blocks", n) for n in range(10)] + [("handover_block", 0)]
        assert got == expected


def test_episodes_applies_to_every_root(tasks, tmp_path, capsys):
    argv = ["--root", legacy_glob(tasks), "--episodes", "1-2", "--repo-id", "t/sel", "--output-root", str(tmp_path)]
    code, err = convert([*argv, *ONE_WORKER_ONE_CAMERA], capsys)
    assert code == 0, err
    _, _, sources = dataset_meta(tmp_path / "t" / "sel")
    assert [(r["task"], r["episode"]) for r in sources] == [
        (t, n) for t in ("place_dual_shoes", "stack_blocks") for n in (1, 2)
    ]


@pytest.mark.parametrize(
    "roots, message",
    [
        (lambda t, tmp: [str(tmp / "nothing" / "*" / "demo_clean")], "the pattern matches nothing"),
        (lambda t, tmp: [str(t["stack_blocks"]), str(tmp / "missing")], "missing: no such folder"),
        (lambda t, tmp: [str(t["stack_blocks"]), str(t["stack_blocks"] / "data")], "given twice"),
        (lambda t, tmp: [legacy_glob(t), str(t["place_dual_shoes"])], "given twice"),
        (lambda t, tmp: [str(tmp)], "no episode*.hdf5 files"),
    ],
)
def test_bad_roots_are_one_line_errors_and_nothing_is_written(roots, message, tasks, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [arg for root in roots(tasks, tmp_path) for arg in ("--root", root)]
    code, err = convert([*argv, "--repo-id", "t/bad", "--output-root", str(out), *ONE_WORKER_ONE_CAMERA], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


def test_split_and_root_together_are_refused(tasks, tmp_path):
    with pytest.raises(SystemExit):
        converter.parse_args(
            ["--root", str(tasks["stack_blocks"]), "--split", "x.json", "--part", "train", "--repo-id", "t/x"]
        )
    with pytest.raises(SystemExit):
        converter.parse_args(["--split", "x.json", "--repo-id", "t/x"])
    assert converter.parse_args(["--root", "a", "--root", "b", "--repo-id", "t/x"]).root == ["a", "b"]
