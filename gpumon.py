"""gpumon: a full-screen GPU monitor for shared training boxes (nvidia-ml-py only, raw ANSI escapes).

    python gpumon.py                  # full screen, refreshed every second; q quits
    python gpumon.py --interval 0.5   # faster refresh (minimum 0.25 s)
    python gpumon.py --once           # one snapshot on stdout, colour only on a terminal
    python gpumon.py --json           # one snapshot as JSON (schema in README.md)

Top: one line per GPU (index, name, temperature, fan, performance state, power / limit, memory used / total with a
bar, utilisation with a bar; green/yellow/red at 10/75 % utilisation and 10/80 % memory) and, where the pane is
tall and wide enough, a history line per GPU (sparklines of utilisation and memory). Below: the GPU processes
(GPU, PID, type C/G, user, GPU memory, %SM, %CPU, host memory, elapsed time, command) from NVML and /proc, cut to
the pane with a "+N more" line. Keys: q quit; m GPU memory, s %SM, c %CPU, h host memory, t time, p PID, g GPU,
u user, n command: sort; r reverses. Colour is off with --no-color or a non-empty NO_COLOR.

The size comes from COLUMNS/LINES, then the terminal, then 80x24, and follows resizes at once. The screen is the
terminal's alternate screen; every way out (q, Ctrl-C, SIGTERM, SIGHUP, an error, NVML failing) restores the
terminal; Ctrl-Z hands the terminal back until fg. When stdout is not a terminal the monitor prints one
snapshot, as --once does. Nothing is written to disk.
Exit status: 0 on q, 1 when NVML or the driver is missing or fails, 2 on bad arguments, 128+signal on a signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import pwd
import re
import select
import signal
import socket
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType, ModuleType
from typing import Any

PROG = "gpumon.py"
DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.25
HISTORY_LENGTH = 512
# Samples older than this count as an idle process (NVML reports only processes that ran since the last sample).
SM_SAMPLE_TTL_US = 3_000_000
UTIL_THRESHOLDS = (10, 75)
MEMORY_THRESHOLDS = (10, 80)

ESC = "\x1b"
ALT_SCREEN_ON = ESC + "[?1049h"
ALT_SCREEN_OFF = ESC + "[?1049l"
CURSOR_HIDE = ESC + "[?25l"
CURSOR_SHOW = ESC + "[?25h"
# Autowrap off while drawing, so that a full-width line can never wrap onto the next row.
AUTOWRAP_OFF = ESC + "[?7l"
AUTOWRAP_ON = ESC + "[?7h"
CURSOR_HOME = ESC + "[H"
CLEAR_TO_EOL = ESC + "[K"
CLEAR_TO_EOS = ESC + "[J"
RESET = ESC + "[0m"
BOLD = ESC + "[1m"
DIM = ESC + "[2m"
REVERSE = ESC + "[7m"
RED = ESC + "[31m"
GREEN = ESC + "[32m"
YELLOW = ESC + "[33m"
CYAN = ESC + "[36m"
ENTER_SCREEN = ALT_SCREEN_ON + CURSOR_HIDE + AUTOWRAP_OFF
LEAVE_SCREEN = RESET + AUTOWRAP_ON + CURSOR_SHOW + ALT_SCREEN_OFF
ANSI_PATTERN = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Anything but printable ASCII in a command line, user or GPU name could move the cursor or take two cells.
UNPRINTABLE_PATTERN = re.compile(r"[^\x20-\x7e]")

# NVML errors after which nothing more can be asked: the run ends with the message.
FATAL_ERROR_NAMES = (
    "NVMLError_Uninitialized",
    "NVMLError_DriverNotLoaded",
    "NVMLError_LibraryNotFound",
    "NVMLError_LibRmVersionMismatch",
)
# Errors meaning "this device cannot answer this call": remembered so that the call is not repeated every tick.
UNSUPPORTED_ERROR_NAMES = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")

# Device line columns, dropped in this order when the line is too wide, before the bars go and the names shrink.
OPTIONAL_DEVICE_COLUMNS = ("fan", "pstate", "power", "temperature")
NAME_MAX = 28
NAME_MIN = 4
BAR_MIN = 6
BAR_MAX = 60
HISTORY_MIN_WIDTH = 40
PROCESS_ROWS_BEFORE_HISTORY = 6

# key -> (title, what is compared, descending by default)
SORT_KEYS: dict[str, tuple[str, Callable[[Process], Any], bool]] = {
    "m": ("GPU-MEM", lambda p: p.gpu_memory, True),
    "s": ("%SM", lambda p: p.sm, True),
    "c": ("%CPU", lambda p: p.cpu, True),
    "h": ("HOST-MEM", lambda p: p.host_memory, True),
    "t": ("TIME", lambda p: p.elapsed, True),
    "p": ("PID", lambda p: p.pid, False),
    "g": ("GPU", lambda p: p.gpu, False),
    "u": ("USER", lambda p: p.user, False),
    "n": ("COMMAND", lambda p: p.command or None, False),
}
DEFAULT_SORT = "m"


class NvmlUnavailable(Exception):
    """NVML cannot be used at all on this machine (no library, no driver, failed init)."""


class Quit(Exception):
    """Raised from a signal handler so that the drawing loop unwinds through its finally."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclasses.dataclass
