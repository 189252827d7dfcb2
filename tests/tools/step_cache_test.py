import math

from tools import step_cache


def test_compares_each_threshold_with_the_uncached_sampler():
  setup = step_cache.setup(None, None, None, runlocal=True, batch=2)
  rows = step_cache.compare(*setup, thresholds=[0.0, 1e9], num_steps=3, repeats=1)
  off, cached = rows
  assert off["full_calls"] == 3 and off["rel_l1"] == 0 and math.isinf(off["psnr"])
  assert off["speedup"] == 1.0
  assert cached["full_calls"] == 2 and 0 < cached["rel_l1"] < 0.5  # the middle step reused
  assert cached["seconds"] > 0 and cached["psnr"] > 10
