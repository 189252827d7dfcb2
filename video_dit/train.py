"""Training: train_step and train_and_evaluate, in the order things happen.

What is trained, and on which loss, is a task (``video_dit.tasks``: the DiT, the VAE);
this module is the loop every task shares.

    validate config -> mesh -> data -> abstract init (eval_shape) -> shardings from
    the logical rules -> jit init with out_shardings -> restore -> loop

Resume order: the workdir's latest checkpoint, else ``config.ckpt.init_from``
(parameters and EMA only), else scratch; re-running the same command resumes.
The step is one ``jax.jit`` over the mesh with the state donated. Everything
random is a function of (config.seed, step), and the data position is saved
with each checkpoint, so a resumed run is bit-identical to an uninterrupted one.
SIGTERM / SIGINT finish the current step, save and return; a non-finite loss
stops the run naming the step (or skips the update with
``train.nonfinite='skip'``).
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from video_dit import checkpoint, sharding, tasks
from video_dit import workdir as workdir_lib
from video_dit.data import forget, pipeline
from video_dit.metrics import MetricWriter, Progress


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array  # raw key data (uint32), so it checkpoints as a plain array


# ----------------------------------------------------------------------------- pieces


def learning_rate(config) -> optax.Schedule:
  o = config.optim
  warmup = max(o.warmup_steps, 0)
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(config.total_steps, warmup + 1), end_value=o.lr * o.final_lr_frac)
  if o.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup),
                                 optax.constant_schedule(o.lr)], [warmup])
  raise ValueError(f"optim.schedule='{o.schedule}' is unknown; use 'cosine' or 'constant'.")


def decay_mask(params):
  """Weight decay on dense kernels only: not on norms, biases, embeddings, gates."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.grad_clip) if o.grad_clip > 0 else optax.identity(),
      optax.adamw(learning_rate(config), o.b1, o.b2, o.eps, weight_decay=o.weight_decay,
                  mask=decay_mask))


def ema_decay(config, step):
  """EMA decay, warmed up as min(decay, (1 + step) / (10 + step))."""
  decay = jnp.float32(config.ema.decay)
  if config.ema.warmup:
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return decay


def make_train_step(task: tasks.Task, tx, config):
  """The pure step ``(state, batch[, frozen]) -> (state, metrics)`` of any task
  (``frozen``: the task's untrained arrays, ``Task.frozen``)."""
  accum = config.optim.grad_accum
  skip_nonfinite = config.train.nonfinite == "skip"
  lr = learning_rate(config)
  def train_step(state: TrainState, batch, frozen=None):
    loss_fn = lambda params, batch, keys: task.loss(params, batch, keys, frozen)[0]
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_prepare, k_loss = jax.random.split(key)
    batch = task.prepare(batch, k_prepare)
    b = batch["video"].shape[0]
    keys = jax.random.split(k_loss, b)  # per example: micro-batching changes no draw

    def micro(i):
      part = lambda v: jax.lax.dynamic_slice_in_dim(v, i * (b // accum), b // accum)
      return jax.tree.map(part, batch), part(keys)

    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, keys)
    else:
      def body(carry, i):
        l, g = jax.value_and_grad(loss_fn)(state.params, *micro(i))
        return jax.tree.map(jnp.add, carry, (l, g)), None
      zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(body, zero, jnp.arange(accum))
      loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)

    with jax.named_scope("optimizer"):  # scopes name the profile's categories
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope("ema"):
      d = ema_decay(config, state.step)
      ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state.ema_params, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      params, opt_state, ema = (keep(params, state.params), keep(opt_state, state.opt_state),
                                keep(ema, state.ema_params))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              ema_params=ema)
    return new_state, dict(loss=loss, grad_norm=grad_norm, lr=lr(state.step),
                           finite=finite)

  return train_step


def validate(config) -> tasks.Task:
  """Every config check that can fail, before anything is compiled: the task's (model,
  objective, data shapes) and the trainer's own."""
  for name, value in (("total_steps", config.total_steps), ("ckpt.keep", config.ckpt.keep),
                      ("ckpt.every_steps", config.ckpt.every_steps),
                      ("train.log_every", config.train.log_every)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value} must be >= 1; set --config.{name}=N.")
  lr = config.optim.lr
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
    raise ValueError(f"optim.lr={lr} must be a finite number > 0 (e.g. 1e-4).")
  task = tasks.for_config(config)
  learning_rate(config)
  if config.ckpt.get("on_corrupt", "stop") not in ("stop", "previous"):
    raise ValueError(f"ckpt.on_corrupt={config.ckpt.on_corrupt!r} is not 'stop' or "
                     "'previous'.")
  if config.train.nonfinite not in ("stop", "skip"):
    raise ValueError(f"train.nonfinite='{config.train.nonfinite}' is unknown; use 'stop' or "
                     "'skip'.")
  if config.optim.grad_accum < 1 or config.data.batch_size % config.optim.grad_accum:
    raise ValueError(f"data.batch_size={config.data.batch_size} is not divisible by "
                     f"optim.grad_accum={config.optim.grad_accum}.")
  return task