class Device:
    index: int
    name: str
    uuid: str | None
    lost: bool = False
    temperature: int | None = None  # degrees C
    fan: int | None = None  # percent
    pstate: int | None = None  # 0 (fastest) .. 15
    power: float | None = None  # W
    power_limit: float | None = None  # W
    memory_used: int | None = None  # bytes
    memory_total: int | None = None  # bytes
    util: int | None = None  # percent of time a kernel ran
    memory_util: int | None = None  # percent of time memory was read or written


@dataclasses.dataclass
class Process:
    gpu: int
    pid: int
    kind: str  # "C" compute, "G" graphics, "C+G" both
    state: str  # "running", "vanished" (was in /proc, is gone) or "not visible" (never in this /proc: container)
    gpu_memory: int | None  # bytes
    sm: int | None  # percent
    user: str | None = None
    cpu: float | None = None  # percent of one core
    host_memory: int | None = None  # resident bytes
    elapsed: float | None = None  # s
    command: str = ""


@dataclasses.dataclass
class Snapshot:
    time: float
    hostname: str
    driver: str | None
    devices: list[Device]
    processes: list[Process]


@dataclasses.dataclass
class History:
    """Recent utilisation and memory percentages per GPU, newest last."""

    util: dict[int, deque[float]] = dataclasses.field(default_factory=dict)
    memory: dict[int, deque[float]] = dataclasses.field(default_factory=dict)

    def record(self, devices: Iterable[Device]) -> None:
        for device in devices:
            self.util.setdefault(device.index, deque(maxlen=HISTORY_LENGTH)).append(
                float("nan") if device.util is None else float(device.util)
            )
            self.memory.setdefault(device.index, deque(maxlen=HISTORY_LENGTH)).append(memory_percent(device))


@dataclasses.dataclass(frozen=True)
class Glyphs:
    bar_full: str
    bar_partial: str  # eighths, smallest first
    bar_empty: str
    spark: str  # levels, lowest first
    ellipsis: str


UNICODE_GLYPHS = Glyphs(
    bar_full="\u2588",
    bar_partial="\u258f\u258e\u258d\u258c\u258b\u258a\u2589",
    bar_empty="\u2591",
    spark=" \u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588",
    ellipsis="\u2026",
)
ASCII_GLYPHS = Glyphs("|", "", ".", " _.-:=+*#", "~")


@dataclasses.dataclass(frozen=True)
class View:
    sort: str = DEFAULT_SORT
    reverse: bool = False
    color: bool = True
    glyphs: Glyphs = UNICODE_GLYPHS


# ----------------------------------------------------------------------------------------------------------------
# NVML: one session, handles and static values cached, unsupported calls remembered.


@dataclasses.dataclass
class DeviceStatic:
    name: str
    uuid: str | None
    power_limit: float | None


