r"""The face-upload demo in a browser: a photo and a prompt in, a video of that person out.

  pip install -e '.[demo]'        # gradio
  python -m experiments.demo --workdir=runs/quickstart [--port=7860 --host=127.0.0.1 \
      --step=N --out=W/demo --probe_dir=D --raw]

then open http://127.0.0.1:7860. Upload a face photo (or use the webcam): the page
shows the crop the model will see, or why there is none. Nothing is generated until
the consent statement is ticked; it is recorded in the provenance embedded in every
mp4. Runs offline (gradio's analytics off, no share link); requests queue, one runs at
a time. The logic is ``video_dit.demo.Demo``; this file is the page.
"""

import json
import os
import sys

from absl import flags
import numpy as np
from PIL import Image

from video_dit import cli
from video_dit import demo as demo_lib

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "Training workdir with checkpoints/.")
_PORT = flags.DEFINE_integer("port", 7860, "Port of the page.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0: the network).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_OUT = flags.DEFINE_string("out", None, "Where generated files go; default W/demo.")
_PROBE_DIR = flags.DEFINE_string("probe_dir", None, "Folder of the identity/action probes; "
                                 "default the dataset's (the quickstart trains them).")
_RAW = flags.DEFINE_bool("raw", False, "Use the raw parameters instead of the EMA.")
_FAST = flags.DEFINE_bool("fast", False, "Start the page on the checkpoint's cheapest good "
                          "sampler (a shortcut model's 4 steps, see sample --fast).")


def _import_gradio():
  os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
  try:
    import gradio  # pylint: disable=g-import-not-at-top
  except ImportError:
    sys.exit("error: the demo needs gradio: pip install -e '.[demo]'")
  return gradio


def summary(result: dict) -> str:
  """The result's action and cost as Markdown."""
  c, a = result["cost"], result["action"]
  lines = [f"**seed** {result['seed']} (of {c['candidates']} candidate"
           f"{'s' if c['candidates'] > 1 else ''}; this seed alone reproduces it)"]
  lines.append(f"**action read by the action probe:** {a['name']} (p = {a['probability']:.2f})"
               if a else "**action:** no action probe for this checkpoint")
  if result["similarity"] is not None:
    lines.append(f"**identity similarity** (mean over frames): "
                 f"{sum(result['similarity']) / len(result['similarity']):.3f}")
  lines.append(f"**cost:** {c['seconds']:.2f} s, {c['flops'] / 1e9:.3g} GFLOPs for "
               f"{c['video_seconds']:.2f} s of video = {c['seconds_per_video_second']:.2f} s "
               f"and {c['flops_per_video_second'] / 1e9:.3g} GFLOPs per video-second "
               f"({c['network_passes']} network passes)")
  lines += [f"_{n}_" for n in result["notes"]]
  return "\n\n".join(lines)


def page(demo: demo_lib.Demo, gr):
  """The gradio Blocks of the demo."""
  d = demo.defaults

  def on_face(path, is_crop):
    if not path:
      return None, ""
    try:
      crop = demo.check_face(path, is_crop)
    except ValueError as e:
      return None, f"**error:** {e}"
    big = np.asarray(Image.fromarray(crop).resize((160, 160), Image.NEAREST))  # to see it
    return big, f"face found: this {crop.shape[0]}x{crop.shape[1]} crop is what the model sees"

  def on_generate(path, is_crop, consent, prompt, text_scale, face_scale, sampler, steps,
                  seed, candidates):
    try:
      r = demo.generate(path, prompt, consent, text_scale, face_scale, sampler, int(steps),
                        int(seed or 0), int(candidates), is_crop)
    except ValueError as e:
      raise gr.Error(str(e)) from None
    text = json.dumps(r["provenance"], indent=2, sort_keys=True)
    return r["mp4"], r["plot"], summary(r), r["seed"], text, r["json"]

  with gr.Blocks(title="video_dit demo") as blocks:
    gr.Markdown("# video_dit: a face and a prompt in, a video of that person out\n"
                f"Checkpoint `{os.path.basename(os.path.abspath(demo.workdir))}` step "
                f"{demo.restored.step}. Every video is marked as AI-generated in its metadata.")
    with gr.Row():
      with gr.Column():
        face = gr.Image(label="Face photo", type="filepath", sources=["upload", "webcam"],
                        format="png", elem_id="face")
        is_crop = gr.Checkbox(label="already a face crop (skip detection, e.g. a synthetic "
                              "face)", elem_id="is_crop")
        crop = gr.Image(label="What the model sees", interactive=False, elem_id="crop",
                        height=160)
        face_msg = gr.Markdown(elem_id="face_msg")
        consent = gr.Checkbox(label=demo_lib.CONSENT, elem_id="consent")
        prompt = gr.Textbox(label="Prompt", placeholder="a person nods", elem_id="prompt")
        with gr.Row():
          text_scale = gr.Slider(0, 10, d["text_scale"], step=0.5, label="Text guidance")
          face_scale = gr.Slider(0, 10, d["face_scale"], step=0.5, label="Identity guidance")
        with gr.Row():
          sampler = gr.Dropdown(demo.samplers, value=d["sampler"], label="Sampler")
          steps = gr.Slider(1, demo_lib.MAX_STEPS, d["steps"], step=1, label="Steps")
        with gr.Row():
          seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="seed")
          candidates = gr.Slider(1, demo_lib.MAX_CANDIDATES, 1, step=1,
                                 label="Candidates (best of N by identity similarity)")
        button = gr.Button("Generate", variant="primary", interactive=False,
                           elem_id="generate")
      with gr.Column():
        video = gr.Video(label="Video", autoplay=True, loop=True, elem_id="video", height=256)
        plot = gr.Image(label="Identity similarity per frame", show_label=False,
                        type="filepath", interactive=False, elem_id="plot")
        info = gr.Markdown(elem_id="info")
        used_seed = gr.Number(label="Seed of this video", interactive=False,
                              elem_id="used_seed")
        prov = gr.Textbox(label="Provenance (also embedded in the mp4)", lines=12,
                          max_lines=40, interactive=False, elem_id="provenance")
        prov_file = gr.File(label="Provenance json", elem_id="provenance_file")
    face.change(on_face, [face, is_crop], [crop, face_msg])
    is_crop.change(on_face, [face, is_crop], [crop, face_msg])
    consent.change(lambda c: gr.Button(interactive=bool(c)), consent, button)
    button.click(on_generate, [face, is_crop, consent, prompt, text_scale, face_scale, sampler,
                               steps, seed, candidates],
                 [video, plot, info, used_seed, prov, prov_file], concurrency_limit=1)
  return blocks


def main(argv):
  cli.setup(argv)
  gr = _import_gradio()
  demo = demo_lib.Demo(_WORKDIR.value, _STEP.value, ema=not _RAW.value, out_dir=_OUT.value,
                       probe_dir=_PROBE_DIR.value, fast=_FAST.value)
  blocks = page(demo, gr)
  blocks.queue(default_concurrency_limit=1)
  print(f"[demo] serving http://{_HOST.value}:{_PORT.value}", flush=True)
  blocks.launch(server_name=_HOST.value, server_port=_PORT.value, share=False,
                allowed_paths=[os.path.abspath(demo.out_dir)])


if __name__ == "__main__":
  cli.run(main)
