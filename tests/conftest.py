"""Test set-up: 8 fake CPU devices, so that sharded code paths run on any machine.

XLA reads the flag when JAX initialises its backend, so it is set before anything
imports jax. Tests that need one device build a mesh of `jax.devices()[:1]`.
"""
import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile

_DEVICES = "--xla_force_host_platform_device_count=8"
if _DEVICES not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _DEVICES).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs in pytest-xdist workers (pytest.ini: one per core, up to 4, whole files
# to each); the controller makes this session's folders below and the workers, which
# inherit its environment, share them.
if "PYTEST_XDIST_WORKER" not in os.environ:
  # Caches the code keeps between runs (the TFDS caption index) go to a fresh folder.
  os.environ["GRALIGN_CACHE"] = tempfile.mkdtemp(prefix="gralign_cache_")
  # XLA's compiled programs are kept in a fresh folder for this test session, shared
  # with the workers and the subprocesses the tests start: most tests train the same
  # smoke model, and compiling it, not running it, is most of their time (the suite
  # took about twice as long without). A program read back from the cache is the one
  # compiled, so no result changes.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gralign_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  # The workers' locks for tests marked `exclusive` (below).
  os.environ["GRALIGN_TEST_LOCKS"] = tempfile.mkdtemp(prefix="gralign_test_locks_")
  # These folders are this session's own: removed when it ends.
  for _folder in (os.environ["GRALIGN_CACHE"], os.environ["JAX_COMPILATION_CACHE_DIR"],
                  os.environ["GRALIGN_TEST_LOCKS"]):
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)


import pytest  # noqa: E402  (after the environment above is set)


def pytest_xdist_auto_num_workers(config):  # pylint: disable=unused-argument
  """`-n auto` (pytest.ini): one worker per core, at most 4. Each worker holds a JAX
  runtime with 8 fake devices; more than 4 gain little and cost memory."""
  return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory):
  """The smoke-size synthetic set (demo.py:smoke), generated once per test session."""
  from experiments.configs import demo  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  root = str(tmp_path_factory.mktemp("data") / "synthetic_smoke")
  from gralign_jax import configs  # pylint: disable=g-import-not-at-top
  config = configs.finalize(demo.get_config("smoke"))
  config.data.root = root
  datasets.prepare(config, log=lambda *a: None)
  return root


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Files that hold an end-to-end (slow) test go first. Workers take whole files in
  this order, so a minutes-long file started last would leave one worker running
  alone at the end (the suite's tail was 12 minutes of it)."""
  slow = {item.path for item in items if item.get_closest_marker("slow")}
  items.sort(key=lambda item: item.path not in slow)  # stable: file order kept


@pytest.fixture(autouse=True)
def _alone_when_exclusive(request):
  """Under xdist, a test marked `exclusive` (several JAX processes that must meet
  deadlines: gloo's 30 s connect, heartbeats, save timeouts) runs with no other test
  beside it; the others share. A readers-writer lock over the workers, writer first:
  every test passes the turnstile; an exclusive one keeps it, so that no new test
  starts, and takes the room once the tests in it have ended."""
  folder = os.environ.get("GRALIGN_TEST_LOCKS")
  if not (folder and os.environ.get("PYTEST_XDIST_WORKER")):
    yield
    return
  exclusive = request.node.get_closest_marker("exclusive") is not None
  with contextlib.ExitStack() as held:
    turnstile = held.enter_context(open(os.path.join(folder, "turnstile"), "a"))
    room = held.enter_context(open(os.path.join(folder, "room"), "a"))
    fcntl.flock(turnstile, fcntl.LOCK_EX)
    fcntl.flock(room, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    if not exclusive:
      fcntl.flock(turnstile, fcntl.LOCK_UN)
    yield  # closing the files lets both locks go