def _text(value: Any) -> str:
    # nvidia-ml-py before 11.5 returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlSession:
    """NVML initialised once; per device, the handle and static values are kept and failing calls remembered."""

    def __init__(self, nvml: ModuleType) -> None:
        self.nvml = nvml
        self.fatal = tuple(getattr(nvml, name) for name in FATAL_ERROR_NAMES if hasattr(nvml, name))
        self.unsupported_errors = tuple(getattr(nvml, n) for n in UNSUPPORTED_ERROR_NAMES if hasattr(nvml, n))
        self.lost_error = getattr(nvml, "NVMLError_GpuIsLost", ())
        self.not_found_error = getattr(nvml, "NVMLError_NotFound", ())
        self.calls = self._calls(nvml)
        self.unsupported: set[tuple[int, str]] = set()
        self.lost: set[int] = set()
        self.last_seen_us: dict[int, int] = {}
        self.sm_samples: dict[int, dict[int, tuple[int, int]]] = {}
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            raise NvmlUnavailable(init_error_message(nvml, error)) from error
        try:
            self.driver = self._system(nvml.nvmlSystemGetDriverVersion)
            self.handles: list[Any] = []
            for index in range(nvml.nvmlDeviceGetCount()):
                try:
                    self.handles.append(nvml.nvmlDeviceGetHandleByIndex(index))
                except nvml.NVMLError:
                    self.handles.append(None)
                    self.lost.add(index)
            self.static = [self._read_static(index) for index in range(len(self.handles))]
        except nvml.NVMLError as error:
            self.close()
            raise NvmlUnavailable(f"NVML failed while listing the GPUs: {error}") from error

    @staticmethod
    def _calls(nvml: ModuleType) -> dict[str, Callable[..., Any] | None]:
        def bound(name: str, *fixed: Any, **kwargs: Any) -> Callable[..., Any] | None:
            function = getattr(nvml, name, None)
            if function is None:
                return None
            return lambda handle, *args: function(handle, *fixed, *args, **kwargs)

        memory_v2 = getattr(nvml, "nvmlMemory_v2", None)
        return {
            "name": bound("nvmlDeviceGetName"),
            "uuid": bound("nvmlDeviceGetUUID"),
            "power_limit": bound("nvmlDeviceGetEnforcedPowerLimit"),
            "utilization": bound("nvmlDeviceGetUtilizationRates"),
            "memory_v2": bound("nvmlDeviceGetMemoryInfo", version=memory_v2) if memory_v2 else None,
            "memory": bound("nvmlDeviceGetMemoryInfo"),
            "temperature": bound("nvmlDeviceGetTemperature", getattr(nvml, "NVML_TEMPERATURE_GPU", 0)),
            "fan": bound("nvmlDeviceGetFanSpeed"),
            "pstate": bound("nvmlDeviceGetPerformanceState"),
            "power": bound("nvmlDeviceGetPowerUsage"),
            "compute": bound("nvmlDeviceGetComputeRunningProcesses"),
            "compute_v2": bound("nvmlDeviceGetComputeRunningProcesses_v2"),
            "graphics": bound("nvmlDeviceGetGraphicsRunningProcesses"),
            "graphics_v2": bound("nvmlDeviceGetGraphicsRunningProcesses_v2"),
            "process_utilization": bound("nvmlDeviceGetProcessUtilization"),
        }

    def _system(self, function: Callable[[], Any]) -> str | None:
        try:
            return _text(function())
        except self.nvml.NVMLError:
            return None

    def _read_static(self, index: int) -> DeviceStatic:
        name = self.query(index, "name")
        limit = self.query(index, "power_limit")
        uuid = self.query(index, "uuid")
        return DeviceStatic(
            name=_text(name) if name is not None else "N/A",
            uuid=_text(uuid) if uuid is not None else None,
            power_limit=limit / 1000 if limit is not None else None,
        )

    def query(self, index: int, what: str, *args: Any, not_found: Any = None) -> Any:
        """One NVML call for one device; None when unsupported, failing or the GPU is lost (which is remembered)."""
        call = self.calls.get(what)
        if call is None or index in self.lost or (index, what) in self.unsupported:
            return None
        try:
            return call(self.handles[index], *args)
        except self.fatal:
            raise
        except self.lost_error:
            self.lost.add(index)
        except self.not_found_error:
            return not_found
        except self.unsupported_errors:
            self.unsupported.add((index, what))
        except self.nvml.NVMLError:
            pass
        return None

    def first(self, index: int, *whats: str) -> Any:
        for what in whats:
            value = self.query(index, what)
            if value is not None:
                return value
        return None

    def read_device(self, index: int) -> Device:
        static = self.static[index]
        device = Device(index=index, name=static.name, uuid=static.uuid, power_limit=static.power_limit)
        util = self.query(index, "utilization")
        if util is not None:
            device.util, device.memory_util = int(util.gpu), int(util.memory)
        memory = self.first(index, "memory_v2", "memory")
        if memory is not None:
            device.memory_used, device.memory_total = int(memory.used), int(memory.total)
        device.temperature = self.query(index, "temperature")
        device.fan = self.query(index, "fan")
        device.pstate = self.query(index, "pstate")
        power = self.query(index, "power")
        device.power = power / 1000 if power is not None else None
        device.lost = index in self.lost
        return device

    def read_processes(self, index: int) -> list[tuple[int, str, int | None]]:
        """(pid, kind, GPU memory) of the device's compute and graphics processes."""
        merged: dict[int, tuple[str, int | None]] = {}
        for kind, whats in (("C", ("compute", "compute_v2")), ("G", ("graphics", "graphics_v2"))):
            for entry in self.first(index, *whats) or ():
                pid = int(entry.pid)
                memory = entry.usedGpuMemory
                if pid in merged:
                    other_kind, other_memory = merged[pid]
                    merged[pid] = ("C+G", max(other_memory or 0, memory or 0) if memory or other_memory else None)
                else:
                    merged[pid] = (kind, int(memory) if memory is not None else None)
        return [(pid, kind, memory) for pid, (kind, memory) in merged.items()]

    def read_sm(self, index: int, pids: list[int]) -> dict[int, int | None]:
        """%SM per process, asked only when the device has processes, for samples newer than the last one seen."""
        if not pids:
            self.sm_samples.pop(index, None)
            return {}
        last_seen = self.last_seen_us.get(index, 0)
        samples = self.query(index, "process_utilization", last_seen, not_found=[])
        if samples is None:
            return {pid: None for pid in pids}
        wanted = set(pids)
        known = {pid: sample for pid, sample in self.sm_samples.get(index, {}).items() if pid in wanted}
        for sample in samples:
            pid, timestamp = int(sample.pid), int(sample.timeStamp)
            if timestamp >= known.get(pid, (0, 0))[0]:
                known[pid] = (timestamp, int(sample.smUtil))
            last_seen = max(last_seen, timestamp)
        self.last_seen_us[index] = last_seen
        self.sm_samples[index] = known
        now_us = time.time() * 1e6
        fresh = {pid: sm for pid, (timestamp, sm) in known.items() if now_us - timestamp <= SM_SAMPLE_TTL_US}
        return {pid: fresh.get(pid, 0) for pid in pids}

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


