import numpy as np
import pytest

from video_dit import video_io
from video_dit.data import real_video
from video_dit.evaluation import face_id

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")


def test_same_person_is_closer_than_another_face():
  frames, _ = video_io.read_video(real_video.carphone_path())
  reference = frames[0]
  same = face_id.identity_similarity(reference, frames[10:60:10])
  other = face_id.identity_similarity(skimage_data.astronaut(), frames[10:60:10])
  assert same["frames"] == 5 and same["frames_without_face"] <= 2
  assert same["l2"] < 0.6 < other["l2"]  # dlib's usual same-person threshold
  assert same["cosine"] > other["cosine"]


def test_frames_without_a_face_are_counted_and_a_faceless_reference_raises():
  frames, _ = video_io.read_video(real_video.carphone_path())
  blank = np.full((3,) + frames.shape[1:], 128, np.uint8)
  r = face_id.identity_similarity(frames[0], np.concatenate([frames[:2], blank]))
  assert r["frames"] == 5 and r["frames_without_face"] == 3  # the three blank ones
  assert r["l2"] < 0.6
  with pytest.raises(ValueError, match="no face found in the reference"):
    face_id.identity_similarity(blank[0], frames[:2])


def test_the_evaluator_scores_real_faces_with_this_module():
  # Two "identities": the carphone speaker and the astronaut photo, each clip scored
  # against its own reference and the other one, as evaluate.identity_metrics does.
  from video_dit.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  frames, _ = video_io.read_video(real_video.carphone_path())
  size = (2 * frames.shape[2], 2 * frames.shape[1])  # 2x: dlib's HOG finds both faces
  resize = lambda image: np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
  frames = np.stack([resize(f) for f in frames[:50:10]])
  astronaut = resize(skimage_data.astronaut())
  videos = np.stack([frames[1:], np.stack([astronaut] * 4)])
  faces = np.stack([frames[0], astronaut])
  config = type("C", (), {"data": type("D", (), {"dataset": "video_folder"})()})()
  out, embeds = evaluate.identity_metrics(config, videos, videos, faces, np.array([0, 1]),
                                          None, False, None)
  real = out["real"]
  assert real["choice_accuracy"] == 1.0 and real["gap"] > 0
  # The matched similarity, from the recognizer's raw descriptors.
  cosines = []
  for face, video in zip(faces, videos):
    ref = face_id.embed_face(face)
    found = [e for e in map(face_id.embed_face, video) if e is not None]
    cosines.append(np.mean([e @ ref / np.linalg.norm(e) / np.linalg.norm(ref) for e in found]))
  assert real["matched"] == pytest.approx(np.mean(cosines))
  assert real["per_video_matched"] == pytest.approx(cosines)
  assert real["matched"] > 0.9 > real["mismatched"]
  assert len(embeds["real"]) == 2 and embeds["real"][0].shape[1] == 128


def test_best_of_on_real_faces_selects_by_dlib_similarity():
  from video_dit.evaluation import usable  # pylint: disable=g-import-not-at-top
  frames, _ = video_io.read_video(real_video.carphone_path())
  faces = np.stack([frames[0]])
  blank = np.full_like(frames[:3], 128)
  config = type("C", (), {"data": type("D", (), {"dataset": "video_folder"})()})()
  score, info = usable.selector(config, faces, None, False, None)
  assert "dlib" in info["selector"] and "same recognizer" in info["bias"]
  want = face_id.similarity(face_id.embed_frames(frames[10:40:10])[0],
                            face_id.embed_face(frames[0]))["cosine"]
  assert score(frames[None, 10:40:10]) == pytest.approx([want])
  assert score(blank[None]).tolist() == [-np.inf]  # no face: never preferred
  kept, chosen, _ = usable.select_best(np.stack([blank[None], frames[None, 10:40:10]]), score)
  assert chosen.tolist() == [1] and np.array_equal(kept[0], frames[10:40:10])
