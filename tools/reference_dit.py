r"""The reference DiT (image) and Latte (video) train steps in PyTorch, timed and
profiled the way ``tools.benchmark`` times ours, for a side-by-side comparison anyone can
rerun.

The model is the reference's own source (facebookresearch/DiT ``models.py``, or
maxin-cn/Latte ``models/latte.py``), loaded from its folder; nothing of it is copied
here. Fetch it yourself:

  git clone https://github.com/facebookresearch/DiT /tmp/DiT
  python -m tools.reference_dit --dit_dir=/tmp/DiT --model=DiT-S/2 --batch=8 --profile
  git clone https://github.com/maxin-cn/Latte /tmp/Latte
  python -m tools.reference_dit --latte_dir=/tmp/Latte --model=Latte-S/2 --batch=2 --frames=16

The step is the reference's training step on a 32x32x4 latent (Latte: ``--frames`` of
them): forward, MSE on the predicted noise, backward, AdamW (lr 1e-4, no weight decay,
as DiT's train.py) and an EMA update of every parameter (as its ``update_ema``).
``learn_sigma`` is off and Latte is unconditional (``extras=1``) to match
``configs/bench.py`` (the variance term is a few elementwise ops).

One JSON line: step_s (median), flops_per_step (torch's FlopCounterMode on one step),
tflops_per_s, peak_tflops_per_s (a 2048^3 f32 matmul in this process), mfu, threads,
and with --profile the per-category time table (the same categories as
``tools.benchmark --profile``), also printed as a table.

timm's ``PatchEmbed/Attention/Mlp`` come from timm when it imports; timm needs
torchvision, whose CPU build is not on PyPI, so without it a stand-in module with the
same three layers (conv patch embedding; fused QKV with
``scaled_dot_product_attention``, which timm itself uses; fc-GELU-fc) is used and the
JSON says ``"timm": "stand-in"``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
import types

from absl import app
from absl import flags

_DIT_DIR = flags.DEFINE_string("dit_dir", None, "Source folder of facebookresearch/DiT.")
_LATTE_DIR = flags.DEFINE_string("latte_dir", None, "Source folder of maxin-cn/Latte.")
_MODEL = flags.DEFINE_string("model", "", "A key of DiT_models / Latte_models (default: "
                             "DiT-S/2 / Latte-S/2).")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch size (default: 8 DiT, 2 Latte).")
_FRAMES = flags.DEFINE_integer("frames", 16, "Latte: latent frames.")
_SIZE = flags.DEFINE_integer("input_size", 32, "Latent height and width.")
_CHANNELS = flags.DEFINE_integer("channels", 4, "Latent channels.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps after two warm-up steps.")
_THREADS = flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: torch's default).")
_AUTOCAST = flags.DEFINE_enum("autocast", "", ["", "bfloat16"], "Run the forward pass "
                              "under torch.autocast (CPU, this dtype), as mixed-precision "
                              "training does; '' (default): float32, as the reference's "
                              "train.py.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also profile 3 steps with torch.profiler.")


def _stand_in_timm(torch):
  """timm.models.vision_transformer's three layers, written from their definitions."""
  nn, F = torch.nn, torch.nn.functional

  class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
      super().__init__()
      self.patch_size = (patch_size, patch_size)
      self.num_patches = (img_size // patch_size) ** 2
      self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size, bias=bias)

    def forward(self, x):
      return self.proj(x).flatten(2).transpose(1, 2)

  class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, **_):
      super().__init__()
      self.num_heads = num_heads
      self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
      self.proj = nn.Linear(dim, dim)

    def forward(self, x):
      b, n, c = x.shape
      q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(
          2, 0, 3, 1, 4)
      x = F.scaled_dot_product_attention(q, k, v)
      return self.proj(x.transpose(1, 2).reshape(b, n, c))

  class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU, drop=0.0, **_):
      super().__init__()
      self.fc1 = nn.Linear(in_features, hidden_features)
      self.act = act_layer()
      self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  mod = types.ModuleType("timm.models.vision_transformer")
  mod.PatchEmbed, mod.Attention, mod.Mlp = PatchEmbed, Attention, Mlp
  for name in ("timm", "timm.models"):
    sys.modules.setdefault(name, types.ModuleType(name))
  sys.modules["timm.models.vision_transformer"] = mod


