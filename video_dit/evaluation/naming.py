"""Names of evaluation results: every setting that changes the videos is in the name, so
evaluations of one checkpoint with other settings sit side by side."""

from __future__ import annotations

import os

from video_dit.models import registry


def run_name(step: int, sampler, split: str, num_videos: int, ema: bool = True,
             best_of: int = 1) -> str:
  """The file name of one evaluation: the step, the examples and every sampler setting,
  so evaluations of one step with other settings never overwrite each other, e.g.
  ``step_3000_test128_ema_euler32_text4_face2``."""
  name = f"step_{step}_{split}{num_videos}_{'ema' if ema else 'raw'}_{sampler_tag(sampler)}"
  if best_of > 1:
    name += f"_best{best_of}"
  return name


def sampler_tag(sampler, scales: bool = True) -> str:
  """A SamplerConfig as a name: ``euler32_text4_face2[_shift3][_eta..][_interval..]
  [_cache0.1]``; ``scales=False`` leaves the guidance scales out."""
  name = f"{sampler.name}{sampler.num_steps}"
  if scales:
    name += f"_text{sampler.text_scale:g}_face{sampler.id_scale:g}"
  if sampler.shift:
    name += f"_shift{sampler.shift:g}"
  if sampler.eta:
    name += f"_eta{sampler.eta:g}"
  if sampler.interval is not None and tuple(sampler.interval) != (0.0, 1.0):
    name += f"_interval{sampler.interval[0]:g}-{sampler.interval[1]:g}"
  if sampler.cache_threshold:
    name += f"_cache{sampler.cache_threshold:g}"
  return name


def result_path(workdir: str, config, step: int, num_videos: int, split: str = "test",
                ema: bool = True, best_of: int = 1) -> str:
  """Where ``evaluate`` writes the json of ``config``'s sampler settings at ``step``."""
  sampler = registry.build_dit(config).sampler
  return os.path.join(workdir, "eval",
                      run_name(step, sampler, split, num_videos, ema, best_of) + ".json")
