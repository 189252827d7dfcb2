import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers
from video_dit.models import dit, flops, layers, patching, registry


def _other_face(inputs, seed=7):
  other = dict(inputs)
  other["face"] = np.random.default_rng(seed).uniform(
      -1, 1, inputs["face"].shape).astype(np.float32)
  return other


@pytest.fixture(scope="module")
def base():
  config = helpers.runlocal_config()
  model, params = helpers.init(config)
  inputs = registry.random_inputs(config, 2)
  return config, model, params, inputs


def test_output_shape_dtype_and_exactly_zero_at_init(base):
  config, model, params, inputs = base
  out = helpers.apply(model, params, inputs)
  assert out.shape == (2,) + registry.video_shape(config) and out.dtype == np.float32
  assert np.all(out == 0.0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_fresh_block_is_the_identity(base):
  config, model, params, inputs = base
  cfg = registry.model_config(config)
  block = dit.DiTBlock(cfg, has_identity=True)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 64, cfg.width)), jnp.float32)
  args = (x, jnp.ones((2, cfg.width)), None, jnp.ones((2, 5, cfg.width)),
          jnp.ones((2, 5), bool), jnp.ones((2, 4, cfg.width)))
  block_params = nn.unbox(block.init(jax.random.key(0), *args))
  out, ref_out = block.apply(block_params, *args)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  assert ref_out is None  # no reference tokens given


def test_perturbed_output_is_nontrivial_and_depends_on_text(base):
  _, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  out = helpers.apply(model, p, inputs)
  assert np.all(np.isfinite(out)) and np.abs(out).mean() > 1e-3
  other = dict(inputs, text_ids=inputs["text_ids"][::-1])
  assert np.abs(helpers.apply(model, p, other) - out).max() > 1e-5
  # Dropped text means the null tokens: the ids no longer matter.
  drop = np.ones((2,), bool)
  np.testing.assert_array_equal(helpers.apply(model, p, inputs, drop_text=drop),
                                helpers.apply(model, p, other, drop_text=drop))


def test_zero_gate_closes_identity_until_opened(base):
  _, model, params, inputs = base
  p = helpers.perturb_zeros(params)  # everything non-trivial except the gates
  np.testing.assert_array_equal(helpers.apply(model, p, inputs), helpers.apply(model, p, _other_face(inputs)))
  opened = helpers.set_leaves(p, "id_gate", 0.5)
  diff = np.abs(helpers.apply(model, opened, inputs) - helpers.apply(model, opened, _other_face(inputs)))
  assert diff.max() > 1e-4


def test_no_gate_depends_on_identity_from_the_start():
  config = helpers.runlocal_config(**{"identity.gate": "none"})
  model, params = helpers.init(config)
  assert not any("id_gate" in jax.tree_util.keystr(k)
                 for k, _ in jax.tree_util.tree_flatten_with_path(params)[0])
  p = helpers.perturb_zeros(params)
  inputs = registry.random_inputs(config, 2)
  diff = np.abs(helpers.apply(model, p, inputs) - helpers.apply(model, p, _other_face(inputs)))
  assert diff.max() > 1e-4
  drop = np.ones((2,), bool)  # null identity tokens: the face no longer matters
  np.testing.assert_array_equal(helpers.apply(model, p, inputs, drop_id=drop),
                                helpers.apply(model, p, _other_face(inputs), drop_id=drop))


@pytest.mark.parametrize("gate,scale,depends", [
    ("none", 0.0, False), ("none", 0.7, True), ("zero", 0.7, False)])
def test_decoupled_mode(gate, scale, depends):
  config = helpers.runlocal_config(**{"identity.mode": "decoupled", "identity.gate": gate,
                                      "identity.scale": scale})
  model, params = helpers.init(config)
  assert "id_attn" not in params["params"]["block_0"]
  assert "extra_kv" in params["params"]["block_0"]["text_attn"]
  p = helpers.perturb_zeros(params)
  inputs = registry.random_inputs(config, 2)
  diff = np.abs(helpers.apply(model, p, inputs) - helpers.apply(model, p, _other_face(inputs))).max()
  assert (diff > 1e-4) if depends else (diff == 0.0)


