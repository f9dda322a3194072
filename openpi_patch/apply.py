"""Apply the manipulation-progress patch to openpi, check it, or revert it.

Usage:
    python openpi_patch/apply.py TARGET [--check | --revert] [--debug]

TARGET is one of
  - an openpi checkout (the folder that holds src/openpi),
  - an installed openpi package (the `openpi` folder itself, e.g. .../site-packages/openpi),
  - the folder that holds that package (e.g. .../site-packages).

The six unified diffs in openpi_patch/patches/ (one per openpi source file, made against upstream commit
15a9616) are applied all or none: every hunk of every file is located first, by its exact context lines, searching
outward from the line number in the hunk header so that a shifted file (the PyPI package rpent-openpi 0.2.2) still
matches; only then is each file written, through a temporary name and a rename. Running it on a patched tree
reports "already applied" and changes nothing. --check only reports whether the patch applies (exit 0) or is
already applied (exit 0), or names the file and hunk that does not match (exit 1). --revert applies the reverse
hunks, which restores every file byte for byte, and removes the file the patch created.
"""

import argparse
import dataclasses
import os
import pathlib
import re
import sys
import tempfile

PATCH_DIR = pathlib.Path(__file__).resolve().parent / "patches"
# Order matters only for messages: the model config first, the training config last.
PATCH_FILES = (
    "pi0_config.patch",
    "model.patch",
    "tokenizer.patch",
    "robotwin_policy.patch",
    "config.patch",
    "pi0.patch",
)
SOURCE_PREFIX = "src/openpi/"
HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
NO_NEWLINE = "\\ No newline at end of file"


class PatchError(Exception):
    """A patch that cannot be read or does not match its target; the message names file and hunk."""


