"""Shared pytest set-up: eight simulated CPU devices compiling quickly, quiet TensorFlow,
real-data paths.

The environment is set before JAX or TensorFlow is imported by any test module.
"""

import gc
import os
import pathlib
import shutil
import tempfile

from tests import xla_env

os.environ.setdefault('XLA_FLAGS', xla_env.xla_flags(8))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# Many tests compile the same tiny train and eval steps: one persistent compilation
# cache per test run compiles each once. The controller makes it before the
# pytest-xdist workers start, so they and their subprocesses inherit it; it is removed
# at the end. A cache the user set up is used and kept.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='stconsist_jax_tests_')
  os.environ['STCONSIST_JAX_TESTS_OWN_CACHE'] = '1'
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # noqa: E402

pytest_plugins = ['data_fixtures', 'gcs_fixtures']

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_UCF24 = REPO_ROOT.parent / 'shared' / 'data' / 'ucf101_24'


@pytest.fixture(scope='session')
def repo_root() -> pathlib.Path:
  return REPO_ROOT


@pytest.fixture(scope='session')
def ucf24_dir() -> pathlib.Path:
  """The real UCF101-24 annotations shipped beside the project (never copied into it)."""
  if not (SHARED_UCF24 / 'pyannot.pkl').exists():
    pytest.skip(f'real UCF101-24 annotations not found at {SHARED_UCF24}')
  return SHARED_UCF24


def pytest_sessionfinish(session):
  """The controller (not an xdist worker) removes the compilation cache it made."""
  if (
    not hasattr(session.config, 'workerinput')
    and os.environ.get('STCONSIST_JAX_TESTS_OWN_CACHE') == '1'
  ):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)


# The longest tests, started first so that the two pytest-xdist workers finish together
# instead of one running a long test alone at the end.
LONG_TESTS = (
  'test_reduced_demo_learns',
  'test_build_train_outage_during_a_save_resume_and_evaluate_on_a_bucket',
  'test_sigterm_then_sigkill_and_resumes_continue_the_same_loss_curve',
  'test_evaluate_writes_reports_and_is_deterministic',
  'test_two_process_run_matches_single_process',
  'test_make_evaluate_fn_for_train_and_eval',
  'test_r34_full_width_parity',
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.originalname not in LONG_TESTS)


def pytest_runtest_logfinish(nodeid, location):
  """After each test, collects its garbage and moves what stays alive out of the
  garbage collector's sight.

  A worker holds a million long-lived objects (JAX, TensorFlow and PyTorch, jit
  caches), and each full collection scanned them all: half a second, dozens of times
  a run. Once frozen, collections scan only what the running test made (frozen objects
  are still freed by reference counting).
  """
  del nodeid, location
  gc.collect()
  gc.freeze()