REFERENCES = {  # family -> (file in the source folder, model table, its repository)
    "dit": ("models.py", "DiT_models", "https://github.com/facebookresearch/DiT"),
    "latte": ("models/latte.py", "Latte_models", "https://github.com/maxin-cn/Latte"),
}


def load_reference(source_dir: str, torch, family: str = "dit"):
  """The reference's model file as a module, and which timm it got."""
  file, _, repo = REFERENCES[family]
  path = os.path.join(source_dir, file)
  if not os.path.isfile(path):
    raise app.UsageError(f"--{family}_dir={source_dir} has no {file}; clone {repo} and "
                         "pass its folder")
  try:
    importlib.import_module("timm.models.vision_transformer")
    which = "timm"
  except Exception:  # pylint: disable=broad-except  (timm missing, or its torchvision)
    for name in [m for m in sys.modules if m == "timm" or m.startswith("timm.")]:
      del sys.modules[name]
    _stand_in_timm(torch)
    which = "stand-in"
  spec = importlib.util.spec_from_file_location("reference_dit_models", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, which


def matmul_peak(torch, n: int = 2048, dtype: str = "") -> float:
  """TFLOP/s of an n^3 matmul, float32 or ``dtype`` operands (the step's policy). The
  size doubles from 256 up to ``n`` while one product takes under 0.1 s, so a dtype
  without fast kernels (bf16 on a CPU without bf16 instructions: 100x slower) is
  measured in seconds, not minutes."""
  dt = getattr(torch, dtype or "float32")
  size = 256
  while True:
    a, b = torch.randn(size, size).to(dt), torch.randn(size, size).to(dt)
    if _timed(lambda: a @ b) >= 0.1 or size >= n:
      break
    size *= 2
  best = min(_timed(lambda: a @ b) for _ in range(3))
  return 2 * size ** 3 / best / 1e12


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def make_step(torch, table, name: str, batch: int, size: int, channels: int,
              frames: int = 0, autocast: str = ""):
  """The train step of ``table[name]``; ``frames`` > 0: a Latte video model;
  ``autocast`` 'bfloat16': the forward pass under ``torch.autocast`` (bf16 matmuls;
  parameters, gradients and the optimizer stay float32)."""
  kw = dict(input_size=size, in_channels=channels, learn_sigma=False)
  if frames:
    kw.update(num_frames=frames, extras=1)
  model, ema = table[name](**kw), table[name](**kw)
  ema.load_state_dict(model.state_dict())
  ema.requires_grad_(False)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
  x = torch.randn(batch, *((frames,) if frames else ()), channels, size, size)
  noise = torch.randn_like(x)
  y = torch.randint(0, 1000, (batch,))
  t = torch.randint(0, 1000, (batch,))
  pairs = list(zip(ema.parameters(), model.parameters()))
  rf = torch.profiler.record_function

  def step():
    with rf("forward"), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(autocast)):
      loss = torch.nn.functional.mse_loss(model(x + noise, t, y).float(), noise)
    with rf("backward"):
      loss.backward()
    with rf("optimizer"):
      opt.step()
      opt.zero_grad(set_to_none=True)
    with rf("ema"), torch.no_grad():
      for e, p in pairs:
        e.mul_(0.9999).add_(p, alpha=1 - 0.9999)
    return loss

  return step


CATEGORIES = (  # (category, substrings of a torch op name), first match wins
    ("attention", ("scaled_dot_product", "attention", "bmm", "softmax")),
    ("matmul", ("addmm", "aten::mm", "matmul", "linear", "conv")),
    ("norm/modulate", ("layer_norm", "native_layer_norm")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "sqrt")),
)


