"""Shared fixtures: everything offline, small, and seeded."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    """Point every model hub cache at an empty temp dir so no test can use or download weights by accident."""
    hub = tmp_path_factory.mktemp("hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(hub / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(hub / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(hub / "xdg"))
