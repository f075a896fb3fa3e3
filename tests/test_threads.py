"""Thread-count choice (sa.threads): the rule with injected cores / load / quota, the parsers on real-format text,
and the CLI option and environment variable end to end."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from sa import threads
from sa.cli import app

# /proc/cpuinfo as Linux writes it (fields trimmed): 2 sockets x 2 cores x 2 hyper-threads = 8 logical CPUs.
CPUINFO = "".join(
    f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {(i // 2) % 2}\nsiblings\t: 4\n\n" for i in range(8)
)


def test_physical_cores_counts_hyperthreads_once():
    assert threads.physical_cores(CPUINFO) == 4
    assert threads.physical_cores("processor\t: 0\n") is None  # no core ids (some VMs): unknown, not 0


def test_cgroup_quota_reads_cpu_max():
    assert threads.cgroup_quota("150000 100000\n") == 1.5
    assert threads.cgroup_quota("max 100000\n") is None
    assert threads.cgroup_quota("garbage\n") is None


@pytest.mark.parametrize("physical, usable, load, quota, want", [
    (16, 32, 0.0, None, 16),    # idle: one thread per physical core, not per hyper-thread
    (16, 4, 0.0, None, 4),      # affinity mask (taskset, a scheduler's allocation) caps it
    (16, 32, 0.0, 2.5, 2),      # a cgroup quota of 2.5 CPUs: 2 threads
    (2, 2, 2.8, None, 1),       # a busy 2-core machine (the build machine): 1 thread
    (2, 2, 0.3, None, 2),       # the same machine idle: both cores
    (2, 2, 0.7, None, 1),       # one core's worth of other work: 1
    (16, 16, 4.0, None, 12),    # a loaded big machine keeps its idle cores
    (None, 6, None, None, 6),   # nothing known but the mask
    (4, 4, 100.0, None, 1),     # never below 1
])
def test_choose_threads(physical, usable, load, quota, want):
    assert threads.choose_threads(physical, usable, load, quota) == want


@pytest.fixture
def torch_threads_restored(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    yield monkeypatch
    torch.set_num_threads(before)


def test_configure_default_follows_the_rule(torch_threads_restored):
    monkeypatch = torch_threads_restored
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 2)
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "load_average", lambda: 3.0)
    assert threads.configure() == 1
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    assert threads.configure() == 2 and torch.get_num_threads() == 2


def test_explicit_omp_num_threads_stands_and_sa_threads_overrides_it(torch_threads_restored):
    monkeypatch = torch_threads_restored
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch.set_num_threads(3)
    assert threads.configure() is None and torch.get_num_threads() == 3
    monkeypatch.setenv(threads.ENV, "1")
    assert threads.configure() == 1 and torch.get_num_threads() == 1


def test_cli_threads_option_sets_torch(torch_threads_restored):
    torch.set_num_threads(2)
    res = CliRunner().invoke(app, ["--threads", "1", "cache", "--help"])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("args, env", [(["--threads", "0", "cache", "--help"], {}),
                                       (["cache", "--help"], {"SA_THREADS": "many"})])
def test_bad_thread_count_is_one_sentence(torch_threads_restored, args, env):
    res = CliRunner().invoke(app, args, env=env)
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert "threads" in res.output.lower() or "SA_THREADS" in res.output


def test_parse_threads_names_the_source():
    with pytest.raises(threads.SAError, match="SA_THREADS 'x' must be a whole number of at least 1"):
        threads.parse_threads("x", "SA_THREADS")
