"""The scoring engine across two real JAX processes (jax.distributed on CPU, two devices
each): the matrix and both top-k outputs equal the definition on every host."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gralign_jax import configs
from gralign_jax.scores import similarity

pytestmark = pytest.mark.exclusive  # jax.distributed processes with deadlines
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_scorer import grm_inputs  # noqa: E402  pylint: disable=g-import-not-at-top


def test_two_hosts_score_the_same_matrix_and_top_k():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = textwrap.dedent(f"""
      import json, sys
      import jax, numpy as np
      jax.distributed.initialize(coordinator_address="localhost:{port}",
                                 num_processes=2, process_id=int(sys.argv[1]))
      sys.path.insert(0, "tests")
      from test_scorer import grm_inputs
      from gralign_jax import configs
      from gralign_jax.scores import blockwise, scorer
      assert jax.process_count() == 2 and jax.device_count() == 4
      img, txt = grm_inputs(seed=11, ni=13, nt=23)   # ragged for 4 devices
      sc = scorer.Scorer(configs.model_config(), backend="xla", block_images=2,
                         block_texts=5, mesh=blockwise.default_mesh())
      full = sc.matrix(img, txt)
      tv, ti = sc.topk_texts(img, txt, 4)
      iv, ii = sc.topk_images(img, txt, 3)
      print("OUT", json.dumps({{"full": full.tolist(), "ti": ti.tolist(),
                               "ii": ii.tolist()}}))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(pid)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for pid in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [json.loads(next(line for line in out.splitlines()
                             if line.startswith("OUT "))[4:]) for out, _ in outs]
  cfg = configs.model_config()
  img, txt = grm_inputs(seed=11, ni=13, nt=23)
  want = np.asarray(similarity.total_score(similarity.pair_scores(img, txt, cfg), cfg))
  for r in results:
    np.testing.assert_allclose(np.asarray(r["full"]), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(r["ti"], np.argsort(-want, 1, kind="stable")[:, :4])
    np.testing.assert_array_equal(r["ii"], np.argsort(-want.T, 1, kind="stable")[:, :3])
