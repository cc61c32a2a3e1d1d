"""logs.py: lines reach the user from process 0, warnings through the stdlib logger,
and the progress line's ETA respects a time budget."""
import re

from gralign_jax import logs


def test_info_prints_one_line_and_warning_goes_through_the_logger(capsys, caplog):
  logs.info("a", 1)
  assert capsys.readouterr().out == "a 1\n"
  logs.warning("Skipping a bad image: x.jpg")
  assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
      ("gralign_jax", "WARNING", "Skipping a bad image: x.jpg")]


def _eta_minutes(out: str) -> float:
  return float(re.search(r"ETA ([\d.]+) min", out).group(1))


def test_progress_eta_is_capped_by_the_training_time_left(capsys, monkeypatch):
  clock = [1000.0]
  monkeypatch.setattr(logs.time, "time", lambda: clock[0])
  aux = {"loss": 1.0, "score_spread": 0.1}
  # 1 step/s with 99,000 steps to go, but 100 s of a 400 s budget already spent.
  progress = logs.Progress(0, 100_000, budget_seconds=400, spent_seconds=100)
  clock[0] += 1000
  progress.update(1000, aux)
  assert _eta_minutes(capsys.readouterr().out) == 0.0  # 300 s left, 1000 s used
  progress = logs.Progress(0, 100_000, budget_seconds=4000, spent_seconds=100)
  clock[0] += 600
  progress.update(600, aux)
  assert _eta_minutes(capsys.readouterr().out) == round((3900 - 600) / 60, 1)
  progress = logs.Progress(0, 1000)  # no budget: steps left over the rate
  clock[0] += 100
  progress.update(500, aux)
  assert _eta_minutes(capsys.readouterr().out) == round(100 / 60, 1)
