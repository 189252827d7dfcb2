"""The demo page in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them) driven by selenium against
``python -m experiments.demo`` serving the tiny trained run on a free local port.

``VIDEO_DIT_DEMO_SCREENSHOT=docs/demo.png`` also saves the finished page there (the
README's screenshot)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

from video_dit import video_io
from video_dit import workdir as workdir_lib
from video_dit.data import real_video
from video_dit.evaluation import probes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
  """The demo serving the tiny run (random, untrained probes), and its URL."""
  root = tmp_path_factory.mktemp("demo_server")
  config = workdir_lib.load_config(str(tiny_run / "run"))
  spec = probes.ProbeSpec.from_config(config)
  for kind in ("identity", "action"):
    params = probes.init_params(kind, spec)
    probes.Probe(kind, spec, jax.device_get(params)).save(str(root / "probes" / kind))
  port = _free_port()
  log = open(root / "server.log", "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(
      [sys.executable, "-m", "experiments.demo", f"--workdir={tiny_run / 'run'}",
       f"--port={port}", f"--probe_dir={root / 'probes'}", f"--out={root / 'out'}"],
      cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}/"
  deadline = time.time() + 300
  while True:
    try:
      urllib.request.urlopen(url, timeout=5).read()
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        raise AssertionError("the demo did not start:\n" + (root / "server.log").read_text())
      time.sleep(1)
  yield url, root
  proc.terminate()
  proc.wait(timeout=30)
  log.close()


@pytest.fixture
def browser():
  webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip)")
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--window-size=1400,1700", "--autoplay-policy=no-user-gesture-required"):
    options.add_argument(arg)
  driver = webdriver.Chrome(options=options,
                            service=webdriver.ChromeService(executable_path=DRIVER))
  yield driver
  driver.quit()


def _wait(driver, fn, timeout=60, what="the page"):
  end = time.time() + timeout
  while time.time() < end:
    try:
      value = fn()
      if value:
        return value
    except Exception:  # pylint: disable=broad-except  # not rendered yet
      pass
    time.sleep(0.3)
  raise AssertionError(f"timed out waiting for {what}")


def _text(driver, css):
  return driver.find_element("css selector", css).text


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM or not DRIVER,
                    reason="needs Debian's chromium and chromium-driver (apt-get install "
                           "chromium chromium-driver; .ci/run installs them)")
def test_upload_consent_generate_in_a_browser(browser, server, tmp_path):
  url, root = server
  frames, _ = video_io.read_video(real_video.carphone_path())
  Image.fromarray(frames[0]).save(tmp_path / "photo.png")
  Image.fromarray(np.full((120, 160, 3), 140, np.uint8)).save(tmp_path / "wall.png")
  d = browser
  d.get(url)
  button = _wait(d, lambda: d.find_element("css selector", "button#generate"),
                 what="the generate button")
  assert not button.is_enabled()  # no consent yet: generating is impossible
  upload = lambda path: d.find_element("css selector", "#face input[type=file]").send_keys(path)

  upload(str(tmp_path / "wall.png"))  # an image without a face: the error, no crop
  _wait(d, lambda: "no face found" in _text(d, "#face_msg"), what="the no-face error")
  assert "error" in _text(d, "#face_msg")

  d.refresh()
  _wait(d, lambda: d.find_element("css selector", "#face input[type=file]"))
  upload(str(tmp_path / "photo.png"))
  _wait(d, lambda: "face found" in _text(d, "#face_msg"), what="the face crop")
  _wait(d, lambda: d.execute_script(
      "const i = document.querySelector('#crop img'); return i && i.naturalWidth > 0"),
        what="the crop image")
  button = d.find_element("css selector", "button#generate")
  assert not button.is_enabled()
  d.execute_script("arguments[0].click()", button)  # a click on the disabled button...
  time.sleep(3)
  assert not d.find_element("css selector", "#provenance textarea").get_attribute("value")
  assert not os.path.exists(root / "out")  # ...generates nothing

  d.find_element("css selector", "#consent input[type=checkbox]").click()
  _wait(d, lambda: d.find_element("css selector", "button#generate").is_enabled(),
        what="the button to enable after consent")
  d.find_element("css selector", "#prompt textarea").send_keys("a person nods")
  seed = d.find_element("css selector", "#seed input")
  seed.clear()
  seed.send_keys("7\t")
  d.find_element("css selector", "button#generate").click()
  prov = _wait(d, lambda: d.find_element("css selector", "#provenance textarea").get_attribute(
      "value"), timeout=600, what="the generated video's provenance")
  assert '"prompt": "a person nods"' in prov and '"seed": 7' in prov, prov
  assert "consent" in prov and "AI-generated" in prov
  duration = _wait(d, lambda: d.execute_script(
      "const v = document.querySelector('#video video'); return v && v.duration > 0 && "
      "v.duration"), what="the video to load")
  assert duration > 0
  _wait(d, lambda: d.execute_script(
      "const i = document.querySelector('#plot img'); return i && i.complete && "
      "i.naturalWidth > 0"), what="the identity plot")
  assert "action read by the action probe" in _text(d, "#info")
  assert "GFLOPs per video-second" in _text(d, "#info")
  time.sleep(1)
  d.save_screenshot(str(tmp_path / "demo.png"))
  if os.environ.get("VIDEO_DIT_DEMO_SCREENSHOT"):
    d.save_screenshot(os.environ["VIDEO_DIT_DEMO_SCREENSHOT"])
  assert os.listdir(root / "out")