def test_identity_every_nth_block_and_pooled_identity():
  config = helpers.runlocal_config(**{"model.depth": 3, "identity.every": 2,
                                      "identity.pooled_to_adaln": True})
  _, params = helpers.init(config)
  blocks = params["params"]
  assert ["id_attn" in blocks[f"block_{i}"] for i in range(3)] == [True, False, True]
  assert "id_pool" in blocks


def test_face_embedding_branch_alone_and_with_image():
  for face_size in (0, 32):
    config = helpers.runlocal_config(**{"identity.embed_dim": 128,
                                        "identity.face_size": face_size,
                                        "identity.gate": "none"})
    model, params = helpers.init(config)
    p = helpers.perturb_zeros(params)
    inputs = registry.random_inputs(config, 2)
    other = dict(inputs, face_embed=inputs["face_embed"][::-1])
    assert np.abs(helpers.apply(model, p, inputs) - helpers.apply(model, p, other)).max() > 1e-4


def test_no_retracing_and_finite_gradients(base):
  _, model, params, inputs = base
  traces = []

  def loss(p, i):
    traces.append(1)
    return jnp.mean((model.apply(p, **i) - 1.0) ** 2)

  grad_fn = jax.jit(jax.grad(loss))
  g1 = grad_fn(params, inputs)
  g2 = grad_fn(params, registry.random_inputs(helpers.runlocal_config(), 2, seed=5))
  assert len(traces) == 1
  leaves = jax.tree.leaves(g1) + jax.tree.leaves(g2)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
  # adaLN-Zero: the zero-initialised final layer gets gradient at init.
  assert np.abs(np.asarray(g1["params"]["final"]["linear"]["kernel"])).max() > 0


def test_remat_and_attention_impls_match_reference(base):
  config, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  ref = helpers.apply(model, p, inputs)
  grad_of = lambda m: jax.jit(jax.grad(lambda q: jnp.sum(m.apply(q, **inputs) ** 2)))
  ref_grad = grad_of(model)(p)
  for override in ({"model.remat": "full"}, {"model.remat": "dots_saveable"},
                   {"model.attention": "xla"}):
    other, _ = registry.build(helpers.runlocal_config(**override))
    np.testing.assert_allclose(helpers.apply(other, p, inputs), ref, atol=1e-5, rtol=1e-5)
    if "model.remat" in override:
      grad = grad_of(other)(p)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
                   grad, ref_grad)


def test_bfloat16_compute_keeps_float32_params_and_output(base):
  config, _, params, inputs = base
  model, _ = registry.build(helpers.runlocal_config(**{"model.dtype": "bfloat16"}))
  p = helpers.perturb_zeros(params)
  out = helpers.apply(model, p, inputs)
  ref = helpers.apply(base[1], p, inputs)
  assert out.dtype == np.float32 and np.all(np.isfinite(out))
  np.testing.assert_allclose(out, ref, atol=0.05 * np.abs(ref).max())


def test_learn_sigma_and_sincos_only():
  config = helpers.runlocal_config(**{"diffusion.objective": "ddpm",
                                      "diffusion.prediction": "eps",
                                      "diffusion.learn_sigma": True, "model.rope": False,
                                      "model.sincos": True})
  model, params = helpers.init(config)
  out = helpers.apply(model, params, registry.random_inputs(config, 2))
  assert out.shape[-1] == 2 * config.model.channels


def test_missing_conditions_use_null_tokens(base):
  _, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  bare = {"x": inputs["x"], "t": inputs["t"]}
  both_dropped = helpers.apply(model, p, inputs, drop_text=np.ones(2, bool),
                        drop_id=np.ones(2, bool))
  np.testing.assert_allclose(helpers.apply(model, p, bare), both_dropped, atol=1e-6)