@dataclasses.dataclass(frozen=True)
class Hunk:
    number: int
    old_start: int
    old_lines: tuple[str, ...]
    new_lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FilePatch:
    name: str
    relpath: str  # path inside the openpi package, e.g. "models/pi0.py"
    creates: bool  # the upstream file does not exist (--- /dev/null)
    hunks: tuple[Hunk, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one file needs: its path, and its new text (None: delete) or nothing to do."""

    path: pathlib.Path
    state: str  # "applies" | "applied"
    new_text: str | None


def parse_patch(name: str, text: str) -> FilePatch:
    lines = text.splitlines(keepends=True)
    old_path = new_path = None
    hunks: list[Hunk] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- "):
            old_path = line[4:].split("\t")[0].strip()
        elif line.startswith("+++ "):
            new_path = line[4:].split("\t")[0].strip()
        elif line.startswith("@@"):
            match = HUNK_HEADER.match(line)
            if not match:
                raise PatchError(f"{name}: bad hunk header {line.strip()!r}")
            old_count = int(match.group(2) or 1)
            new_count = int(match.group(4) or 1)
            old: list[str] = []
            new: list[str] = []
            i += 1
            while (len(old) < old_count or len(new) < new_count) and i < len(lines):
                body = lines[i]
                tag, content = body[:1], body[1:]
                if not body.endswith("\n"):
                    content += "\n"
                if tag == " ":
                    old.append(content)
                    new.append(content)
                elif tag == "-":
                    old.append(content)
                elif tag == "+":
                    new.append(content)
                elif body == "\n":  # an empty context line whose leading space was stripped by an editor
                    old.append("\n")
                    new.append("\n")
                else:
                    raise PatchError(f"{name}: hunk {len(hunks) + 1}: unexpected line {body.rstrip()!r}")
                i += 1
                if i < len(lines) and lines[i].rstrip("\n") == NO_NEWLINE:
                    if tag in " -":
                        old[-1] = old[-1][:-1]
                    if tag in " +":
                        new[-1] = new[-1][:-1]
                    i += 1
            if len(old) != old_count or len(new) != new_count:
                raise PatchError(f"{name}: hunk {len(hunks) + 1}: truncated")
            hunks.append(Hunk(len(hunks) + 1, int(match.group(1)), tuple(old), tuple(new)))
            continue
        i += 1
    if new_path is None or not hunks:
        raise PatchError(f"{name}: no file header or no hunks")
    relpath = new_path.split("/", 1)[1] if new_path.startswith(("a/", "b/")) else new_path
    if not relpath.startswith(SOURCE_PREFIX):
        raise PatchError(f"{name}: {relpath} is not under {SOURCE_PREFIX}")
    return FilePatch(name, relpath[len(SOURCE_PREFIX) :], old_path == "/dev/null", tuple(hunks))


def load_patches(patch_dir: pathlib.Path = PATCH_DIR) -> list[FilePatch]:
    patches = []
    for name in PATCH_FILES:
        path = patch_dir / name
        if not path.is_file():
            raise PatchError(f"{path}: missing")
        patches.append(parse_patch(name, path.read_text(encoding="utf-8")))
    return patches


def find_block(lines: list[str], block: tuple[str, ...], expected: int) -> int | None:
    """Index where `block` occurs in `lines`, the occurrence nearest to `expected`; None if absent."""
    if not block:
        return min(max(expected, 0), len(lines))
    width = len(block)
    last = len(lines) - width
    for distance in range(max(expected, last - expected, 0) + 1):
        for start in (expected - distance, expected + distance):
            if 0 <= start <= last and tuple(lines[start : start + width]) == block:
                return start
    return None


def apply_hunks(name: str, text: str, hunks: tuple[Hunk, ...], *, reverse: bool) -> str:
    """The text with every hunk applied (or un-applied); PatchError naming the hunk that does not match."""
    lines = text.splitlines(keepends=True)
    offset = 0
    for hunk in hunks:
        old, new = (hunk.new_lines, hunk.old_lines) if reverse else (hunk.old_lines, hunk.new_lines)
        expected = hunk.old_start - 1 + offset
        start = find_block(lines, old, expected)
        if start is None:
            raise PatchError(f"{name}: hunk {hunk.number} (line {hunk.old_start}) does not match")
        lines[start : start + len(old)] = new
        offset = start - (hunk.old_start - 1) + len(new) - len(old)
    return "".join(lines)


def resolve_package(target: pathlib.Path) -> pathlib.Path:
    """The openpi package folder (the one with models/ and training/) for any accepted kind of TARGET."""
    for candidate in (target / "src" / "openpi", target / "openpi", target):
        if (candidate / "__init__.py").is_file() and (candidate / "models").is_dir():
            return candidate
    raise PatchError(f"{target}: no openpi package here (looked for src/openpi, openpi/ and the folder itself)")


def plan_file(package: pathlib.Path, patch: FilePatch, *, revert: bool) -> Plan:
    path = package / patch.relpath
    exists = path.is_file()
    text = path.read_bytes().decode("utf-8") if exists else ""
    if patch.creates:
        created = "".join(patch.hunks[0].new_lines)
        if revert:
            if not exists:
                return Plan(path, "applied", None)
            if text != created:
                raise PatchError(f"{patch.name}: {path} differs from the file the patch creates")
            return Plan(path, "applies", None)
        if not exists:
            return Plan(path, "applies", created)
        if text == created:
            return Plan(path, "applied", None)
        raise PatchError(f"{patch.name}: {path} already exists with other content")
    if not exists:
        raise PatchError(f"{patch.name}: {path} does not exist")
    # A patched file is recognised by its reverse applying: a forward hunk that only adds lines could match again.
    try:
        unpatched = apply_hunks(patch.name, text, patch.hunks, reverse=True)
    except PatchError as reverse_error:
        if not revert:
            return Plan(path, "applies", apply_hunks(patch.name, text, patch.hunks, reverse=False))
        try:
            apply_hunks(patch.name, text, patch.hunks, reverse=False)
        except PatchError:
            raise reverse_error from None
        return Plan(path, "applied", None)
    return Plan(path, "applies", unpatched) if revert else Plan(path, "applied", None)


def write_atomically(path: pathlib.Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def run(target: pathlib.Path, *, check: bool = False, revert: bool = False) -> str:
    """Check, apply or revert the whole patch set; returns the message to print, raises PatchError on mismatch."""
    package = resolve_package(target)
    plans = [plan_file(package, patch, revert=revert) for patch in load_patches()]
    states = {plan.state for plan in plans}
    if states == {"applied"}:
        return f"{package}: {'not patched, nothing to revert' if revert else 'already applied'}"
    if states != {"applies"}:
        done = ", ".join(str(p.path.relative_to(package)) for p in plans if p.state == "applied")
        raise PatchError(f"{package}: partly patched ({done} already {'reverted' if revert else 'patched'})")
    verb = "revert" if revert else "apply"
    if check:
        return f"{package}: the {len(plans)} patches {verb} cleanly"
    for plan in plans:
        if plan.new_text is None:
            plan.path.unlink()
        else:
            write_atomically(plan.path, plan.new_text)
    return f"{package}: {'reverted' if revert else 'applied'} {len(plans)} patches"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Apply, check or revert the openpi manipulation-progress patch.")
    parser.add_argument("target", type=pathlib.Path, help="openpi checkout, openpi package dir, or its site-packages")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only say whether the patch applies; change nothing")
    mode.add_argument("--revert", action="store_true", help="restore the original files")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args.target, check=args.check, revert=args.revert))
    except (PatchError, OSError, UnicodeDecodeError) as e:
        if args.debug:
            raise
        print(f"apply.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
