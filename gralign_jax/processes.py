"""Who holds a file: a stamp of the writing process, and whether it is surely gone.

The run directory's lock (run_dir.WorkdirLock) and the synthetic set's partial folder
(data/synthetic/publish.py) stamp what they hold with owner_record() and take it over
only when surely_gone(stamp): a process of this host that no longer runs (by pid and
kernel start time, so that a reused pid is told apart; a zombie counts as gone). A stamp
from another host, or one that cannot be read, is never taken over.
"""
import os
import socket
import time


def _proc_stat(pid: int) -> list[str]:
  """The fields of /proc/<pid>/stat after the command name ([] if unknown): [0] is the
  state (Z: a zombie), [19] the kernel's start time."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      return f.read().rsplit(")", 1)[1].split()
  except (OSError, IndexError):
    return []


def process_start(pid: int) -> str:
  """The kernel's start time of `pid` (distinguishes a reused pid), or "" if unknown."""
  fields = _proc_stat(pid)
  return fields[19] if len(fields) > 19 else ""


def alive(pid: int, start: str = "") -> bool:
  """Whether `pid` (started at `start`, "" if unknown) still runs. A zombie does not: it
  was killed or exited, holds no files, and waits only for a parent (or init) to reap
  it, which a killed launcher's orphans may wait on for a while."""
  if os.name == "nt":
    return True  # os.kill(pid, 0) would terminate the process on Windows
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, owned by someone else
  fields = _proc_stat(pid)
  if fields[:1] == ["Z"]:
    return False
  return not start or len(fields) <= 19 or fields[19] == start


def owner_record() -> dict:
  """This process's stamp: host, pid, its start time, and since when (for messages)."""
  pid = os.getpid()
  return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def surely_gone(owner) -> bool:
  """Whether the stamp names a process of this host that no longer runs. False for
  another host's stamp or one that cannot be read: then nobody can tell."""
  if not isinstance(owner, dict):
    return False
  pid = owner.get("pid")
  if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return False
  return not alive(pid, str(owner.get("start") or ""))
