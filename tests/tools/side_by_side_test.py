import json
import subprocess
import sys

from tools import side_by_side


def test_commands_run_the_same_workload_on_both_sides():
  mine, ref = side_by_side.commands("video", "layout=factorised", "/src/Latte", 3)
  assert "--config=configs/bench.py:workload=video,layout=factorised" in mine
  assert "--steps=3" in mine and "--steps=3" in ref
  assert "--latte_dir=/src/Latte" in ref and "--frames=16" in ref
  mine, ref = side_by_side.commands("image", "", "/src/DiT", 5)
  assert "--config=configs/bench.py:workload=image" in mine and "--dit_dir=/src/DiT" in ref
  assert not any(a.startswith("--autocast") for a in ref)  # float32, as its train.py
  _, ref = side_by_side.commands("image", "matmul=bfloat16", "/src/DiT", 5, "bfloat16")
  assert "--autocast=bfloat16" in ref


def test_summary_of_two_fake_sides(monkeypatch, capsys):
  rows = iter([dict(config="ours", step_s=1.0, flops_per_step_analytic=2e12),
               dict(config="ref", step_s=3.0, flops_per_step=1e12),
               dict(config="ours", step_s=2.0, flops_per_step_analytic=2e12),
               dict(config="ref", step_s=3.0, flops_per_step=1e12)])
  monkeypatch.setattr(side_by_side, "_first_json", lambda cmd: next(rows))
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS(["side_by_side", "--dit_dir=/src/DiT", "--rounds=2"])
  side_by_side.main([])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["ours_step_s"] == 1.5 and summary["reference_step_s"] == 3.0
  assert summary["speedup"] == 2.0 and summary["ours_tflops_per_s"] == 2e12 / 1.5 / 1e12
  flags.FLAGS.unparse_flags()


def test_missing_reference_folder_and_other_work_are_usage_errors():
  run = lambda *a: subprocess.run([sys.executable, "-m", "tools.side_by_side", *a],
                                  capture_output=True, text=True, timeout=120)
  r = run("--workload=video")
  assert r.returncode != 0 and "--latte_dir" in r.stderr
  r = run("--dit_dir=/src/DiT", "--ours=attention=einsum,variant=B")
  assert r.returncode != 0 and "--ours=variant=B changes the work" in r.stderr
