"""tools.reference_dit on a tiny stand-in of the reference's models.py (the real one is
fetched by the user; tests have no network)."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

# The reference's interface as tools/reference_dit.py uses it: DiT_models[name](input_size,
# in_channels, learn_sigma) -> module(x, t, y), built from timm's three layers.
MODELS_PY = '''
import torch
import torch.nn as nn
from timm.models.vision_transformer import PatchEmbed, Attention, Mlp


class TinyDiT(nn.Module):
  def __init__(self, input_size=8, in_channels=4, learn_sigma=True):
    super().__init__()
    self.x_embedder = PatchEmbed(input_size, 2, in_channels, 32, bias=True)
    self.t_embed = nn.Embedding(1000, 32)
    self.y_embed = nn.Embedding(1001, 32)
    self.norm = nn.LayerNorm(32)
    self.attn = Attention(32, num_heads=2, qkv_bias=True)
    self.mlp = Mlp(in_features=32, hidden_features=64, act_layer=nn.GELU, drop=0)
    self.out = nn.Linear(32, 4 * in_channels)
    self.size, self.c = input_size, in_channels

  def forward(self, x, t, y):
    h = self.x_embedder(x) + (self.t_embed(t) + self.y_embed(y))[:, None]
    h = h + self.attn(self.norm(h))
    h = h + self.mlp(self.norm(h))
    b, n = h.shape[:2]
    g = self.size // 2
    h = self.out(h).reshape(b, g, g, 2, 2, self.c).permute(0, 5, 1, 3, 2, 4)
    return h.reshape(b, self.c, self.size, self.size)


DiT_models = {"tiny": TinyDiT}
'''


def _run(*args):
  return subprocess.run([sys.executable, "-m", "tools.reference_dit", *args],
                        capture_output=True, text=True, timeout=300)


def test_times_counts_and_profiles_the_reference_step(tmp_path):
  (tmp_path / "models.py").write_text(MODELS_PY)
  r = _run(f"--dit_dir={tmp_path}", "--model=tiny", "--batch=2", "--input_size=8",
           "--steps=3", "--profile", "--threads=1")
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["step_s"] > 0 and out["peak_tflops_per_s"] > 0 and out["threads"] == 1
  # The dense layers (qkv, proj, fc1, fc2, out; batch 2, 16 tokens, width 32) and the
  # attention products, forward and backward: at least 3x both forwards.
  dense_fwd = 2 * 2 * 16 * 32 * (3 * 32 + 32 + 64 + 64 + 16)
  attention_fwd = 4 * 2 * 2 * 16 * 16 * 16
  assert out["flops_per_step"] >= 3 * (dense_fwd + attention_fwd)
  cats = {r["category"]: r["seconds"] for r in out["profile"] if "category" in r}
  phases = {r["phase"]: r["seconds"] for r in out["profile"] if "phase" in r}
  assert cats["matmul"] > 0 and cats["attention"] > 0
  assert set(phases) == {"forward", "backward", "optimizer", "ema"}
  assert all(v > 0 for v in phases.values())
  assert out["timm"] in ("timm", "stand-in")
  assert "matmul" in r.stderr  # the table
  assert out["autocast"] == "float32"
  r = _run(f"--dit_dir={tmp_path}", "--model=tiny", "--batch=2", "--input_size=8",
           "--steps=1", "--threads=1", "--autocast=bfloat16")
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])["autocast"] == "bfloat16"


def test_bad_folder_and_model_are_one_line_errors(tmp_path):
  r = _run(f"--dit_dir={tmp_path}")
  assert r.returncode != 0 and "has no models.py" in r.stderr
  (tmp_path / "models.py").write_text(MODELS_PY)
  r = _run(f"--dit_dir={tmp_path}", "--model=DiT-XL/2")
  assert r.returncode != 0 and "is not one of ['tiny']" in r.stderr


def test_attention_flops_are_counted_on_cpu():
  """torch's counter has no formula for the CPU flash-attention kernel; ours adds it.
  (A fresh process: the tool's flags share names with tools.side_by_side's.)"""
  code = ("import torch; from tools import reference_dit as r; "
          "q, k, v = (torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3)); "
          "f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum()"
          ".backward(); print(r.count_flops(torch, f))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  forward = 4 * 1 * 2 * 16 * 16 * 8  # QK^T and PV
  assert float(out.stdout.strip().splitlines()[-1]) >= 3 * forward  # forward + backward
