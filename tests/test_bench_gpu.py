"""bench/gpu.py runs its CUDA code paths on the CPU at tiny sizes (`--device cpu --quick`) and refuses CUDA where
there is none in one sentence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow  # ~10 s of CPU, 50 s wall on the loaded 2-core build machine
def test_gpu_bench_runs_quick_on_cpu():
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick"], capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    ratio = re.search(r"end to end: ([\d.]+) img/s = ([\d.]+) of the bare forward", out)
    assert ratio and float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0, out
    runs = re.search(r"sa train_runs: 2 runs in [\d.]+ s = ([\d.]+) runs/min = ([\d.]+)x the plain loop", out)
    assert runs and float(runs.group(1)) > 0, out
    assert "paper grid" in out and out.count("peak RSS") >= 4, out
    assert "load average" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_bench_without_cuda_says_so():
    res = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert res.returncode != 0
    assert "CUDA is not available; use --device cpu --quick." in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