def init_error_message(nvml: ModuleType, error: Exception) -> str:
    if isinstance(error, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return "NVML (libnvidia-ml.so.1) was not found: the NVIDIA driver is not installed on this machine"
    if isinstance(error, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return "the NVIDIA driver is not loaded (NVML: Driver Not Loaded)"
    return f"NVML failed to initialise: {error}"


# ----------------------------------------------------------------------------------------------------------------
# Host side: /proc, read once per process per tick; user and command cached per (pid, start time).


@dataclasses.dataclass
class HostInfo:
    user: str
    command: str
    cpu: float | None
    host_memory: int
    elapsed: float


class HostProcesses:
    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.clock_ticks = os.sysconf("SC_CLK_TCK")
        self.page_size = os.sysconf("SC_PAGE_SIZE")
        self.static: dict[int, tuple[int, str, str]] = {}  # pid -> (start ticks, user, command)
        self.cpu_seen: dict[int, tuple[int, float]] = {}  # pid -> (cpu ticks, uptime)
        self.users: dict[int, str] = {}

    def uptime(self) -> float:
        with open(f"{self.proc}/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])

    def user(self, uid: int) -> str:
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = str(uid)
        return self.users[uid]

    def read(self, pid: int, uptime: float) -> HostInfo | None:
        """What /proc says about pid, or None when it is not there (gone, or outside this PID namespace)."""
        try:
            with open(f"{self.proc}/{pid}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
            comm = stat[stat.find("(") + 1 : stat.rfind(")")]
            fields = stat[stat.rfind(")") + 2 :].split()
            cpu_ticks = int(fields[11]) + int(fields[12])
            start_ticks = int(fields[19])
            rss_pages = int(fields[21])
            static = self.static.get(pid)
            if static is None or static[0] != start_ticks:
                static = (start_ticks, self.user(os.stat(f"{self.proc}/{pid}").st_uid), self._command(pid, comm))
                self.static[pid] = static
                self.cpu_seen.pop(pid, None)
        except (OSError, ValueError, IndexError):
            return None
        elapsed = max(uptime - start_ticks / self.clock_ticks, 0.0)
        seen = self.cpu_seen.get(pid)
        if seen is not None and uptime > seen[1]:
            cpu = (cpu_ticks - seen[0]) / self.clock_ticks / (uptime - seen[1]) * 100
        else:
            # First sight: the average since the process started, rather than sleeping to take a second sample.
            cpu = cpu_ticks / self.clock_ticks / elapsed * 100 if elapsed > 0 else None
        self.cpu_seen[pid] = (cpu_ticks, uptime)
        return HostInfo(static[1], static[2], cpu, rss_pages * self.page_size, elapsed)

    def _command(self, pid: int, comm: str) -> str:
        try:
            with open(f"{self.proc}/{pid}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            return f"[{comm}]"
        command = " ".join(part.decode(errors="replace") for part in argv).strip()
        return command or f"[{comm}]"

    def forget_except(self, pids: set[int]) -> None:
        for table in (self.static, self.cpu_seen):
            for pid in [pid for pid in table if pid not in pids]:
                del table[pid]


# ----------------------------------------------------------------------------------------------------------------
# One snapshot.


def collect(session: NvmlSession, host: HostProcesses) -> Snapshot:
    devices = [session.read_device(index) for index in range(len(session.handles))]
    uptime = host.uptime()
    processes: list[Process] = []
    # A process using several GPUs is read from /proc once per tick.
    infos: dict[int, HostInfo | None] = {}
    for device in devices:
        if device.lost:
            continue
        listed = session.read_processes(device.index)
        sm = session.read_sm(device.index, [pid for pid, _, _ in listed])
        for pid, kind, gpu_memory in listed:
            known_before = pid in host.static
            if pid not in infos:
                infos[pid] = host.read(pid, uptime)
            info = infos[pid]
            if info is None:
                state = "vanished" if known_before else "not visible"
                processes.append(Process(device.index, pid, kind, state, gpu_memory, sm.get(pid)))
                continue
            processes.append(
                Process(
                    device.index,
                    pid,
                    kind,
                    "running",
                    gpu_memory,
                    sm.get(pid),
                    info.user,
                    info.cpu,
                    info.host_memory,
                    info.elapsed,
                    info.command,
                )
            )
        device.lost = device.lost or device.index in session.lost
    # A vanished process stays "vanished" while NVML still lists it; it is forgotten once NVML drops it too.
    host.forget_except({p.pid for p in processes})
    return Snapshot(time.time(), socket.gethostname(), session.driver, devices, processes)


def sort_processes(processes: list[Process], key: str, reverse: bool) -> list[Process]:
    """Sorted by the key's column (its default direction, flipped by reverse); missing values last."""
    _, value, descending = SORT_KEYS[key]
    ordered = sorted(processes, key=lambda p: (p.gpu, p.pid))
    present = [p for p in ordered if value(p) is not None]
    missing = [p for p in ordered if value(p) is None]
    return sorted(present, key=value, reverse=descending != reverse) + missing


# ----------------------------------------------------------------------------------------------------------------
# Rendering: pure functions from data and a size to lines no wider than the width.


def visible_width(line: str) -> int:
    return len(ANSI_PATTERN.sub("", line))


def clip(line: str, width: int) -> str:
    """The line cut to `width` visible characters, escapes kept; attributes reset if it was cut inside one."""
    if visible_width(line) <= width:
        return line
    out: list[str] = []
    used = 0
    position = 0
    for match in ANSI_PATTERN.finditer(line):
        text = line[position : match.start()]
        take = text[: max(width - used, 0)]
        out.append(take)
        used += len(take)
        out.append(match.group())
        position = match.end()
    out.append(line[position:][: max(width - used, 0)])
    return "".join(out) + (RESET if ESC in line else "")


def printable(text: str) -> str:
    return UNPRINTABLE_PATTERN.sub("?", text)


def paint(text: str, style: str, view: View) -> str:
    return f"{style}{text}{RESET}" if view.color and style else text


def truncate(text: str, width: int, glyphs: Glyphs) -> str:
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + glyphs.ellipsis


def level_style(percent: float | None, thresholds: tuple[int, int]) -> str:
    if percent is None or percent != percent:
        return ""
    low, high = thresholds
    return GREEN if percent < low else YELLOW if percent < high else RED


def memory_percent(device: Device) -> float:
    if device.memory_used is None or not device.memory_total:
        return float("nan")
    return 100.0 * device.memory_used / device.memory_total


def format_bytes(value: int | None) -> str:
    """At most 6 characters: 980M, 12.3G, 1.20T."""
    if value is None:
        return "N/A"
    mib = value / (1 << 20)
    if mib < 1000:
        return f"{mib:.0f}M"
    gib = mib / 1024
    if gib < 100:
        return f"{gib:.1f}G"
    if gib < 1000:
        return f"{gib:.0f}G"
    return f"{gib / 1024:.2f}T"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "N/A"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def na(value: Any, template: str) -> str:
    return "N/A" if value is None else template.format(value)


def bar(percent: float | None, width: int, glyphs: Glyphs) -> str:
    """`width` cells filled in proportion to percent (eighths where the glyphs have them)."""
    if width <= 0:
        return ""
    if percent is None or percent != percent:
        return glyphs.bar_empty * width
    cells = max(0.0, min(percent, 100.0)) / 100 * width
    full = int(cells)
    text = glyphs.bar_full * full
    steps = len(glyphs.bar_partial)
    if full < width and steps:
        eighth = int((cells - full) * (steps + 1))
        if eighth:
            text += glyphs.bar_partial[eighth - 1]
    return text + glyphs.bar_empty * (width - len(text))


def sparkline(values: Iterable[float], width: int, glyphs: Glyphs) -> str:
    """The last `width` percentages as one character each, right-aligned; NaN as a blank."""
    if width <= 0:
        return ""
    recent = list(values)[-width:]
    top = len(glyphs.spark) - 1
    chars = [" " if v != v else glyphs.spark[min(top, max(1 if v > 0 else 0, round(v / 100 * top)))] for v in recent]
    return " " * (width - len(chars)) + "".join(chars)


@dataclasses.dataclass(frozen=True)
class DeviceLayout:
    """Which columns a device line shows and how wide the variable ones are."""

    name: int
    columns: tuple[str, ...]
    memory_bar: int
    util_bar: int
    memory_text: str  # "full" (used/total), "used" or "none"


DEVICE_COLUMN_WIDTHS = {"temperature": 4, "fan": 4, "pstate": 3, "power": 10}  # power: "1000/1000W"
INDEX_WIDTH = 2
MEMORY_FULL_WIDTH = 13  # "12.3G/80.0G" right-aligned in 6/6
MEMORY_USED_WIDTH = 6
UTIL_WIDTH = 4  # "100%"


def device_line_width(layout: DeviceLayout) -> int:
    parts = [INDEX_WIDTH, layout.name]
    parts += [DEVICE_COLUMN_WIDTHS[c] for c in layout.columns]
    if layout.memory_bar:
        parts.append(layout.memory_bar)
    parts.append({"full": MEMORY_FULL_WIDTH, "used": MEMORY_USED_WIDTH, "none": 0}[layout.memory_text])
    if layout.util_bar:
        parts.append(layout.util_bar)
    parts.append(UTIL_WIDTH)
    parts = [p for p in parts if p]
    return sum(parts) + len(parts) - 1


def plan_device_layout(width: int, longest_name: int) -> DeviceLayout:
    """Drop columns, then bars, then shorten names and memory text, until a device line fits `width`."""
    name = min(max(longest_name, NAME_MIN), NAME_MAX)
    columns = ["temperature", "fan", "pstate", "power"]
    candidates: list[DeviceLayout] = [DeviceLayout(name, tuple(columns), BAR_MIN, BAR_MIN, "full")]
    for dropped in OPTIONAL_DEVICE_COLUMNS:
        columns.remove(dropped)
        candidates.append(DeviceLayout(name, tuple(columns), BAR_MIN, BAR_MIN, "full"))
    candidates.append(DeviceLayout(name, (), 0, BAR_MIN, "full"))
    candidates.append(DeviceLayout(name, (), 0, 0, "full"))
    candidates.append(DeviceLayout(NAME_MIN, (), 0, 0, "full"))
    candidates.append(DeviceLayout(NAME_MIN, (), 0, 0, "used"))
    candidates.append(DeviceLayout(NAME_MIN, (), 0, 0, "none"))
    for layout in candidates:
        spare = width - device_line_width(layout)
        if spare < 0:
            continue
        if layout.name < name:
            return dataclasses.replace(layout, name=min(name, layout.name + spare))
        if layout.memory_bar or layout.util_bar:
            bars = [b for b in (layout.memory_bar, layout.util_bar) if b]
            grow = min(spare // len(bars), BAR_MAX - BAR_MIN)
            return dataclasses.replace(
                layout,
                memory_bar=layout.memory_bar + grow if layout.memory_bar else 0,
                util_bar=layout.util_bar + grow if layout.util_bar else 0,
            )
        return layout
    return candidates[-1]


def render_device(device: Device, layout: DeviceLayout, view: View) -> str:
    glyphs = view.glyphs
    name = truncate(printable(device.name), layout.name, glyphs).ljust(layout.name)
    head = f"{device.index:>{INDEX_WIDTH}} {paint(name, BOLD, view)}"
    if device.lost:
        return head + " " + paint("ERROR: GPU is lost", RED + BOLD, view)
    cells: list[str] = []
    for column in layout.columns:
        if column == "temperature":
            cells.append(na(device.temperature, "{}C").rjust(4))
        elif column == "fan":
            cells.append(na(device.fan, "{}%").rjust(4))
        elif column == "pstate":
            cells.append(na(device.pstate, "P{}").ljust(3))
        elif column == "power":
            power = na(None if device.power is None else round(device.power), "{}")
            limit = na(None if device.power_limit is None else round(device.power_limit), "{}")
            text = "N/A" if device.power is None and device.power_limit is None else f"{power}/{limit}W"
            cells.append(text.rjust(DEVICE_COLUMN_WIDTHS["power"]))
    memory = memory_percent(device)
    memory_style = level_style(memory, MEMORY_THRESHOLDS)
    if layout.memory_bar:
        cells.append(paint(bar(memory, layout.memory_bar, glyphs), memory_style, view))
    if layout.memory_text == "full":
        text = f"{format_bytes(device.memory_used):>6}/{format_bytes(device.memory_total):<6}"
        cells.append(paint(text, memory_style, view))
    elif layout.memory_text == "used":
        cells.append(paint(f"{format_bytes(device.memory_used):>6}", memory_style, view))
    util_style = level_style(device.util, UTIL_THRESHOLDS)
    if layout.util_bar:
        cells.append(paint(bar(device.util, layout.util_bar, glyphs), util_style, view))
    cells.append(paint(na(device.util, "{}%").rjust(UTIL_WIDTH), util_style, view))
    return " ".join([head] + cells)


def render_history(device: Device, history: History, width: int, view: View) -> str:
    """'   util <sparkline>  mem <sparkline>' filling the width."""
    indent = " " * (INDEX_WIDTH + 1)
    labels = "util  mem "
    room = width - len(indent) - len(labels) - 1
    each = max(room // 2, 0)
    util = sparkline(history.util.get(device.index, ()), each, view.glyphs)
    memory = sparkline(history.memory.get(device.index, ()), each, view.glyphs)
    return " ".join(
        [indent + paint("util", DIM, view), paint(util, CYAN, view), paint("mem", DIM, view), paint(memory, CYAN, view)]
    )


PROCESS_COLUMNS = (
    # name, width, right-aligned, dropped in this order (lower drops first); None is never dropped
    ("GPU", 3, True, None),
    ("PID", 7, True, None),
    ("T", 3, False, 5),
    ("USER", 8, False, 6),
    ("GPU-MEM", 7, True, None),
    ("%SM", 4, True, 7),
    ("%CPU", 5, True, 3),
    ("HOST-MEM", 8, True, 1),
    ("TIME", 8, True, 2),
)
COMMAND_MIN = 12


def plan_process_columns(width: int) -> list[tuple[str, int, bool]]:
    """The columns that fit before COMMAND, dropping the least useful first."""
    columns = list(PROCESS_COLUMNS)
    by_drop = sorted((c for c in columns if c[3] is not None), key=lambda c: c[3])
    while True:
        used = sum(c[1] + 1 for c in columns) + COMMAND_MIN
        if used <= width or not by_drop:
            return [(name, w, right) for name, w, right, _ in columns]
        columns.remove(by_drop.pop(0))


def process_cells(process: Process) -> dict[str, str]:
    return {
        "GPU": str(process.gpu),
        "PID": str(process.pid),
        "T": process.kind,
        "USER": printable(process.user or "N/A"),
        "GPU-MEM": format_bytes(process.gpu_memory),
        "%SM": na(process.sm, "{}"),
        "%CPU": na(None if process.cpu is None else round(process.cpu, 1), "{}"),
        "HOST-MEM": format_bytes(process.host_memory),
        "TIME": format_duration(process.elapsed),
    }


def render_process_row(process: Process, columns: list[tuple[str, int, bool]], width: int, view: View) -> str:
    cells = process_cells(process)
    parts = []
    for name, column_width, right in columns:
        text = truncate(cells[name], column_width, view.glyphs)
        parts.append(text.rjust(column_width) if right else text.ljust(column_width))
    row = " ".join(parts)
    room = width - len(row) - 1
    if process.state == "running":
        command = truncate(printable(process.command), room, view.glyphs)
        line = f"{row} {command}" if room > 0 else row
        return clip(line, width)
    note = truncate(f"<{process.state}>", room, view.glyphs)
    return clip(paint(f"{row} {note}" if room > 0 else row, DIM, view), width)


def render_process_header(columns: list[tuple[str, int, bool]], width: int, view: View) -> str:
    parts = [name.rjust(w) if right else name.ljust(w) for name, w, right in columns]
    header = clip(" ".join(parts + ["COMMAND"]), width)
    # Padded only when coloured, so that the reverse-video band spans the pane.
    return paint(header.ljust(width), REVERSE, view) if view.color else header


def render_title(snapshot: Snapshot, width: int, view: View) -> str:
    title, _, _ = SORT_KEYS[view.sort]
    stamp = datetime.datetime.fromtimestamp(snapshot.time).strftime("%H:%M:%S")
    driver = f"driver {snapshot.driver}" if snapshot.driver else "driver N/A"
    order = f"sort {title}{' rev' if view.reverse else ''}"
    parts = [paint("gpumon", BOLD, view), printable(snapshot.hostname), printable(driver), stamp, order, "q quit"]
    return clip("  ".join(parts), width)


@dataclasses.dataclass(frozen=True)
class RowPlan:
    devices: int  # device lines shown
    more_devices: int
    history: bool
    process_header: bool
    processes: int  # process rows shown
    more_processes: int


def plan_rows(height: int, width: int, n_devices: int, n_processes: int) -> RowPlan:
    """How the rows below the title are shared: devices first, then processes, then history lines."""
    rows = height - 1
    shown = max(n_devices, 1)
    if shown > rows:
        visible = max(rows - 1, 0)
        return RowPlan(visible, n_devices - visible, False, False, 0, 0)
    rest = rows - shown
    wanted = 1 + n_processes if n_processes else 1
    history = (
        n_devices > 0 and width >= HISTORY_MIN_WIDTH and rest - n_devices >= min(wanted, PROCESS_ROWS_BEFORE_HISTORY)
    )
    if history:
        rest -= n_devices
    if n_processes == 0 or rest <= 0:
        return RowPlan(n_devices, 0, history, False, 0, 0)
    if rest == 1:
        return RowPlan(n_devices, 0, history, False, 0, n_processes)
    room = rest - 1
    if n_processes <= room:
        return RowPlan(n_devices, 0, history, True, n_processes, 0)
    return RowPlan(n_devices, 0, history, True, room - 1, n_processes - (room - 1))


def render_screen(snapshot: Snapshot, history: History, view: View, width: int, height: int) -> list[str]:
    """At most `height` lines, none wider than `width` visible characters."""
    if width <= 0 or height <= 0:
        return []
    lines = [render_title(snapshot, width, view)]
    devices = snapshot.devices
    processes = sort_processes(snapshot.processes, view.sort, view.reverse)
    plan = plan_rows(height, width, len(devices), len(processes))
    layout = plan_device_layout(width, max((len(d.name) for d in devices), default=NAME_MIN))
    if not devices and height > 1:
        lines.append(paint("No NVIDIA GPU found", YELLOW, view))
    for device in devices[: plan.devices]:
        lines.append(render_device(device, layout, view))
        if plan.history and not device.lost:
            lines.append(render_history(device, history, width, view))
        elif plan.history:
            lines.append("")
    if plan.more_devices:
        lines.append(paint(f"+{plan.more_devices} more GPUs", DIM, view))
    columns = plan_process_columns(width)
    if plan.process_header:
        lines.append(render_process_header(columns, width, view))
    lines.extend(render_process_row(p, columns, width, view) for p in processes[: plan.processes])
    if plan.more_processes:
        lines.append(paint(f"+{plan.more_processes} more processes", DIM, view))
    elif devices and not processes and len(lines) < height and plan.devices == len(devices):
        lines.append("No running processes found")
    return [clip(line, width) for line in lines[:height]]


def render_once(snapshot: Snapshot, view: View, width: int) -> str:
    """Every GPU and every process, for logs and pipes: the screen without the height limit or history."""
    lines = [render_title(snapshot, width, view)]
    layout = plan_device_layout(width, max((len(d.name) for d in snapshot.devices), default=NAME_MIN))
    lines += [render_device(device, layout, view) for device in snapshot.devices] or ["No NVIDIA GPU found"]
    processes = sort_processes(snapshot.processes, view.sort, view.reverse)
    columns = plan_process_columns(width)
    if processes:
        lines.append(render_process_header(columns, width, view))
        lines += [render_process_row(p, columns, width, view) for p in processes]
    elif snapshot.devices:
        lines.append("No running processes found")
    return "\n".join(clip(line, width) for line in lines) + "\n"


def frame(lines: list[str], width: int, height: int) -> str:
    """Cursor home, each line then clear-to-end-of-line, clear below; never a newline on the last row (no scroll)."""
    parts = [CURSOR_HOME]
    for number, line in enumerate(lines):
        parts.append(line)
        if visible_width(line) < width:
            parts.append(CLEAR_TO_EOL)
        if number < len(lines) - 1:
            parts.append("\r\n")
    if len(lines) < height:
        parts.append("\r\n" + CLEAR_TO_EOS if lines else CLEAR_TO_EOS)
    return "".join(parts)


def snapshot_json(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "time": datetime.datetime.fromtimestamp(snapshot.time, datetime.UTC).isoformat(),
        "hostname": snapshot.hostname,
        "driver_version": snapshot.driver,
        "devices": [
            {
                "index": d.index,
                "name": d.name,
                "uuid": d.uuid,
                "lost": d.lost,
                "temperature_c": d.temperature,
                "fan_percent": d.fan,
                "performance_state": d.pstate,
                "power_w": d.power,
                "power_limit_w": d.power_limit,
                "memory_used_bytes": d.memory_used,
                "memory_total_bytes": d.memory_total,
                "utilization_gpu_percent": d.util,
                "utilization_memory_percent": d.memory_util,
            }
            for d in snapshot.devices
        ],
        "processes": [
            {
                "gpu": p.gpu,
                "pid": p.pid,
                "type": p.kind,
                "state": p.state,
                "user": p.user,
                "gpu_memory_bytes": p.gpu_memory,
                "sm_percent": p.sm,
                "cpu_percent": None if p.cpu is None else round(p.cpu, 1),
                "host_memory_bytes": p.host_memory,
                "elapsed_s": None if p.elapsed is None else round(p.elapsed, 1),
                "command": p.command,
            }
            for p in sort_processes(snapshot.processes, DEFAULT_SORT, False)
        ],
    }


# ----------------------------------------------------------------------------------------------------------------
# Terminal I/O.


def terminal_size(environ: dict[str, str], fd: int) -> tuple[int, int]:
    """(columns, lines): COLUMNS/LINES from the environment first, then the terminal, then 80x24."""
    try:
        real = os.get_terminal_size(fd)
        fallback = (real.columns or 80, real.lines or 24)
    except OSError:
        fallback = (80, 24)
    size = []
    for name, default in (("COLUMNS", fallback[0]), ("LINES", fallback[1])):
        value = environ.get(name, "")
        size.append(int(value) if value.isdigit() and int(value) > 0 else default)
    return size[0], size[1]


def color_wanted(args: argparse.Namespace, stream: Any, environ: dict[str, str]) -> bool:
    return not args.no_color and not environ.get("NO_COLOR") and stream.isatty()


def glyphs_for(stream: Any) -> Glyphs:
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return UNICODE_GLYPHS if encoding == "utf8" else ASCII_GLYPHS


def import_nvml() -> ModuleType:
    try:
        return importlib.import_module("pynvml")
    except ImportError as error:
        raise NvmlUnavailable(f"the nvidia-ml-py package is not installed ({error})") from error


def raise_quit(signum: int, frame: FrameType | None) -> None:
    raise Quit(signum)


def ignore_signal(signum: int, frame: FrameType | None) -> None:
    """SIGWINCH only has to wake the select through the wakeup fd."""


def read_keys(fd: int) -> str:
    try:
        return os.read(fd, 64).decode(errors="ignore")
    except (BlockingIOError, InterruptedError):
        return ""


def run_monitor(session: NvmlSession, interval: float, view: View) -> int:
    """The full-screen loop; the finally block restores the terminal on every way out."""
    out = sys.stdout
    in_fd = sys.stdin.fileno() if sys.stdin and sys.stdin.isatty() else None
    saved_tty = termios.tcgetattr(in_fd) if in_fd is not None else None
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    handled = (signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH, signal.SIGTSTP)
    previous = {s: signal.getsignal(s) for s in handled}
    previous_wakeup = -1
    host = HostProcesses()
    history = History()

    def suspend(signum: int, frame: FrameType | None) -> None:
        # Ctrl-Z: give the shell its screen back, stop, and take the screen again on fg (the wakeup fd redraws).
        restore_terminal(out, in_fd, saved_tty)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)
        enter_terminal(out, in_fd)

    try:
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGTERM, raise_quit)
        signal.signal(signal.SIGHUP, raise_quit)
        signal.signal(signal.SIGWINCH, ignore_signal)
        signal.signal(signal.SIGTSTP, suspend)
        enter_terminal(out, in_fd)
        while True:
            snapshot = collect(session, host)
            history.record(snapshot.devices)
            deadline = time.monotonic() + interval
            redraw = True
            while True:
                if redraw:
                    width, height = terminal_size(dict(os.environ), out.fileno())
                    out.write(frame(render_screen(snapshot, history, view, width, height), width, height))
                    out.flush()
                    redraw = False
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                watched = [wake_read] + ([in_fd] if in_fd is not None else [])
                ready, _, _ = select.select(watched, [], [], timeout)
                if wake_read in ready:
                    drain(wake_read)
                    redraw = True
                if in_fd is not None and in_fd in ready:
                    for key in read_keys(in_fd):
                        if key in ("q", "Q"):
                            return 0
                        if key in SORT_KEYS:
                            view = dataclasses.replace(view, sort=key)
                            redraw = True
                        elif key == "r":
                            view = dataclasses.replace(view, reverse=not view.reverse)
                            redraw = True
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Quit as stop:
        return 128 + stop.signum
    finally:
        restore_terminal(out, in_fd, saved_tty)
        signal.set_wakeup_fd(previous_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(wake_read)
        os.close(wake_write)


def drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def enter_terminal(out: Any, in_fd: int | None) -> None:
    """Keys without Enter and without echo (signals such as Ctrl-C still work), alternate screen, no cursor."""
    if in_fd is not None:
        tty.setcbreak(in_fd, termios.TCSANOW)
    out.write(ENTER_SCREEN)
    out.flush()


def restore_terminal(out: Any, in_fd: int | None, saved_tty: list[Any] | None) -> None:
    """Leave the alternate screen, show the cursor, reset attributes and the tty mode; a vanished tty is no error."""
    try:
        out.write(LEAVE_SCREEN)
        out.flush()
    except OSError:
        pass
    if in_fd is not None and saved_tty is not None:
        try:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved_tty)
        except (OSError, termios.error):
            pass


def interval_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"the interval must be at least {MIN_INTERVAL} s, got {text}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Full-screen GPU monitor: devices, history and processes, from NVML and /proc."
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="print one snapshot and exit")
    mode.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    parser.add_argument(
        "--interval",
        type=interval_seconds,
        default=DEFAULT_INTERVAL,
        help=f"seconds between refreshes (default {DEFAULT_INTERVAL}, minimum {MIN_INTERVAL})",
    )
    parser.add_argument("--no-color", action="store_true", help="no colours (also: NO_COLOR set and not empty)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    environ = dict(os.environ)
    try:
        session = NvmlSession(import_nvml())
    except NvmlUnavailable as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    try:
        view = View(color=color_wanted(args, sys.stdout, environ), glyphs=glyphs_for(sys.stdout))
        if args.json:
            print(json.dumps(snapshot_json(collect(session, HostProcesses())), indent=2))
            return 0
        if args.once or not sys.stdout.isatty():
            width, _ = terminal_size(environ, sys.stdout.fileno())
            sys.stdout.write(render_once(collect(session, HostProcesses()), view, width))
            return 0
        return run_monitor(session, args.interval, view)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except session.nvml.NVMLError as error:
        if args.debug:
            raise
        print(f"{PROG}: error: NVML failed: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 (one line instead of a traceback, unless --debug)
        if args.debug:
            raise
        print(f"{PROG}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
