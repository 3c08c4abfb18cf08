"""Profiles of params overrides become `dvc exp run -S` flags; unknown keys are refused."""

import pytest

from asap.config import ConfigError
from pipelines.profile import flags

PARAMS = {"dataset": "facades-256x256", "train": {"steps": 300, "use_gpu": "auto"},
          "sweep": {"downsampling": [8, 16, 32]}, "segmenter": {"crop": 128}}


def test_profile_flags_hand_worked():
    profile = {"dataset": "facades-512x512", "train": {"steps": 10, "use_gpu": True},
               "sweep": {"downsampling": [16, 32, 64]}, "segmenter": {"crop": None}}
    assert flags(profile, PARAMS) == ["-S", "dataset=facades-512x512", "-S", "train.steps=10",
                                      "-S", "train.use_gpu=true", "-S", "sweep.downsampling=[16,32,64]",
                                      "-S", "segmenter.crop=null"]


def test_unknown_profile_key_is_refused():
    with pytest.raises(ConfigError, match="train.stpes"):
        flags({"train": {"stpes": 10}}, PARAMS)


def test_shipped_profile_matches_params_yaml():
    from asap.config import load_params
    import yaml
    from project_helpers import REPO
    profile = yaml.safe_load((REPO / "profiles" / "paper-gpu.yaml").read_text())
    out = flags(profile, load_params(REPO / "params.yaml"))
    assert "model.lr_max_width=1024" in out and "train.ndf=64" in out