def profile(torch, step, steps: int = 3) -> list[dict]:
  """Self CPU time per category (phases forward/backward/optimizer/ema too)."""
  from torch.profiler import ProfilerActivity  # pylint: disable=g-import-not-at-top
  with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  phases, cats = {}, {}
  for ev in prof.key_averages():
    if ev.key in ("forward", "backward", "optimizer", "ema"):
      phases[ev.key] = ev.cpu_time_total / steps / 1e6
      continue
    name = ev.key.lower()
    cat = next((c for c, subs in CATEGORIES if any(s in name for s in subs)), "elementwise/other")
    cats[cat] = cats.get(cat, 0.0) + ev.self_cpu_time_total / steps / 1e6
  total = sum(cats.values())
  rows = [dict(category=c, seconds=s, share=s / total) for c, s in
          sorted(cats.items(), key=lambda kv: -kv[1])]
  rows += [dict(phase=p, seconds=s) for p, s in phases.items()]
  return rows


def count_flops(torch, step) -> float:
  """FLOPs of one step by torch's FlopCounterMode. Its table has no formula for the CPU
  flash-attention kernel that ``scaled_dot_product_attention`` runs on CPU, so those
  two ops get the formula of the GPU kernels (the same products)."""
  from torch.utils import flop_counter  # pylint: disable=g-import-not-at-top
  aten = torch.ops.aten

  def forward(q, k, v, *args, out_shape=None, **kwargs):  # shapes, as the counter passes
    return flop_counter.sdpa_flop_count(q, k, v)

  def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs):
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)

  custom = {}
  for op, formula in (("_scaled_dot_product_flash_attention_for_cpu", forward),
                      ("_scaled_dot_product_flash_attention_for_cpu_backward", backward)):
    if hasattr(aten, op):
      custom[getattr(aten, op)] = formula
  counter = flop_counter.FlopCounterMode(display=False, custom_mapping=custom)
  with counter:
    step()
  return float(counter.get_total_flops())


def main(argv):
  del argv
  if _STEPS.value < 1 or _BATCH.value < 0 or (_LATTE_DIR.value and _FRAMES.value < 1):
    raise app.UsageError("--steps and --frames must be >= 1 and --batch >= 0 (0: the "
                         "reference's default)")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise app.UsageError("PyTorch is missing: pip install -e '.[reference]'") from e
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  family = "latte" if _LATTE_DIR.value else "dit"
  models, which = load_reference(_LATTE_DIR.value or _DIT_DIR.value, torch, family)
  table = getattr(models, REFERENCES[family][1])
  name = _MODEL.value or ("Latte-S/2" if family == "latte" else "DiT-S/2")
  if name not in table:
    raise app.UsageError(f"--model={name} is not one of {sorted(table)}")
  batch = _BATCH.value or (2 if family == "latte" else 8)
  step = make_step(torch, table, name, batch, _SIZE.value, _CHANNELS.value,
                   _FRAMES.value if family == "latte" else 0, _AUTOCAST.value)
  step(), step()  # warm-up
  flops = count_flops(torch, step)
  times = [_timed(step) for _ in range(_STEPS.value)]
  step_s = statistics.median(times)
  peak = matmul_peak(torch, dtype=_AUTOCAST.value)
  frames = f" x {_FRAMES.value} frames" if family == "latte" else ""
  out = dict(config=f"reference {name} batch {batch}{frames}", what="train",
             step_s=step_s, flops_per_step=flops, tflops_per_s=flops / step_s / 1e12,
             peak_tflops_per_s=peak, mfu=flops / step_s / 1e12 / peak,
             threads=torch.get_num_threads(), torch=torch.__version__, timm=which,
             autocast=_AUTOCAST.value or "float32")
  if _PROFILE.value:
    out["profile"] = profile(torch, step)
    for r in out["profile"]:
      label = r.get("category") or f"phase {r['phase']}"
      share = f"{100 * r['share']:5.1f}%" if "share" in r else ""
      print(f"{label:22s} {1000 * r['seconds']:9.1f} ms {share}", file=sys.stderr)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  flags.register_multi_flags_validator(
      ["dit_dir", "latte_dir"], lambda f: bool(f["dit_dir"]) != bool(f["latte_dir"]),
      message="pass exactly one of --dit_dir (DiT) and --latte_dir (Latte)")
  app.run(main)
