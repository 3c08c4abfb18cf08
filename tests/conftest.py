"""Shared fixtures: a small real prepared dataset and throw-away project folders for stage tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from project_helpers import REPO, prepare_facades

# Tiny tensors on 2 shared cores: more threads than cores only adds contention.
torch.set_num_threads(1)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def facades64(tmp_path_factory) -> Path:
    """The real CMP facades prepared at 64x64 (all 378 pairs), once per test session."""
    return prepare_facades(tmp_path_factory.mktemp("prepared"), "64x64")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu); this machine has no GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
