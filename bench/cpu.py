"""CPU time (user + system) that groups of processes spend over a stretch of time, read from /proc: the load
benchmark's CPU ms per request."""
import os
import threading
from pathlib import Path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """A live process's name, parent pid and CPU ticks so far (user + system, its own, not its children's)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # it has ended
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()  # from field 3 (state) on: 4 is the parent, 14 and 15 the times
    return name, int(fields[1]), int(fields[11]) + int(fields[12])


def process_and_children(root: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := process_stat(int(entry))) and stat[1] == root:
            children.append(int(entry))
    return [root, *children]


class CpuMeter:
    """CPU ms of each group of processes within the `with` block; `groups` maps a name to a function that lists the
    group's pids now. A thread samples them every `interval` seconds, so that a process that ends meanwhile still
    counts up to its last sample (a PostgreSQL backend ends when its Django connection grows old) and one that starts
    meanwhile counts from zero."""

    def __init__(self, groups: dict, interval=0.25):
        self.groups, self.interval = groups, interval

    def sample(self) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                if stat := process_stat(pid):
                    self.last[name][pid] = stat[2]

    def __enter__(self):
        self.last = {name: {} for name in self.groups}
        self.sample()
        self.first = {name: dict(ticks) for name, ticks in self.last.items()}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        self.sample()

    def ms(self, name: str) -> float:
        first, last = self.first[name], self.last[name]
        return sum(ticks - first.get(pid, 0) for pid, ticks in last.items()) * TICK_MS
