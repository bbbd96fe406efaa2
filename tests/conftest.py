"""Shared pytest set-up: eight simulated CPU devices, quiet TensorFlow, real-data paths.

The environment is set before JAX or TensorFlow is imported by any test module.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

pytest_plugins = ["data_fixtures"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_UCF24 = REPO_ROOT.parent / "shared" / "data" / "ucf101_24"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT


@pytest.fixture(scope="session")
def ucf24_dir() -> pathlib.Path:
  """The real UCF101-24 annotations shipped beside the project (never copied into it)."""
  if not (SHARED_UCF24 / "pyannot.pkl").exists():
    pytest.skip(f"real UCF101-24 annotations not found at {SHARED_UCF24}")
  return SHARED_UCF24
