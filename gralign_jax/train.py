"""train_and_evaluate(config, workdir): the whole run, top to bottom.

Sections, in order: run directory / mesh / input / model and optimiser / state /
update step / checkpoint and resume / evaluation / loop / final test. Running again
with the same workdir resumes from the latest checkpoint, with the input pipeline at
the same position, and ends with exactly the parameters of an uninterrupted run.
"""
import contextlib
import json
import time

import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import checkpoint as ckpt_lib
from gralign_jax import configs
from gralign_jax import grad_cache
from gralign_jax import logs
from gralign_jax import losses
from gralign_jax import metrics as metrics_lib
from gralign_jax import optim
from gralign_jax import paths
from gralign_jax import preemption
from gralign_jax import profiling
from gralign_jax import run_dir
from gralign_jax import sharding
from gralign_jax import throughput
from gralign_jax import train_state
from gralign_jax.data import datasets
from gralign_jax.data import false_captions
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.evaluation import collapse
from gralign_jax.evaluation import evaluator as evaluator_lib
from gralign_jax.evaluation import probe as probe_lib
from gralign_jax.evaluation import recall
from gralign_jax.models import grm
from gralign_jax.models import saliency
from gralign_jax.scores import similarity


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_changes: bool = False) -> dict:
  """Trains, evaluates on dev periodically, tests the best-on-dev state. -> results.

  The config is checked before anything is built; the workdir is locked for the run;
  a resumed run must have the config its checkpoints were trained with
  (`allow_config_changes`: evaluation, logging and length may differ, run_dir.py).
  On every exit path pending checkpoint saves finish and the lock is released.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # a private, mutable copy
  configs.finalize(config)  # derived values set, everything checked
  run_dir.resolve_paths(config)  # config.json holds the paths as this run sees them
  configs.resolve_preprocessing(config, logs.info)  # pixels as the checkpoint wants
  workdir = paths.resolve(workdir)  # a local folder or gs://bucket/run (paths.py)
  paths.check_bucket(workdir)  # gcsfs installed, the bucket there: one line if not
  paths.makedirs(workdir)
  with contextlib.ExitStack() as cleanup:
    if jax.process_index() == 0:
      lock = cleanup.enter_context(run_dir.WorkdirLock(workdir))
      if lock.message:
        logs.info(lock.message)
    return _train_and_evaluate(config, workdir, allow_config_changes, cleanup)


def _train_and_evaluate(config, workdir, allow_config_changes, cleanup) -> dict:
  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh()
  sharding.check_divisible(config.train.batch_size, mesh)
  logs.info(f"Devices: {mesh.devices.size} x {jax.devices()[0].platform} "
      f"({jax.process_count()} host(s)); workdir {workdir}")

  # ---------------------------------------------------------------- input
  # Process 0 first: on a shared disk the others then find the set complete; on
  # per-host disks each writes its own (the same bytes).
  for turn in ((0,), range(1, jax.process_count())):
    if jax.process_index() in turn:
      datasets.prepare(config, logs.info)
    sharding.barrier("data prepared")
  tokenizer = datasets.load_tokenizer(config)
  configs.finalize(config, vocab_size=len(tokenizer))
  # data.test_split "" = no test here (a held-out test set measured elsewhere, with
  # experiments/evaluate.py): results.json then holds dev only.
  splits = {s: datasets.read_split(config, getattr(config.data, f"{s}_split"))
            for s in ("train", "dev", "test") if getattr(config.data, f"{s}_split")}
  splits["dev"] = splits["dev"].first_images(config.eval.dev_max_images)
  datasets.check_images(config, splits, logs.info)
  if config.train.batch_size > splits["train"].num_captions:
    raise configs.ConfigError(
        f"config.train.batch_size={config.train.batch_size}: expected at most the "
        f"{splits['train'].num_captions} captions of the training split "
        f"({config.data.train_split!r} under {config.data.root}).")
  captions = {s: pipeline.encode_captions(sp.captions, tokenizer, config.data.max_len)
              for s, sp in splits.items()}
  false = _false_captions(config, splits["train"], tokenizer)
  steps_per_epoch = splits["train"].num_captions // config.train.batch_size
  total_steps = (config.train.num_steps if config.train.num_steps > 0
                 else int(round(config.train.num_epochs * steps_per_epoch)))
  objective = losses.Objective.from_config(config, steps_per_epoch)
  for s, sp in splits.items():
    logs.info(f"  {s}: {sp.num_images} images, {sp.num_captions} captions"
        f" ({captions[s].num_truncated} truncated to {config.data.max_len} tokens)")
  logs.info(f"  {steps_per_epoch} steps per epoch, {total_steps} steps, "
      f"{objective.describe(total_steps)}")

  # ---------------------------------------------------------------- run record
  # Pending saves finish (or their failure is said) before any error leaves the run.
  checkpointer = ckpt_lib.Checkpointer(paths.join(workdir, "checkpoints"),
                                       keep=config.train.keep_checkpoints)
  cleanup.push(_finish_saves(checkpointer))
  if jax.process_index() == 0:
    run_dir.keep_tokenizer(workdir, tokenizer, datasets.tokenizer_path(config),
                           checkpointer.has_checkpoints())
    changes = run_dir.check_resume(workdir, config.to_json_best_effort(indent=2),
                                   checkpointer.has_checkpoints(), allow_config_changes,
                                   checkpointer.latest_step())
    for key, (old, new) in changes.items():
      logs.info(f"  config change on resume (allowed): {key}: {old!r} -> {new!r}")

  # ---------------------------------------------------------------- model and optimiser
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch)

  # ---------------------------------------------------------------- state and update step
  state = train_state.create_state(model, tx, config, mesh, logs.info)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logs.info(f"Model: {n_params / 1e6:.2f}M parameters, score={config.model.score}")
  train_step = make_train_step(model, tx, config, mesh, objective, total_steps)

  # ---------------------------------------------------------------- checkpoint and resume
  batches = pipeline.train_iterator(splits["train"], captions["train"], config,
                                    seed=config.seed, false=false)
  meta = {"best_rsum": -1.0, "best_step": -1}
  restored = checkpointer.restore_latest(state, logs.info)
  if restored is not None:
    state, meta = restored.state, restored.meta
    batches.set_state(restored.data)
    best_meta = checkpointer.best_meta(logs.info)
    if best_meta is not None:  # the best checkpoint's own record is the authoritative one
      meta.update({k: best_meta[k] for k in ("best_rsum", "best_step")})
    logs.info(f"Resumed from step {restored.step} (best dev rSum so far "
              f"{meta['best_rsum']:.1f})")
  start_step = int(state["step"])

  # ---------------------------------------------------------------- evaluation
  evaluator = evaluator_lib.Evaluator(model, config, mesh)
  writer = metrics_lib.MetricWriter(workdir)
  cleanup.callback(writer.close)
  writer.write(start_step, "data", {f"{s}_{k}": v for s, sp in splits.items() for k, v in (
      ("images", sp.num_images), ("captions", sp.num_captions),
      ("truncated_captions", captions[s].num_truncated))})

  def evaluate_dev(step):
    t0 = time.time()
    m = evaluator.evaluate(state["params"], splits["dev"], captions["dev"])
    writer.write(step, "dev", m)
    is_best = m["rsum"] > meta["best_rsum"]
    nan = (f"; {m['nan_scores']} NaN scores, ranked lowest" if m.get("nan_scores")
           else "")
    logs.info(f"[dev @ {step}] rSum {m['rsum']:.1f} (i2t R@1 {m['i2t_r1']:.1f}, t2i R@1 "
              f"{m['t2i_r1']:.1f}){' best so far' if is_best else ''} "
              f"[{time.time() - t0:.0f}s]{nan}")
    said = collapse.dev_message(step, m, splits["dev"].num_images,
                                splits["dev"].captions_per_image,
                                config.train.warmup_steps)
    if said:
      logs.info(said)
    if is_best:
      meta.update(best_rsum=m["rsum"], best_step=step)
      checkpointer.save(step, state, batches.get_state(), dict(meta), best=True)

  # ---------------------------------------------------------------- loop
  clock = TrainingClock(meta, config.train.max_train_seconds)
  progress = logs.Progress(start_step, total_steps, clock.budget, clock.banked)
  watch, preempted, step = collapse.TrainingWatch(objective), False, start_step
  if clock.spent_before():
    total_steps = start_step  # the budget was spent before the last stop
  meter = _throughput_meter(config, mesh)
  profile = profiling.StepTrace(config.train.profile_steps, workdir, logs.info)
  notice = preemption.Notice().start()  # SIGTERM: save the step, exit "resume me"
  cleanup.callback(notice.close)
  clock.restart()
  while step < total_steps:
    step += 1
    local = next(batches)  # images passed over (data.skip_bad_images) are counted here
    meta["bad_images"] = meta.get("bad_images", 0) + int(local.pop("bad_images").sum())
    batch = sharding.global_batch(local, mesh)
    if step == start_step + 1:  # the model FLOPs of one step, from its program
      meter.flops = throughput.step_flops(train_step.lower(state, batch))
    profile.before(step)
    state, aux = train_step(state, batch)
    profile.after(step, state)
    if step == start_step + 1:  # the clock starts once the compiled first step is done
      jax.block_until_ready(aux)
      meter.start(step)
    out_of_time = clock.out_of_time()
    last = step == total_steps or out_of_time
    if step % config.train.log_every == 0 or last:
      aux = dict(jax.device_get(aux), **meter.read(step))
      if config.data.skip_bad_images:
        aux["bad_images"] = sharding.sum_over_hosts(meta["bad_images"])
      said = watch.check(step, aux)
      if said:
        aux["collapsed"] = 1
        logs.info(said)
      writer.write(step, "train", aux)
      progress.update(step, aux)
    else:
      progress.tick(step)
    # A preemption notice: save this step and stop, skipping its evaluation (the notice
    # gives seconds). The last step ends as usual: its evaluation, save and final test.
    preempted = notice.stop_at(step) and not last
    if ((config.eval.every_steps > 0 and step % config.eval.every_steps == 0) or last
        ) and not preempted:
      jax.block_until_ready(state["step"])  # the steps queued before it are training
      with meter.paused(), clock.paused():
        evaluate_dev(step)
    if step % config.train.ckpt_every == 0 or last or preempted:
      jax.block_until_ready(state["step"])
      clock.bank()  # into the meta the checkpoint keeps
      with meter.paused():
        checkpointer.save(step, state, batches.get_state(), dict(meta))
    if preempted:
      break
    if out_of_time:
      logs.info(f"Stopping at step {step}: train.max_train_seconds={clock.budget:.0f} "
                "reached.")
      break
  progress.close()
  profile.close()
  notice.close()
  checkpointer.wait()
  if preempted:  # its step is saved: the same command resumes from it
    raise preemption.Preempted(step, workdir)

  # ---------------------------------------------------------------- final test
  best = checkpointer.restore_best(state, logs.info)
  params, best_step = ((best.state["params"], best.step) if best
                       else (state["params"], step))
  logs.info(f"Testing the best-on-dev state (step {best_step}, dev rSum "
            f"{meta['best_rsum']:.1f})")
  results = {"dev": evaluator.evaluate(params, splits["dev"], captions["dev"])}
  test_split = splits.get("test")
  if test_split is None:
    logs.info("No test split (config.data.test_split is empty): results.json holds "
              "dev only; evaluate a test set with python -m experiments.evaluate.")
  else:  # "test", or "test_1k" and "test_5k" under the COCO protocol
    results.update(evaluator.evaluate_as(params, test_split, captions["test"], "test"))
  results["best_step"] = best_step
  for split, m in results.items():  # under the step of the state they evaluate
    if isinstance(m, dict):
      writer.write(best_step, split, m)
  if config.eval.probe:  # the same state on true captions against ones made false
    probe_split = test_split if test_split is not None else splits["dev"]
    results["probe"] = probe_lib.run(evaluator, params, config, tokenizer, probe_split,
                                     seed=config.seed)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, "results.json"), json.dumps(results, indent=2))
  logs.info(recall.format_table({k: v for k, v in results.items()
                                 if isinstance(v, dict) and "rsum" in v}))
  if "probe" in results:
    logs.info(probe_lib.format_table(results["probe"]))
  return results


class TrainingClock:
  """Seconds spent training (evaluations excluded), added up across resumptions in the
  checkpoint's meta["train_seconds"], so that train.max_train_seconds (the budget, when
  > 0) can give two models the same wall-clock time."""

  def __init__(self, meta: dict, budget: float):
    self.meta, self.budget = meta, float(budget)
    self.since = time.time()

  @property
  def banked(self) -> float:
    return self.meta.get("train_seconds", 0.0)

  def restart(self) -> None:
    self.since = time.time()

  def bank(self) -> None:
    """Adds the seconds since the last bank (or restart) to meta["train_seconds"]."""
    now = time.time()
    self.meta["train_seconds"] = self.banked + now - self.since
    self.since = now

  def out_of_time(self) -> bool:
    return self.budget > 0 and self.banked + time.time() - self.since > self.budget

  def spent_before(self) -> bool:
    """Whether the budget was spent before this run started (or resumed)."""
    return self.budget > 0 and self.banked >= self.budget

  @contextlib.contextmanager
  def paused(self):
    """Time inside does not count (an evaluation)."""
    self.bank()
    try:
      yield
    finally:
      self.restart()


def _throughput_meter(config, mesh) -> throughput.Meter:
  dtype = config.model.compute_dtype
  peak, source = throughput.peak_flops(mesh.devices.flat[0], dtype)
  logs.info(f"MFU against a peak of {f'{peak / 1e12:.3g} T' if peak else 'unknown'} "
            f"{dtype} FLOP/s per device: {source}")
  return throughput.Meter(config.train.batch_size, None, peak, mesh.devices.size)


def _finish_saves(checkpointer: ckpt_lib.Checkpointer):
  """An ExitStack exit callback: waits for pending saves and closes the checkpointer.
  On an error path a failed save is said in one line and the error itself goes on."""
  def finish(exc_type, exc, tb):
    del exc, tb
    if exc_type is None:
      checkpointer.close()  # raises CheckpointError when a save failed
      return False
    try:
      checkpointer.close()
    except ckpt_lib.CheckpointError as e:
      logs.info(str(e))
    return False
  return finish


def _false_captions(config, split, tokenizer) -> pipeline.FalseCaptions | None:
  """loss.hard_negatives: the training captions made false, tokenised once (or None)."""
  if not config.loss.hard_negatives:
    return None
  kinds = false_captions.chosen_kinds(config.loss.hard_negatives, config.data.root)
  made, info = false_captions.build(config, split, seed=config.seed, kinds=tuple(kinds))
  false = pipeline.encode_false_captions(made, split.num_captions, info["kinds"],
                                         tokenizer, config.data.max_len,
                                         [kinds[k] for k in info["kinds"]],
                                         config.loss.hard_negatives_per_caption)
  counts = ", ".join(f"{k} {n}" + (f" x{w:g}" if len(set(false.weights)) > 1 else "")
                     for k, n, w in zip(false.kinds, false.valid.sum(0), false.weights))
  logs.info(f"  hard negatives: {len(made)} false captions ({counts}); "
            f"{int(false.valid.any(1).sum())} of {split.num_captions} training captions "
            f"have one; up to {false.per_caption} per training caption"
            + "".join(f"; {n}" for n in info["notes"]))
  return false


def make_train_step(model, tx, config: ml_collections.ConfigDict, mesh,
                    objective: losses.Objective | None = None,
                    total_steps: int | None = None):
  """(state, batch) -> (state, aux), jitted, state donated, batch split over 'data'.

  batch: image uint8 (B, S, S, 3), ids int32 (B, L), mask bool (B, L), image_id (B,);
  with loss.hard_negatives also false_ids (B, n, L), false_mask (B, n, L), false_valid
  (B, n): each image's own caption made false in n ways, n more negatives for it.
  The objective gets the step (its warm-up switch; default: config.loss with hardest
  negatives from step 0) and the adapters' Gumbel temperature follows its schedule over
  `total_steps` (default train.num_steps), without recompiling. With
  train.grad_cache_chunks = N > 1 the batch is encoded in N chunks (grad_cache.py): the
  same loss over all B, the activations of B/N.
  """
  objective = objective or losses.Objective.from_config(config, steps_per_epoch=0)
  total_steps = config.train.num_steps if total_steps is None else total_steps
  mean, std = config.data.pixel_mean, config.data.pixel_std
  chunks = config.train.get("grad_cache_chunks", 1)
  grad_cache.check(config.train.batch_size, chunks, mesh.devices.size)

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    rngs = dict(zip(("gumbel", "sample", "dropout"), jax.random.split(rng, 3)))
    tau = saliency.gumbel_tau_at(state["step"], config.model.gumbel_tau,
                                 config.model.gumbel_tau_final, total_steps)
    pixels = images_lib.model_input(batch["image"], mean, std)  # precomp: features

    def encode(params, inputs, rngs):  # -> (img, txt[, false txt]) token sets
      out = model.apply({"params": params}, inputs["pixels"], inputs["ids"],
                        inputs["mask"], train=True, gumbel_tau=tau, rngs=rngs)
      if "false_ids" not in inputs:
        return out
      other = {name: jax.random.fold_in(key, 1) for name, key in rngs.items()}
      b, n, length = inputs["false_ids"].shape
      false = model.apply({"params": params}, inputs["false_ids"].reshape(b * n, length),
                          inputs["false_mask"].reshape(b * n, length), train=True,
                          gumbel_tau=tau, rngs=other, method=grm.GRM.encode_text)
      return out + (jax.tree.map(lambda x: x.reshape(b, n, *x.shape[1:]), false),)

    def loss_of(outputs):
      img, txt, *false = outputs
      scores = similarity.pair_scores(img, txt, config.model)
      extra = {} if not false else dict(
          false_scores=similarity.own_captions_scores(img, false[0], config.model),
          false_valid=batch["false_valid"])
      return objective(scores, img, batch["image_id"], state["step"], txt=txt, **extra)

    inputs = {k: batch[k] for k in ("ids", "mask", "false_ids", "false_mask")
              if k in batch}
    inputs["pixels"] = pixels
    if chunks > 1:  # the whole batch's loss and gradients, one chunk's activations
      (loss, aux), grads = grad_cache.value_and_grad(
          lambda p, x, c: encode(p, x, grad_cache.fold_chunk(rngs, c)), loss_of,
          state["params"], inputs, chunks)
    else:
      (loss, aux), grads = jax.value_and_grad(
          lambda p: loss_of(encode(p, inputs, rngs)), has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
    aux = dict(aux, loss=loss, grad_norm=_global_norm(grads))
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
            "rng": state["rng"]}, aux

  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(train_step, in_shardings=(rep, data), out_shardings=(rep, rep),
                 donate_argnums=0)


def _global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))
