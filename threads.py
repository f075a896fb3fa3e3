"""Choose torch's intra-op thread count from the cores this process may really use and how busy they are.

torch defaults to one thread per core it sees; on a small machine shared with
other work those threads wait on each other and a step can run many times
slower than on one thread. The choice: min(physical cores, CPUs in this
process's affinity mask, the cgroup CPU quota, CPUs left idle by the load
average), at least 1. `SA_THREADS` (or `--threads` on the CLI) overrides it;
an explicit `OMP_NUM_THREADS` is respected as is.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from sa.errors import SAError

ENV = "SA_THREADS"
_SET_BY_US: str | None = None  # the OMP_NUM_THREADS value configure() wrote (not a user's choice)


def physical_cores(cpuinfo: str | None = None) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo (hyper-threads share a core); None when unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    cores, phys = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(cpu_max: str | None = None) -> float | None:
    """CPUs allowed by a cgroup v2 quota ('quota period' in cpu.max); None when unlimited or unknown."""
    if cpu_max is None:
        try:
            cpu_max = Path("/sys/fs/cgroup/cpu.max").read_text()
        except OSError:
            return None
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return float(parts[0]) / float(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def load_average() -> float | None:
    """The 1-minute load average, None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(physical: int | None, usable: int, load: float | None, quota: float | None = None) -> int:
    """Threads for a CPU-bound torch process: min(physical, usable, quota, idle CPUs by the load), at least 1.

    `load` is the load average before this process starts working, so `usable - load` CPUs are idle.
    """
    n = min(usable, physical or usable)
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    if load is not None:
        n = min(n, max(1, math.floor(usable - load + 0.5)))
    return max(1, n)


def parse_threads(value: str | int, source: str) -> int:
    """A whole number of at least 1 from an option or environment variable, else SAError naming the source."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise SAError(f"{source} {value!r} must be a whole number of at least 1 (torch intra-op threads).")
    return n


def default_threads() -> int:
    """The thread count `choose_threads` gives on this machine right now."""
    return choose_threads(physical_cores(), affinity_cpus(), load_average(), cgroup_quota())


def apply_threads(requested: int | str | None = None) -> int:
    """Set torch's intra-op threads: `requested`, else $SA_THREADS, else $OMP_NUM_THREADS's, else the default; returns it."""
    import torch

    if requested is not None:
        n = parse_threads(requested, "--threads")
    elif os.environ.get(ENV):
        n = parse_threads(os.environ[ENV], ENV)
    elif os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()  # the user chose; torch already read it
    else:
        n = default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def configure(requested: int | str | None = None) -> int | None:
    """CLI start-up: choose the thread count and make torch use it (set_num_threads if torch is loaded, else
    OMP_NUM_THREADS, which torch and worker processes read at import); None when the user's OMP_NUM_THREADS stands."""
    import sys

    global _SET_BY_US
    user_omp = os.environ.get("OMP_NUM_THREADS")
    if requested is None and not os.environ.get(ENV) and user_omp and user_omp != _SET_BY_US:
        return None
    if requested is not None:
        n = parse_threads(requested, "--threads")
    elif os.environ.get(ENV):
        n = parse_threads(os.environ[ENV], ENV)
    else:
        n = default_threads()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = _SET_BY_US = str(n)
    return n
