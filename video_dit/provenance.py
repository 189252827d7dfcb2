"""Provenance that travels with the file: what made a generated video, embedded in it.

Every sample's record says it is AI-generated, when (UTC), by which code (package version,
git commit when known), from which checkpoint (step, which parameters, and the digest
that ``tools.inspect_checkpoint --digest`` reproduces), for which reference face (its
SHA-256, never its path) and with whose consent, and every sampler setting. It is written
as the sidecar ``.json`` and embedded in the mp4's container metadata (``comment``), the
PNG's text chunks and the GIF's comment; ``read(path)`` gets it back
(``python -m tools.provenance FILE`` checks it against the sidecar).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time

from PIL import Image, PngImagePlugin

MARKER = "AI-generated video (video_dit)"
KEY = "video_dit_provenance"


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
  """The installed package version and, in a git checkout, the commit (+ whether the
  working tree had changes)."""
  try:
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    version = metadata.version("video_dit")
  except Exception:  # pylint: disable=broad-except
    version = None
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  commit = None
  try:
    run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
    commit = run("rev-parse", "HEAD")
    if run("status", "--porcelain", "--untracked-files=no"):
      commit += "+local changes"
  except (OSError, subprocess.SubprocessError):
    pass
  return dict(package_version=version, commit=commit)


def record(**fields) -> dict:
  """A provenance record: the marker, UTC time and code version, then ``fields``."""
  return dict(ai_generated=True, marker=MARKER,
              created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **code_version(), **fields)


def dumps(rec: dict) -> str:
  return json.dumps(rec, sort_keys=True)


def mp4_metadata(rec: dict) -> dict[str, str]:
  return {"comment": dumps(rec), "description": MARKER}


def png_info(rec: dict) -> PngImagePlugin.PngInfo:
  info = PngImagePlugin.PngInfo()
  info.add_text(KEY, dumps(rec))
  info.add_text("Description", MARKER)
  return info


def gif_comment(rec: dict) -> bytes:
  return dumps(rec).encode("utf-8")


def read(path: str) -> dict:
  """The record embedded in an .mp4, .png or .gif; ValueError when there is none."""
  ext = os.path.splitext(path)[1].lower()
  text = None
  if ext in (".mp4", ".mov", ".mkv"):
    import av  # pylint: disable=g-import-not-at-top
    with av.open(path) as container:
      text = container.metadata.get("comment")
  elif ext in (".png", ".gif"):
    try:
      with Image.open(path) as img:
        text = img.info.get(KEY) if ext == ".png" else img.info.get("comment")
    except (Image.UnidentifiedImageError, OSError) as e:
      raise ValueError(f"{path} is not a readable {ext[1:].upper()} image ({e})") from None
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
  else:
    raise ValueError(f"{path}: provenance is read from .mp4, .png or .gif files")
  if not text:
    raise ValueError("carries no video_dit provenance")
  try:
    return json.loads(text)
  except ValueError as e:
    raise ValueError(f"its provenance is not valid JSON ({e})") from e
