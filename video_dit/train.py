"""Training: train_step and train_and_evaluate, in the order things happen.

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

import json
import os
import signal
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import optax

from video_dit import checkpoint, latents, sampling, sharding
from video_dit.data import builders, pipeline, synthetic, text_store
from video_dit.diffusion import Diffusion, SamplerConfig
from video_dit.metrics import MetricWriter, Progress
from video_dit.models import autoencoder
from video_dit.models import flops as flops_lib
from video_dit.models import registry


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


def condition_dropout(key, batch: int, config) -> tuple[jax.Array, jax.Array]:
  """(drop_text, drop_id) per example: both with p_both, else text or identity alone."""
  t = config.train
  u = jax.random.uniform(key, (batch,))
  both = u < t.both_drop
  text_only = (u >= t.both_drop) & (u < t.both_drop + t.text_drop)
  id_only = (u >= t.both_drop + t.text_drop) & (u < t.both_drop + t.text_drop + t.id_drop)
  return both | text_only, both | id_only


# Pipeline batch field -> model argument.
BATCH_TO_MODEL = {"text_ids": "text_ids_bl", "text_emb": "text_emb_bld",
                  "text_mask": "text_mask_bl", "text_pooled": "text_pooled_bd",
                  "face": "face_bhwc", "face_embed": "face_embed_be"}


def model_inputs(batch: dict) -> tuple[jax.Array, dict]:
  """Pipeline batch -> (clean video x0, model conditions)."""
  cond = {arg: batch[field] for field, arg in BATCH_TO_MODEL.items() if field in batch}
  return batch["video"], cond


def make_train_step(model, diffusion: Diffusion, tx, config):
  """The pure step ``(state, batch) -> (state, metrics)``."""
  accum = config.optim.grad_accum
  skip_nonfinite = config.train.nonfinite == "skip"
  lr = learning_rate(config)

  def loss_fn(params, x0, cond, key):
    if isinstance(diffusion, autoencoder.VAEObjective):
      return diffusion.loss(params, x0, key)[0]
    model_fn = lambda x, t, c: model.apply(params, x, t, **c)
    return diffusion.loss(model_fn, x0, cond, key)[0]

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    k_drop, k_loss = jax.random.split(key)
    x0, cond = model_inputs(batch)
    b = x0.shape[0]
    cond["drop_text_b"], cond["drop_id_b"] = condition_dropout(k_drop, b, config)
    keys = jax.random.split(k_loss, b)  # per example: micro-batching changes no draw

    def micro(i):
      part = lambda v: jax.lax.dynamic_slice_in_dim(v, i * (b // accum), b // accum)
      return part(x0), jax.tree.map(part, cond), part(keys)

    if accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, x0, cond, keys)
    else:
      def body(carry, i):
        l, g = jax.value_and_grad(loss_fn)(state.params, *micro(i))
        return jax.tree.map(jnp.add, carry, (l, g)), None
      zero = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(body, zero, jnp.arange(accum))
      loss, grads = loss / accum, jax.tree.map(lambda g: g / accum, grads)

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
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


def ensure_dataset(config) -> None:
  """Builds the synthetic dataset on first use (other datasets must exist), and the
  stored caption embeddings that ``text.encoder='precomputed'`` reads."""
  d = config.data
  try:
    builders.find_dataset(d.data_dir)
  except FileNotFoundError as e:
    if registry.latent_source(config) == "cache":
      raise FileNotFoundError(
          f"no latent cache in {d.data_dir}; encode one with `python -m tools.encode_latents "
          f"--vae_workdir={config.latent.vae_workdir} --data_dir=<pixel dataset> "
          f"--out={d.data_dir}`") from e
    if d.dataset != "synthetic_faces":
      raise
    spec = synthetic.spec_from_config(config)
    if jax.process_index() == 0:
      print(f"building the synthetic dataset in {d.data_dir} (first use)", flush=True)
      builders.SyntheticFaces(data_dir=d.data_dir, spec=spec).prepare()
    jax.experimental.multihost_utils.sync_global_devices("dataset built")
  if config.text.encoder == "precomputed":
    if (jax.process_index() == 0
        and not os.path.exists(text_store.store_path(d.data_dir, config.text.precomputed))):
      print(f"storing {config.text.precomputed} caption embeddings in {d.data_dir}", flush=True)
      text_store.build(d.data_dir, config.text.precomputed, config.text.max_len)
    jax.experimental.multihost_utils.sync_global_devices("text embeddings stored")


class PeriodicSampler:
  """Every ``sample.every_steps``: EMA samples for held-out references and captions,
  written to ``W/samples/step_N/`` as mp4 + a PNG strip with the reference face."""

  def __init__(self, config, model, diffusion: Diffusion, mesh, workdir: str):
    self.every = config.sample.every_steps
    if not self.every:
      return
    self.mesh, self.workdir, self.seed = mesh, workdir, config.seed
    test = config.copy_and_resolve_references()
    test.data.batch_size = config.sample.num_videos
    batch = next(pipeline.make_iterator(test, "test", train=False))
    n = len(batch["video"])
    _, cond = model_inputs(batch)
    self.faces = sampling.to_uint8(batch["face"])
    self.cond = sharding.shard_batch(cond, mesh)
    self.sample = sampling.make_sampler(model, diffusion, SamplerConfig.from_config(config.sample),
                                        (n,) + registry.video_shape(config))
    codec = latents.codec(config)
    self.decode = codec.decode if codec is not None else None

  def maybe_write(self, step: int, ema_params) -> None:
    if not self.every or step % self.every:
      return
    with jax.set_mesh(self.mesh):
      videos = self.sample(ema_params, self.cond, jax.random.key(self.seed))
      if self.decode is not None:
        videos = self.decode(jax.device_get(videos))
    videos = sampling.to_uint8(jax.experimental.multihost_utils.process_allgather(videos, tiled=True))
    if jax.process_index() == 0:
      for i, (video, face) in enumerate(zip(videos, self.faces)):
        sampling.write_sample(os.path.join(self.workdir, "samples", f"step_{step}", f"{i:02d}"),
                              video, face)


def validate(config) -> tuple[Any, Any]:
  """Every config check that can fail, before anything is compiled: (model, objective),
  the objective a Diffusion (DiT) or a VAEObjective (video autoencoder)."""
  if registry.task(config) == "vae":
    model, _ = registry.build_vae(config)
    diffusion = autoencoder.VAEObjective(model, config.vae.recon, config.vae.kl_weight)
  else:
    model, cfg = registry.build(config)
    shape = registry.video_shape(config)
    diffusion = Diffusion.from_config(config.diffusion, flops_lib.num_tokens(cfg, shape))
    SamplerConfig.from_config(config.sample).check(diffusion.config.objective)
    if registry.latent_source(config) != "pixels":
      codec = latents.codec(config)  # loads the VAE: its errors come before compiling
      want = codec.latent_shape(registry.pixel_shape(config))
      if tuple(want) != tuple(shape):
        raise ValueError(f"latent.shape={tuple(shape)} but the VAE in {codec.workdir} makes "
                         f"{tuple(want)} from {registry.pixel_shape(config)} frames; set "
                         f"latent.shape={tuple(want)}.")
  learning_rate(config)
  if config.train.nonfinite not in ("stop", "skip"):
    raise ValueError(f"train.nonfinite='{config.train.nonfinite}' is unknown; use 'stop' or "
                     "'skip'.")
  if config.optim.grad_accum < 1 or config.data.batch_size % config.optim.grad_accum:
    raise ValueError(f"data.batch_size={config.data.batch_size} is not divisible by "
                     f"optim.grad_accum={config.optim.grad_accum}.")
  return model, diffusion


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


def init_train_state(config, model, tx, mesh,
                     abstract: bool = False) -> tuple[TrainState, TrainState]:
  """A fresh TrainState initialised straight into its shardings, and the shardings
  (``abstract``: shapes, dtypes and shardings only, nothing allocated)."""
  init_inputs = registry.dummy_inputs(config, 1)
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


def train_and_evaluate(config, workdir: str, devices=None) -> TrainState:
  """Trains ``config`` in ``workdir`` (resuming if it holds checkpoints)."""
  model, diffusion = validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(config.data.batch_size, mesh)
  os.makedirs(workdir, exist_ok=True)
  config_json = config.to_json_best_effort(sort_keys=True, indent=2)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_json)

  ensure_dataset(config)
  data_iter = pipeline.make_iterator(config, "train")

  tx = optimizer(config)
  state, state_sh = init_train_state(config, model, tx, mesh)

  ckpt = checkpoint.Checkpointer(workdir, config.ckpt.keep)
  start = ckpt.latest_step()
  if start is not None:
    state, data_state = ckpt.restore(start, state)
    if data_state:
      data_iter.set_state(data_state)
    print(f"resumed from {ckpt.directory} step {start}", flush=True)
  elif config.ckpt.init_from:
    directory = os.path.join(config.ckpt.init_from, "checkpoints")
    init_step = max(checkpoint.steps(directory), default=None)
    if init_step is None:
      raise FileNotFoundError(f"ckpt.init_from={config.ckpt.init_from} has no checkpoints")
    loaded, _ = checkpoint.restore(directory, init_step, state)
    state = state.replace(params=loaded.params, ema_params=loaded.ema_params)
    print(f"initialised from {directory} step {init_step}", flush=True)
  start = int(state.step)

  step_fn = make_train_step(model, diffusion, tx, config)
  with jax.set_mesh(mesh):
    train_step = jax.jit(step_fn, in_shardings=(state_sh, None), out_shardings=(state_sh, None),
                         donate_argnums=0)

  is_vae = registry.task(config) == "vae"
  flops_per_step = tokens_per_step = 0.0  # the VAE's rates are steps/s only
  if not is_vae:
    cfg = registry.model_config(config)
    shape = registry.video_shape(config)
    flops_per_step = 3 * config.data.batch_size * flops_lib.forward_flops(
        cfg, shape, config.text.max_len)
    tokens_per_step = config.data.batch_size * flops_lib.num_tokens(cfg, shape)
  encode = (latents.codec(config).encode if registry.latent_source(config) == "vae"
            and not is_vae else None)
  writer, progress = MetricWriter(workdir), Progress(config.total_steps, start)
  samples = PeriodicSampler(config, model, diffusion, mesh, workdir) if not is_vae else None
  t_last, steps_since = time.perf_counter(), 0
  with _Preemption() as preempt:
    for step in range(start, config.total_steps):
      batch = next(data_iter)
      if encode is not None:  # latent.source='vae': pixels -> latents on the fly
        batch = dict(batch, video=jax.device_get(encode(batch["video"])))
      batch = sharding.shard_batch(batch, mesh)
      with jax.set_mesh(mesh):
        state, metrics = train_step(state, batch)
      metrics = jax.device_get(metrics)
      if not metrics["finite"] and config.train.nonfinite == "stop":
        ckpt.close()
        raise FloatingPointError(
            f"loss is {metrics['loss']} (grad norm {metrics['grad_norm']}) at step {step + 1}; "
            f"stopping. The last good checkpoint (step {ckpt.latest_step()}) is kept; lower "
            "optim.lr or set train.nonfinite='skip'.")
      steps_since += 1
      done = step + 1
      if step == start:  # rates exclude the first step (compilation)
        jax.block_until_ready(state)
        t_last, steps_since = time.perf_counter(), 0
      if done % config.train.log_every == 0 or done == config.total_steps:
        scalars = dict(loss=metrics["loss"], grad_norm=metrics["grad_norm"], lr=metrics["lr"],
                       skipped=float(not metrics["finite"]))
        if steps_since:
          rate = steps_since / max(time.perf_counter() - t_last, 1e-9)
          scalars.update(steps_per_s=rate)
          if not is_vae:
            scalars.update(tokens_per_s=rate * tokens_per_step,
                           tflops_per_s=rate * flops_per_step / 1e12)
        writer.write(done, scalars)
        t_last, steps_since = time.perf_counter(), 0
      progress.update(done, f"loss {metrics['loss']:.4f}",
                      force=done % config.train.log_every == 0)
      if samples is not None:
        samples.maybe_write(done, state.ema_params)
      if (done % config.ckpt.every_steps == 0 or done == config.total_steps
          or preempt.requested):
        t_save = time.perf_counter()
        ckpt.save(done, state, data_iter.get_state(), config_json)
        # The async save blocks the loop only for the device -> host copy.
        writer.write(done, dict(ckpt_save_pause_ms=1e3 * (time.perf_counter() - t_save)))
      if preempt.requested:
        break
  ckpt.close()
  writer.close()
  progress.close()
  if is_vae and not preempt.requested:
    write_latent_stats(config, workdir, model, state)
  return state


def write_latent_stats(config, workdir: str, model, state) -> None:
  """The VAE's per-channel latent shift/scale over training clips (EMA parameters),
  stored next to the checkpoints for the step they belong to."""
  step = int(state.step)
  path = os.path.join(workdir, latents.STATS_FILE)
  if os.path.exists(path) and latents.read_stats(workdir)["step"] == step:
    return
  it = pipeline.make_iterator(config, "train", train=False)
  videos = (b["video"] for _, b in zip(range(config.vae.stats_batches), it))
  params = jax.device_get(state.ema_params)
  stats = latents.compute_stats(model, params, videos)
  if jax.process_index() == 0:
    latents.write_stats(workdir, step, stats)
    print(f"latent statistics of step {step}: {path}", flush=True)