# ----------------------------------------------------------------------------- loop


class _Preemption:
  """Turns SIGTERM / SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    print(f"\nsignal {signum}: finishing the step, saving, exiting", flush=True)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def init_train_state(config, task: tasks.Task, tx, mesh,
                     abstract: bool = False) -> tuple[TrainState, TrainState]:
  """A fresh TrainState initialised straight into its shardings, and the shardings
  (``abstract``: shapes, dtypes and shardings only, nothing allocated)."""
  model, init_inputs = task.model, task.init_inputs()
  boxed = jax.eval_shape(lambda k: model.init(k, **init_inputs), jax.random.key(0))
  param_sh = sharding.tree_shardings(boxed, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, nn.unbox(boxed)),
                                 param_sh, transform_non_params=lambda _: replicated)
  state_sh = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                        ema_params=param_sh, rng=replicated)

  def init_state(key):
    params = nn.unbox(model.init(key, **init_inputs))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params, rng=jax.random.key_data(jax.random.fold_in(key, 1)))

  if abstract:
    shapes = jax.eval_shape(init_state, jax.random.key(config.seed))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        shapes, state_sh), state_sh
  with jax.set_mesh(mesh):
    state = jax.jit(init_state, out_shardings=state_sh)(jax.random.key(config.seed))
  return state, state_sh


def restore(config, ckpt: checkpoint.Checkpointer, state: TrainState, data_iter,
            task: tasks.Task | None = None) -> TrainState:
  """The resume order: the workdir's latest checkpoint (state and data position), else
  ``ckpt.init_from``'s latest (parameters and EMA only), else ``state`` with the task's
  warm start (``Task.warm_start``: a student takes its teacher's parameters)."""
  start = ckpt.latest_step()
  if start is not None:
    try:
      state, data_state = ckpt.restore(start, state)
    except checkpoint.CorruptCheckpoint as e:
      good = checkpoint.last_good_step(ckpt.directory, state, start)
      if config.ckpt.get("on_corrupt", "stop") != "previous" or good is None:
        raise checkpoint.CorruptCheckpoint(
            f"{e}. " + (f"The last step that verifies is {good}: resume from it with "
                        "--config.ckpt.on_corrupt=previous (later steps are then replaced)"
                        if good is not None else "No earlier step verifies either.")) from e
      print(f"{e}; resuming from step {good}, the last one that verifies "
            "(ckpt.on_corrupt='previous')", flush=True)
      for bad in (s for s in checkpoint.steps(ckpt.directory) if s > good):
        ckpt.manager.delete(bad)
      state, data_state = ckpt.restore(good, state)
      start = good
    if data_state:
      data_iter.set_state(data_state)
    print(f"resumed from {ckpt.directory} step {start}", flush=True)
  elif config.ckpt.init_from:
    init_step = workdir_lib.latest_step(config.ckpt.init_from)
    if init_step is None:
      raise FileNotFoundError(f"ckpt.init_from={config.ckpt.init_from} has no checkpoints")
    directory = workdir_lib.checkpoint_dir(config.ckpt.init_from)
    try:
      loaded, _ = checkpoint.restore(directory, init_step, state)
      state = state.replace(params=loaded.params, ema_params=loaded.ema_params)
      print(f"initialised from {directory} step {init_step}", flush=True)
    except checkpoint.Incompatible:  # this model adds inputs (e.g. frame conditioning)
      state = _graft(state, directory, init_step)
  elif task is not None:
    params = task.warm_start(state.params)
    if params is not state.params:  # the EMA starts as a copy (a step donates both)
      state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
  return state


def _graft(state: TrainState, directory: str, step: int) -> TrainState:
  """``ckpt.init_from`` a model this one extends: its parameters and EMA where they fit,
  the new ones as initialised (zero-initialised inputs join as a no-op)."""
  _, saved = checkpoint.load_host(directory, step)
  what = f"ckpt.init_from {directory} step {step}"
  params, new = checkpoint.graft(state.params, saved["params"], what, new_zero=True)
  ema, _ = checkpoint.graft(jax.tree.map(jnp.copy, state.ema_params), saved["ema_params"],
                            what, new_zero=True)  # its own buffers: a step donates both
  print(f"initialised from {directory} step {step}; {len(new)} new "
        f"parameters keep their initial values: {', '.join(new[:6])}", flush=True)
  return state.replace(params=params, ema_params=ema)


def train_and_evaluate(config, workdir: str, devices=None) -> TrainState:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise FileExistsError(f"--workdir={workdir} is a file; give a folder for the run")
  task = validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(config.data.batch_size, mesh)
  lock = workdir_lib.Lock(workdir)
  if jax.process_index() == 0:  # one trainer per workdir (the processes of one run share it)
    lock.acquire()
  try:
    return _train(config, task, mesh, workdir)
  finally:
    lock.release()


def _train(config, task: tasks.Task, mesh, workdir: str) -> TrainState:
  """The loop of ``train_and_evaluate``, under the workdir's lock."""
  os.makedirs(workdir, exist_ok=True)

  pipeline.ensure_dataset(config)
  # The codec fit the run learns: another fit in its place stops it before compiling, and
  # so does one that the run it starts from (ckpt.init_from) did not learn.
  workdir_lib.check_codec(workdir, config)
  if config.ckpt.init_from and workdir_lib.latest_step(workdir) is None:
    workdir_lib.check_codec(config.ckpt.init_from, config)
  data_iter = pipeline.make_iterator(config, "train")

  tx = optimizer(config)
  state, state_sh = init_train_state(config, task, tx, mesh)
  ckpt = checkpoint.Checkpointer(workdir, config.ckpt.keep)
  state = restore(config, ckpt, state, data_iter, task)
  start = int(state.step)
  config_json = config.to_json_best_effort(sort_keys=True, indent=2)
  if jax.process_index() == 0:  # the config (once a checkpoint fits it) and the data read
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_json)
    forget.record_datasets(workdir, config.data.data_dir, start)
    workdir_lib.check_codec(workdir, config, record=True)  # once the restore has worked

  step_fn = make_train_step(task, tx, config)
  frozen = task.frozen(mesh)
  with jax.set_mesh(mesh):
    train_step = jax.jit(step_fn, in_shardings=(state_sh, None, None),
                         out_shardings=(state_sh, None), donate_argnums=0)

  flops_per_step, tokens_per_step = task.step_rates()
  # Rows after the restored step were written by a run that died before its next
  # checkpoint: this run replays those steps, so their rows go.
  writer, progress = MetricWriter(workdir, after=start), Progress(config.total_steps, start)
  samples = task.periodic(mesh, workdir)
  t_last, steps_since = time.perf_counter(), 0
  # A step's metrics are read after the next step is dispatched, so the host prepares
  # batch s+1 while the device runs step s (reading them at once made the two take turns).
  # They are read at once where the loop acts on them: logs, checkpoints, the end.
  pending, metrics = None, None

  def read(done_metrics):
    done, m = done_metrics
    m = jax.device_get(m)
    if not m["finite"] and config.train.nonfinite == "stop":
      ckpt.close()
      raise FloatingPointError(
          f"loss is {m['loss']} (grad norm {m['grad_norm']}) at step {done}; "
          f"stopping. The last good checkpoint (step {ckpt.latest_step()}) is kept; lower "
          "optim.lr or set train.nonfinite='skip'.")
    return m

  with _Preemption() as preempt:
    for step in range(start, config.total_steps):
      batch = sharding.shard_batch(task.host_batch(next(data_iter)), mesh)
      with jax.set_mesh(mesh):
        state, step_metrics = train_step(state, batch, frozen)
      done = step + 1
      if pending is not None:
        metrics = read(pending)
      pending = (done, step_metrics)
      steps_since += 1
      if step == start:  # rates exclude the first step (compilation)
        jax.block_until_ready(state)
        t_last, steps_since = time.perf_counter(), 0
      log = done % config.train.log_every == 0 or done == config.total_steps
      if log or step == start:
        metrics, pending = read(pending), None
      if log:
        scalars = dict(loss=metrics["loss"], grad_norm=metrics["grad_norm"], lr=metrics["lr"],
                       skipped=float(not metrics["finite"]))
        if steps_since:
          rate = steps_since / max(time.perf_counter() - t_last, 1e-9)
          scalars.update(steps_per_s=rate)
          if flops_per_step:
            scalars.update(tokens_per_s=rate * tokens_per_step,
                           tflops_per_s=rate * flops_per_step / 1e12)
        writer.write(done, scalars)
        t_last, steps_since = time.perf_counter(), 0
      progress.update(done, f"loss {metrics['loss']:.4f}", force=log)
      if samples is not None and samples.due(done):
        if pending is not None:  # never samples from a non-finite step
          metrics, pending = read(pending), None
        samples.maybe_write(done, state.ema_params)
      if (done % config.ckpt.every_steps == 0 or done == config.total_steps
          or preempt.requested):
        if pending is not None:  # a non-finite step is never saved
          metrics, pending = read(pending), None
        t_save = time.perf_counter()
        ckpt.save(done, state, data_iter.get_state(), config_json)
        # The async save blocks the loop only for the device -> host copy.
        writer.write(done, dict(ckpt_save_pause_ms=1e3 * (time.perf_counter() - t_save)))
      if preempt.requested:
        break
  ckpt.close()
  writer.close()
  progress.close()
  if not preempt.requested:
    task.finish(workdir, state)
  return state
