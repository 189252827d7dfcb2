import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from tests import helpers
from video_dit import sharding
from video_dit.models import registry


@pytest.mark.parametrize("sizes,expected", [
    (dict(data=-1, fsdp=1, tensor=1), (8, 1, 1)),
    (dict(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
    (dict(data=1, fsdp=4, tensor=-1), (1, 4, 2)),
    (dict(data=2, fsdp=2, tensor=2), (2, 2, 2)),
])
def test_make_mesh(sizes, expected):
  mesh = sharding.make_mesh(sizes)
  assert tuple(mesh.shape[a] for a in sharding.MESH_AXES) == expected
  assert mesh.axis_names == sharding.MESH_AXES


def test_make_mesh_single_device():
  mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  assert mesh.size == 1


@pytest.mark.parametrize("sizes,msg", [
    (dict(data=2, fsdp=2, tensor=1), "needs 4 devices but 8 are available"),
    (dict(data=-1, fsdp=-1, tensor=1), "more than one -1"),
    (dict(data=3, fsdp=-1, tensor=1), "do not divide the 8 available devices"),
    (dict(data=0, fsdp=1, tensor=1), "config.mesh.data=0 is invalid"),
    (dict(data=8, fsdp=1), "no 'tensor' size"),
])
def test_make_mesh_errors(sizes, msg):
  with pytest.raises(ValueError, match=msg):
    sharding.make_mesh(sizes)


def test_logical_to_spec_follows_rules_and_divisibility():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  assert sharding.logical_to_spec(("embed", "mlp"), (64, 256), mesh) == P("fsdp", "tensor")
  assert sharding.logical_to_spec(("act_batch", "act_len", "act_embed"), (8, 64, 64),
                                  mesh) == P(("data", "fsdp"), None, None)
  # A batch of 2 splits over 'data' only; 6 heads do not split over tensor=... 4.
  assert sharding.logical_to_spec(("act_batch", None), (2, 3), mesh) == P("data", None)
  mesh4 = sharding.make_mesh(dict(data=1, fsdp=2, tensor=4))
  assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 6, 16),
                                  mesh4) == P("fsdp", None, None)
  # A mesh axis is never used twice in one spec.
  assert sharding.logical_to_spec(("embed", "id_embed"), (8, 8), mesh) == P("fsdp", None)
  with pytest.raises(KeyError, match="not in sharding.LOGICAL_RULES"):
    sharding.logical_to_spec(("bogus",))


def test_constrain_is_noop_without_mesh():
  x = jnp.ones((4, 8))
  assert sharding.constrain(x, ("act_batch", "act_embed")) is x


@pytest.fixture(scope="module")
def sharded_setup():
  config = helpers.runlocal_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  model, _ = registry.build(config)
  mesh = sharding.make_mesh(config.mesh)
  init_inputs = registry.dummy_inputs(config, 1)
  params, shardings = sharding.jit_init(
      lambda k: model.init(k, **init_inputs), mesh, jax.random.key(0))
  return config, model, mesh, params, shardings


def test_param_shardings_follow_rules_table(sharded_setup):
  _, _, mesh, params, _ = sharded_setup
  block = params["params"]["block_0"]
  assert block["mlp"]["fc1"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert block["mlp"]["fc2"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert block["attn"]["qkv"]["kernel"].sharding.spec == P("fsdp", None, "tensor", None)
  assert block["attn"]["out"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
  assert block["id_gate"].sharding.spec == P("fsdp")
  embed = params["params"]["text_encoder"]["token_embed"]["embedding"]
  assert embed.sharding.spec == P("tensor", "fsdp")
  # Every annotated leaf is sharded exactly as the table says for its shape.
  abstract = jax.eval_shape(lambda: sharded_setup[1].init(
      jax.random.key(0), **registry.dummy_inputs(sharded_setup[0], 1)))
  names = sharding.logical_specs(abstract)
  # Every parameter carries logical axis names (un-annotated leaves would be None).
  assert len(jax.tree.leaves(names, is_leaf=lambda v: isinstance(v, tuple))) == len(
      jax.tree.leaves(params))
  for (path, x), n in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree.leaves(names, is_leaf=lambda v: isinstance(v, tuple))):
    assert x.sharding.spec == sharding.logical_to_spec(n, x.shape, mesh), path
  assert x.sharding.mesh == mesh
  # The fsdp x tensor split really cuts per-device parameter memory.
  mlp = block["mlp"]["fc1"]["kernel"]
  assert mlp.addressable_shards[0].data.size == mlp.size // 4


def test_sharded_equals_single_device(sharded_setup):
  config, model, mesh, params, shardings = sharded_setup
  host_params = jax.device_get(params)
  p = helpers.perturb_zeros(host_params)
  inputs = registry.random_inputs(config, 4)

  def loss_and_out(q, i):
    out = model.apply(q, **i)
    return jnp.mean(out ** 2), out

  single = jax.jit(jax.value_and_grad(loss_and_out, has_aux=True))
  (loss1, out1), grad1 = single(p, inputs)

  sharded_p = jax.device_put(p, shardings)
  sharded_in = sharding.shard_batch(inputs, mesh)
  with jax.set_mesh(mesh):
    fn = jax.jit(jax.value_and_grad(loss_and_out, has_aux=True),
                 in_shardings=(shardings, jax.tree.map(lambda x: x.sharding, sharded_in)))
    (loss8, out8), grad8 = fn(sharded_p, sharded_in)
  assert out8.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       atol=1e-5, rtol=1e-4), grad8, grad1)
  assert np.abs(np.asarray(out1)).mean() > 1e-3  # non-trivial outputs were compared


def test_batch_must_split_over_batch_axes():
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
  with pytest.raises(ValueError, match="batch size 6 is not divisible by data\\*fsdp=4"):
    sharding.check_batch(6, mesh)