def _stack_blocks(params, depth):
  """Per-block parameters -> the scanned layout (leading 'layers' axis)."""
  p = dict(params["params"])
  blocks = [p.pop(f"block_{i}") for i in range(depth)]
  p["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  return {"params": p}


def test_scanned_layers_match_the_unrolled_model(base):
  config, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  ref = helpers.apply(model, p, inputs)
  grad_of = lambda m, q: jax.jit(jax.grad(lambda q: jnp.sum(m.apply(q, **inputs) ** 2)))(q)
  ref_grad = _stack_blocks(grad_of(model, p), config.model.depth)
  for remat in ("none", "full", "dots_saveable"):
    scanned, _ = registry.build(helpers.runlocal_config(
        **{"model.scan_layers": True, "model.remat": remat}))
    sp = _stack_blocks(p, config.model.depth)
    # The scanned model initialises exactly this layout.
    shapes = jax.eval_shape(lambda k: nn.unbox(scanned.init(k, **inputs)), jax.random.key(0))
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, sp)
    np.testing.assert_allclose(helpers.apply(scanned, sp, inputs), ref, atol=1e-5, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, atol=1e-4 * np.abs(b).max() + 1e-7, rtol=1e-4), grad_of(scanned, sp), ref_grad)


def test_scan_needs_identical_blocks():
  with pytest.raises(ValueError, match="identity.every=2"):
    registry.build(helpers.runlocal_config(**{"model.scan_layers": True, "identity.every": 2}))


def test_bf16_matmuls_are_close_to_float32_in_value_and_gradient(base):
  config, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  mixed, _ = registry.build(helpers.runlocal_config(**{"model.matmul_dtype": "bfloat16"}))
  ref, out = helpers.apply(model, p, inputs), helpers.apply(mixed, p, inputs)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, atol=0.02 * np.abs(ref).max())
  assert np.abs(out - ref).max() > 0  # really rounded
  grad_of = lambda m: jax.jit(jax.grad(lambda q: jnp.sum(m.apply(q, **inputs) ** 2)))(p)
  g_ref, g = grad_of(model), grad_of(mixed)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert np.abs(a - b).max() <= 0.03 * np.abs(b).max() + 1e-6
  with pytest.raises(ValueError, match="matmul_dtype"):
    registry.build(helpers.runlocal_config(**{"model.matmul_dtype": "int8"}))


def test_bf16_matmul_kernel_matches_its_definition():
  from video_dit.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((6, 10), np.float32), rng.standard_normal((10, 4), np.float32)
  g = rng.standard_normal((6, 4), np.float32)
  r16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
  out, vjp = jax.vjp(layers.bf16_matmul, a, b)
  da, db = vjp(g)
  np.testing.assert_allclose(out, r16(a) @ r16(b), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, r16(g) @ r16(b).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db, r16(a).T @ r16(g), rtol=1e-5, atol=1e-5)
  # DenseGeneral's (..., K1, K2) x (K1, K2, N) contraction goes through the same kernel.
  x, w = rng.standard_normal((2, 3, 5, 2), np.float32), rng.standard_normal((5, 2, 7), np.float32)
  y = layers.bf16_dot_general(x, w, (((2, 3), (0, 1)), ((), ())))
  np.testing.assert_allclose(y, np.einsum("abkl,kln->abn", r16(x), r16(w)), rtol=1e-5,
                             atol=1e-5)


def test_conditioning_can_be_switched_off():
  config = helpers.runlocal_config(**{"text.encoder": "none", "identity.mode": "none"})
  model, params = helpers.init(config)
  names = set(params["params"])
  assert not {"text_encoder", "identity_encoder", "null_text", "null_id"} & names
  assert not {"text_attn", "id_attn"} & set(params["params"]["block_0"])
  inputs = registry.random_inputs(config, 2)
  assert set(inputs) == {"x", "t"}
  out = helpers.apply(model, helpers.perturb_zeros(params), inputs)
  assert out.shape == inputs["x"].shape and np.all(np.isfinite(out))
  with pytest.raises(ValueError, match="decoupled"):
    registry.build(helpers.runlocal_config(**{"text.encoder": "none",
                                              "identity.mode": "decoupled"}))


def test_flash_attention_is_tpu_only_with_a_clear_error():
  if jax.default_backend() == "tpu":
    pytest.skip("runs on TPU")
  with pytest.raises(ValueError, match="Pallas TPU kernel.*runs on tpu only"):
    registry.build(helpers.runlocal_config(**{"model.attention": "flash"}))


@pytest.mark.parametrize("lk,block,masked", [(64, 16, False), (40, 16, False),
                                             (40, 16, True), (40, 64, True), (64, 64, False)])
def test_blocked_attention_matches_einsum_in_value_and_gradient(lk, block, masked):
  """4 query chunks (a scanned backward) or one chunk (no loop), with and without a key
  mask (one example's row has every key masked)."""
  from video_dit.models import attention, layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((2, 64, 3, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((2, lk, 3, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(np.stack([rng.random(lk) < 0.6, np.zeros(lk, bool)])) if masked else None
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  ref = attention.attention(q, k, v, mask, impl="einsum")
  blocked = lambda q, k, v: attention.blocked_attention(q, k, v, mask, block=block)
  np.testing.assert_allclose(blocked(q, k, v), ref, atol=1e-5)
  g_ref = jax.grad(loss(lambda *a: attention.attention(*a, mask, impl="einsum")),
                   (0, 1, 2))(q, k, v)
  g = jax.grad(loss(blocked), (0, 1, 2))(q, k, v)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # bf16 operands, f32 accumulation: the same gradients to bf16 precision.
  with layers.matmul_policy("bfloat16"):
    g16 = jax.grad(loss(blocked), (0, 1, 2))(q, k, v)
  for a, b in zip(g16, g_ref):
    assert float(jnp.abs(a - b).max()) < 0.03 * float(jnp.abs(b).max())
    assert float(jnp.abs(a - b).max()) > 0  # the bf16 path really is a different one


def test_blocked_backend_runs_the_self_attention_and_names_its_fallback(monkeypatch):
  from absl import logging  # pylint: disable=g-import-not-at-top
  from video_dit.models import attention  # pylint: disable=g-import-not-at-top
  calls, warnings = [], []
  blocked = attention.BACKENDS["blocked"]

  def spy(q, k, v, mask):
    calls.append((q.shape[1], k.shape[1]))
    return blocked.fn(q, k, v, mask)

  monkeypatch.setitem(attention.BACKENDS, "blocked", attention.dataclasses.replace(blocked, fn=spy))
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  attention._log_fallback.cache_clear()
  config = helpers.runlocal_config(**{"model.attention": "blocked"})
  model, params = helpers.init(config)
  ref_model, _ = registry.build(helpers.runlocal_config())
  inputs = registry.random_inputs(config, 2)
  p = helpers.perturb_zeros(params)
  calls.clear()
  out = jax.jit(lambda p, i: model.apply(p, **i))(p, inputs)  # a fresh trace
  np.testing.assert_allclose(out, helpers.apply(ref_model, p, inputs), atol=1e-5, rtol=1e-5)
  tokens = flops.num_tokens(registry.model_config(config), registry.video_shape(config))
  # Every DiT block's spacetime self-attention went through the blocked backend, and
  # so did the masked text cross-attention.
  assert calls.count((tokens, tokens)) == config.model.depth, calls
  assert calls.count((tokens, config.text.max_len)) == config.model.depth, calls
  assert not warnings, warnings
  # A length no chunk divides runs einsum, with one warning naming the backend.
  q = jnp.ones((1, 520, 1, 8))
  np.testing.assert_allclose(attention.attention(q, q, q, impl="blocked"),
                             attention.attention(q, q, q, impl="einsum"))
  assert len([w for w in warnings if "'blocked'" in w and "520" in w]) == 1, warnings


IDENTITY_MODES = ("none", "separate", "decoupled", "reference", "separate+reference",
                  "decoupled+reference")


@pytest.mark.parametrize("mode", IDENTITY_MODES)
def test_analytic_flops_are_the_traced_matmuls_of_every_identity_mode(mode):
  config = helpers.runlocal_config(**{"identity.mode": mode})
  model, params = helpers.init(config)
  inputs = registry.random_inputs(config, 2)
  lowered = jax.jit(lambda p, i: model.apply(p, **i)).lower(params, inputs)
  cfg = registry.model_config(config)
  assert flops.traced_matmul_flops(lowered) == 2 * flops.forward_flops(
      cfg, registry.video_shape(config), config.text.max_len)
  assert cfg.identity_reference == mode.endswith("reference")
  assert cfg.use_identity == (mode.split("+")[0] in ("separate", "decoupled"))
  assert ("identity_encoder" in params["params"]) == cfg.use_identity


def test_reference_tokens_are_seen_by_the_video_and_never_see_it():
  config = helpers.runlocal_config(**{"identity.mode": "reference"})
  model, params = helpers.init(config)
  p = helpers.perturb_zeros(params, keep=())
  inputs = registry.random_inputs(config, 2)
  cond = {k: v for k, v in inputs.items() if k not in ("x", "t")}
  kv = dit.reference_kv(model, p, inputs["x"], inputs["t"], cond)
  assert len(kv) == config.model.depth
  # The reference stream does not depend on the noisy video, its time or the text.
  rng = np.random.default_rng(5)
  other = dit.reference_kv(model, p, rng.standard_normal(inputs["x"].shape).astype(np.float32),
                           np.full((2,), 0.9, np.float32),
                           dict(cond, text_ids=cond["text_ids"][::-1]))
  for (k, v), (k2, v2) in zip(kv, other):
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_array_equal(v, v2)
  # The video attends to it: another face changes the prediction...
  out = helpers.apply(model, p, inputs)
  assert np.abs(out - helpers.apply(model, p, _other_face(inputs))).max() > 1e-3
  # ...unless the identity is dropped, which hides the reference tokens.
  drop = np.ones(2, bool)
  np.testing.assert_allclose(helpers.apply(model, p, inputs, drop_id=drop),
                             helpers.apply(model, p, _other_face(inputs), drop_id=drop),
                             atol=1e-6)
  # Precomputed keys/values give the same prediction as computing them in the pass.
  cached = model.apply(p, inputs["x"], inputs["t"], **cond, ref_kv=kv)
  np.testing.assert_allclose(cached, out, atol=1e-5)


def test_cached_reference_sampling_equals_uncached():
  from video_dit import sampling  # pylint: disable=g-import-not-at-top
  config = helpers.runlocal_config(**{"identity.mode": "separate+reference",
                                      "sample.num_steps": 3})
  model, params = helpers.init(config)
  p = helpers.perturb_zeros(params, keep=())
  built = registry.build_dit(config)
  cond = {k: v for k, v in registry.random_inputs(config, 2).items() if k not in ("x", "t")}
  videos = [np.asarray(sampling.make_sampler(model, built.diffusion, built.sampler,
                                             (2,) + built.shape, cache_reference=cache)(
                                                 p, cond, jax.random.key(0)))
            for cache in (True, False)]
  np.testing.assert_allclose(videos[0], videos[1], atol=1e-5)
  assert np.abs(videos[0]).max() > 0.1


@pytest.mark.parametrize("overrides,msg", [
    ({"identity.mode": "reference", "model.scan_layers": True}, "scan_layers=False"),
    ({"identity.mode": "reference", "identity.pooled_to_adaln": True}, "identity encoder"),
    ({"identity.mode": "reference", "identity.face_size": 0}, "identity.face_size"),
    ({"identity.mode": "reference+separate"}, "identity.mode='reference\\+separate' is not"),
])
def test_reference_mode_errors_name_the_fix(overrides, msg):
  with pytest.raises(ValueError, match=msg):
    registry.build(helpers.runlocal_config(**overrides))


@pytest.mark.parametrize("speeds,expected", [({"float32": 0.3, "bfloat16": 0.6}, "bfloat16"),
                                             ({"float32": 0.3, "bfloat16": 0.33}, "float32"),
                                             ({"float32": 0.3, "bfloat16": 0.15}, "float32")])
def test_auto_matmul_dtype_takes_bf16_only_where_clearly_faster(monkeypatch, speeds, expected):
  from video_dit.models import layers  # pylint: disable=g-import-not-at-top
  probes = []
  monkeypatch.setattr(layers, "probe_matmul_speeds", lambda: probes.append(1) or speeds)
  monkeypatch.setattr(layers, "_RESOLVED", {})
  with pytest.raises(ValueError, match="attention_layout"):  # a bad config: no probe first
    registry.model_config(helpers.runlocal_config(**{"model.matmul_dtype": "auto",
                                                     "model.attention_layout": "x"}))
  assert not probes
  config = helpers.runlocal_config(**{"model.matmul_dtype": "auto"})
  assert registry.model_config(config).matmul_dtype == expected
  assert registry.model_config(config).matmul_dtype == expected
  assert len(probes) == 1  # probed once per process
  # A pinned dtype is never probed.
  pinned = helpers.runlocal_config(**{"model.matmul_dtype": "float32"})
  assert registry.model_config(pinned).matmul_dtype == "float32" and len(probes) == 1


def test_matmul_probe_measures_both_dtypes():
  from video_dit.models import layers  # pylint: disable=g-import-not-at-top
  speeds = layers.probe_matmul_speeds(n=256, repeats=2)
  assert set(speeds) == {"float32", "bfloat16"} and min(speeds.values()) > 0


def test_factorised_blocks_attend_within_frames_then_across_them():
  """Depth 1 (one spatial block): a change to token frame 1 never reaches token frame
  0's output. Depth 2 (spatial, temporal) and the full layout: it does."""
  def frame0_change(layout, depth):
    config = helpers.runlocal_config(**{"model.attention_layout": layout,
                                        "model.depth": depth})
    pt = config.model.patch[0]  # video frames per token frame
    model, params = helpers.init(config)
    p = helpers.perturb_zeros(params)
    inputs = registry.random_inputs(config, 2)
    out = helpers.apply(model, p, inputs)
    x = jnp.asarray(inputs["x"]).at[:, pt:2 * pt].add(1.0)  # token frame 1
    out2 = helpers.apply(model, p, dict(inputs, x=x))
    assert float(jnp.abs(out2[:, pt:2 * pt] - out[:, pt:2 * pt]).max()) > 1e-3
    return float(jnp.abs(out2[:, :pt] - out[:, :pt]).max())

  assert frame0_change("factorised", 1) < 1e-6
  assert frame0_change("factorised", 2) > 1e-4
  assert frame0_change("full", 1) > 1e-4


def test_group_is_a_frame_split_and_ungroup_inverts_it():
  from video_dit.models import attention  # pylint: disable=g-import-not-at-top
  grid = (3, 2, 4)
  x = jnp.arange(2 * 24 * 5, dtype=jnp.float32).reshape(2, 24, 5, 1)  # token order (t, h, w)
  s = attention.group(x, "spatial", grid)
  assert s.shape == (6, 8, 5, 1)
  np.testing.assert_array_equal(s[1 * 3 + 2], x[1, 16:24])  # example 1, frame 2
  tm = attention.group(x, "temporal", grid)
  assert tm.shape == (16, 3, 5, 1)
  np.testing.assert_array_equal(tm[1 * 8 + 5], x[1, 5::8])  # example 1, position 5
  for layout in ("spatial", "temporal"):
    np.testing.assert_array_equal(attention.ungroup(attention.group(x, layout, grid), layout,
                                                    grid), x)


@pytest.mark.parametrize("attn", ["einsum", "blocked"])
def test_analytic_flops_of_factorised_attention_are_the_traced_matmuls(attn):
  config = helpers.runlocal_config(**{"model.attention_layout": "factorised",
                                      "model.attention": attn})
  model, params = helpers.init(config)
  inputs = registry.random_inputs(config, 2)
  lowered = jax.jit(lambda p, i: model.apply(p, **i)).lower(params, inputs)
  cfg = registry.model_config(config)
  full = flops.forward_flops(dataclasses.replace(cfg, attention_layout="full"),
                             registry.video_shape(config), config.text.max_len)
  fact = flops.forward_flops(cfg, registry.video_shape(config), config.text.max_len)
  assert flops.traced_matmul_flops(lowered) == 2 * fact and fact < full


def test_factorised_layout_config_errors_name_the_fix():
  with pytest.raises(ValueError, match="attention_layout.*one of"):
    registry.model_config(helpers.runlocal_config(**{"model.attention_layout": "latte"}))
  with pytest.raises(ValueError, match="scan_layers=False"):
    registry.model_config(helpers.runlocal_config(**{"model.attention_layout": "factorised",
                                                     "model.scan_layers": True}))
  with pytest.raises(ValueError, match="attention_layout='full'"):
    registry.model_config(helpers.runlocal_config(**{"model.attention_layout": "factorised",
                                                     "identity.mode": "separate+reference"}))


def _cache_apply(model, cache):
  return jax.jit(lambda params, inputs, **kw: model.apply(params, **inputs, cache=cache, **kw))


def test_step_cache_modes_skip_the_blocks_and_reproduce_the_full_pass(base):
  config, model, params, inputs = base
  p = helpers.perturb_zeros(params, keep=())  # identity gates open too
  full = helpers.apply(model, p, inputs)
  out, residual = _cache_apply(model, "fill")(p, inputs)
  np.testing.assert_array_equal(np.asarray(out), full)  # 'fill' is the normal pass
  cfg = registry.model_config(config)
  assert residual.shape == (2, flops.num_tokens(cfg, registry.video_shape(config)), cfg.width)
  skip = _cache_apply(model, "skip")
  skipped = np.asarray(skip(p, inputs, residual=residual))
  np.testing.assert_allclose(skipped, full, atol=1e-5 * np.abs(full).max())  # x + (y - x) ~ y
  # The skip path never touches a block: with every block's parameters NaN it is unchanged.
  broken = jax.tree_util.tree_map_with_path(
      lambda k, v: jnp.full_like(v, np.nan) if "block_" in jax.tree_util.keystr(k) else v, p)
  np.testing.assert_array_equal(np.asarray(skip(broken, inputs, residual=residual)), skipped)
  # The conditions encoded once ('encode') stand in for the encoders (up to rounding: the
  # conditions' share of c is added as one sum).
  encoded = _cache_apply(model, "encode")(p, inputs)
  assert encoded["text"].shape[:2] == inputs["text_ids"].shape and encoded["c"].shape == (
      2, cfg.width)
  out_e, residual_e = _cache_apply(model, "fill")(p, inputs, encoded=encoded)
  np.testing.assert_allclose(np.asarray(out_e), full, atol=1e-5 * np.abs(full).max())
  np.testing.assert_allclose(np.asarray(residual_e), np.asarray(residual), atol=1e-4)
  np.testing.assert_allclose(np.asarray(skip(p, inputs, residual=residual, encoded=encoded)),
                             skipped, atol=1e-5 * np.abs(full).max())


def test_step_cache_indicator_is_block0_modulated_input_of_the_timestep_alone(base):
  config, model, params, inputs = base
  p = helpers.perturb_zeros(params)
  cfg = registry.model_config(config)
  indicator = _cache_apply(model, "indicator")
  got = np.asarray(indicator(p, inputs))
  # By hand: patch embedding, t_embed, block 0's adaLN shift/scale, affine-free LayerNorm.
  q = p["params"]
  tokens = (patching.patchify(inputs["x"], cfg.patch) @ q["patch_embed"]["kernel"]
            + q["patch_embed"]["bias"])
  temb = layers.TimestepEmbedder(cfg.width).apply({"params": q["t_embed"]}, inputs["t"])
  mod = nn.silu(temb) @ q["block_0"]["adaln"]["kernel"] + q["block_0"]["adaln"]["bias"]
  shift, scale = mod[:, :cfg.width], mod[:, cfg.width:2 * cfg.width]
  mean, var = tokens.mean(-1, keepdims=True), tokens.var(-1, keepdims=True)
  want = (tokens - mean) / jnp.sqrt(var + 1e-6) * (1 + scale[:, None]) + shift[:, None]
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-4)
  # Text and identity do not enter it; t does.
  np.testing.assert_array_equal(np.asarray(indicator(p, _other_face(dict(
      inputs, text_ids=inputs["text_ids"][::-1])))), got)
  assert np.abs(np.asarray(indicator(p, dict(inputs, t=inputs["t"] * 0.5))) - got).max() > 1e-4


def test_step_cache_indicator_needs_unscanned_blocks():
  config = helpers.runlocal_config(**{"model.scan_layers": True, "sample.cache_threshold": 0.1})
  with pytest.raises(ValueError, match="cache_threshold=0.1 needs model.scan_layers=False"):
    registry.build_dit(config)
  model, _ = registry.build(config)
  with pytest.raises(ValueError, match="scan_layers"):
    model.apply({}, **registry.random_inputs(config, 1), cache="indicator")


def test_skip_precondition_keeps_a_lightly_noised_video():
  """x0 prediction at low noise: without the skip, an untrained (or briefly trained)
  network must rebuild every pixel through its tokens, and its prediction of a barely
  noised clip is far worse than the clip itself (the quickstart's saturated, blocky
  last sampler steps). With ``diffusion.precondition='skip'`` the output is
  c_skip(t) x_t + c_out(t) F, so a fresh network already returns x_t / (1 - t)."""
  rng = np.random.default_rng(0)
  results = {}
  for precondition in ("none", "skip"):
    config = helpers.runlocal_config(**{"diffusion.prediction": "x0",
                                        "diffusion.precondition": precondition,
                                        "diffusion.sigma_data": 0.5})
    model, params = helpers.init(config)
    inputs = registry.random_inputs(config, 2)
    x0 = np.clip(0.5 * rng.standard_normal(inputs["x"].shape), -1, 1).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    for t in (0.02, 1.0):
      x_t = (1 - t) * x0 + t * eps
      out = helpers.apply(model, params, dict(inputs, x=x_t, t=np.full((2,), t, np.float32)))
      results[precondition, t] = (out, x_t)
  out, x_t = results["skip", 0.02]
  np.testing.assert_allclose(out, x_t * 0.98 * 0.25 / (0.98 ** 2 * 0.25 + 0.02 ** 2),
                             rtol=1e-5, atol=1e-6)
  assert np.mean((out - x0) ** 2) < 2 * np.mean((x_t - x0) ** 2)
  out_none, _ = results["none", 0.02]
  assert np.mean((out_none - x0) ** 2) > 20 * np.mean((x_t - x0) ** 2)
  np.testing.assert_array_equal(results["skip", 1.0][0], 0.0)  # pure noise: c_skip = 0


def test_skip_precondition_needs_flow_x0():
  config = helpers.runlocal_config(**{"diffusion.prediction": "velocity",
                                      "diffusion.precondition": "skip"})
  with pytest.raises(ValueError, match="precondition='skip' needs"):
    registry.model_config(config)
