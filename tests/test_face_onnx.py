"""The onnxruntime FaceID backend (``face_onnx``, ``face_detect``, ``face_align``) against insightface 2.1.

Both run the same ONNX files (``harness.face_onnx_models``: an SCRFD-shaped detector that finds the
bright "faces" drawn by ``face_image``, and ArcFace-shaped recognisers) on the same images: several faces
per image, images smaller and larger than the detection size, portrait, landscape and very wide, at
detection sizes 640, 512 and 320. insightface (with OpenCV and scikit-image) is the oracle; the backend
uses neither.

Tolerances (stated; measured over 156 faces of both packs at detection sizes 640..320 in brackets):

* detections: the same number, in the same order; boxes and landmarks within 1e-3 px, scores within
  1e-5 (measured: identical, 0.0: the letterbox resize reproduces ``cv2.resize`` bit for bit and the
  decoding does insightface's float32 arithmetic);
* the alignment's similarity transform within 1e-9 (measured: identical; the statistics are taken at
  the landmarks' float32 precision as scikit-image does);
* aligned crops (112, 224, 256, 336): no pixel off by more than 1/255, and at least 99.5 % identical
  (measured: max 1/255; 99.994 % identical on the face images, ~99.98 % on random noise; OpenCV 5's
  float32 warp rounds a few pixels the other way);
* embeddings: from an identical crop, within 1e-5 relative L2 (measured: identical); end to end, where a
  crop may differ by one grey level on a few pixels, raw embeddings within 1e-3 relative L2 and normed
  ones within 1e-3 per component (measured: 1.1e-4 and 1.4e-5, with deliberately pixel-sensitive tiny
  recognisers).
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest
import torch

from harness import face_onnx_models as fm
from ipadapter_next.ipadapter import face_align, face_detect, face_onnx, faceid

needs_insightface = pytest.mark.skipif(
    importlib.util.find_spec("insightface") is None or importlib.util.find_spec("cv2") is None,
    reason="insightface (the oracle) is not installed",
)

BOX_TOL = 1e-3
SCORE_TOL = 1e-5
EMBED_REL_TOL = 1e-3
SAME_CROP_REL_TOL = 1e-5

# (width, height, faces as (cx, cy, radius)): sizes and aspect ratios around the detection sizes.
IMAGES = {
    "landscape": (640, 480, [(150, 160, 40), (420, 200, 70), (300, 380, 22), (560, 400, 12)]),
    "portrait": (480, 800, [(240, 220, 90), (120, 600, 30), (360, 620, 45)]),
    "large_2x": (1280, 960, [(300, 300, 120), (900, 500, 60), (640, 800, 40)]),
    "small": (300, 200, [(80, 90, 18), (210, 100, 30)]),
    "wide": (1000, 333, [(150, 160, 60), (500, 170, 35), (850, 150, 90)]),
}
DET_SIZES = (640, 512, 320)


@pytest.fixture(scope="session")
def face_models():
    return fm.ensure_face_models()


@pytest.fixture(scope="module")
def images():
    return {name: fm.face_image(w, h, faces, seed=i) for i, (name, (w, h, faces)) in enumerate(IMAGES.items())}


def _insightface_analysis(model_dir):
    from insightface.app import FaceAnalysis

    return FaceAnalysis(name=str(model_dir), root=str(model_dir.parent), providers=["CPUExecutionProvider"])


class _no_warning_check:  # scikit-image's deprecation warning inside insightface is not ours to judge
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------
@needs_insightface
@pytest.mark.parametrize("src,dst", [((480, 640), (480, 640)), ((300, 400), (480, 640)), ((1000, 700), (640, 448)),
                                     ((960, 1280), (480, 640)), ((123, 457), (171, 640)), ((50, 90), (355, 640)),
                                     ((1281, 1900), (431, 640)), ((7, 5), (640, 457))])
def test_resize_linear_is_cv2_resize_bit_for_bit(src, dst):
    import cv2

    rng = np.random.default_rng(src[0] * 7 + dst[1])
    image = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    ours = face_detect.resize_linear(image, dst[1], dst[0])
    np.testing.assert_array_equal(ours, cv2.resize(image, (dst[1], dst[0])))
    np.testing.assert_array_equal(face_detect.resize_linear(image[..., 0], dst[1], dst[0]),
                                  cv2.resize(np.ascontiguousarray(image[..., 0]), (dst[1], dst[0])))


def test_umeyama_recovers_a_similarity_and_never_reflects():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.4, 1.7, np.array([12.0, -5.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ rot.T * scale + shift
    m = face_align.umeyama_similarity(src, dst)
    np.testing.assert_allclose(m, np.c_[scale * rot, shift], atol=1e-10)
    mirrored = face_align.umeyama_similarity(src, dst * np.array([-1.0, 1.0]))
    assert np.linalg.det(mirrored[:, :2]) > 0  # the best proper similarity, not the mirror


@needs_insightface
@pytest.mark.parametrize("size", [112, 224, 256, 336])
def test_norm_crop_matches_insightface(size):
    from insightface.utils import face_align as if_align

    rng = np.random.default_rng(size)
    identical = total = 0
    for trial in range(12):
        h, w = rng.integers(60, 500, 2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        c = rng.uniform([0, 0], [w, h])  # faces partly outside the image too
        a, s = rng.uniform(-1.0, 1.0), rng.uniform(0.3, 3.0)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        kps = ((face_align.ARCFACE_TEMPLATE - 56) @ rot.T * s + c + rng.normal(0, 2, (5, 2))).astype(np.float32)
        with _no_warning_check():
            ref_m = if_align.estimate_norm(kps, size)
            ref = if_align.norm_crop(image, kps, size)
        np.testing.assert_allclose(face_align.estimate_norm(kps, size), ref_m, atol=1e-9)
        ours = face_onnx.norm_crop(image, kps, size)
        assert ours.shape == ref.shape == (size, size, 3) and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - ref)
        assert diff.max() <= 1
        identical += int((diff == 0).sum())
        total += diff.size
    assert identical / total >= 0.995  # measured: ~0.9998


def test_template_sizes_and_impossible_sizes():
    np.testing.assert_allclose(face_align.arcface_template(224), face_align.ARCFACE_TEMPLATE * 2)
    t256 = face_align.arcface_template(256)
    np.testing.assert_allclose(t256[:, 1], face_align.ARCFACE_TEMPLATE[:, 1] * 2)
    np.testing.assert_allclose(t256[:, 0], face_align.ARCFACE_TEMPLATE[:, 0] * 2 + 16)
    with pytest.raises(ValueError, match="multiples of 112 or 128"):
        face_align.arcface_template(200)


@needs_insightface
def test_onnx_node_names_match_the_onnx_package(face_models):
    import onnx

    for rel in ("buffalo_l/w600k_r50.onnx", "buffalo_l/det_10g.onnx", "variants/rec_mxnet.onnx"):
        expected = [n.name for n in onnx.load(str(face_models / rel)).graph.node[:8]]
        assert face_onnx.onnx_node_names(face_models / rel) == expected


# --------------------------------------------------------------------------------------------------
# Which file is which
# --------------------------------------------------------------------------------------------------
def test_models_are_identified_by_content_not_by_file_name(face_models, tmp_path):
    src = face_models / "buffalo_l"
    swapped = fm.copy_pack(src, tmp_path / "buffalo_l",
                           {"det_10g.onnx": "w600k_r50.onnx", "w600k_r50.onnx": "det_10g.onnx",
                            "genderage.onnx": "a_first_recognition.onnx"})
    det_path, det_session, rec_path, rec_session = face_onnx.find_face_models(swapped)
    assert det_path.name == "w600k_r50.onnx" and rec_path.name == "det_10g.onnx"
    assert face_onnx.classify_onnx_model(det_session) == "detection"
    assert face_onnx.classify_onnx_model(rec_session) == "recognition"
    import onnxruntime as ort

    attr = ort.InferenceSession(str(swapped / "a_first_recognition.onnx"), providers=["CPUExecutionProvider"])
    assert face_onnx.classify_onnx_model(attr) == "attribute"

    image = fm.face_image(640, 480, IMAGES["landscape"][2])
    a = face_onnx.OnnxFaceAnalysis(swapped).get(image)
    b = face_onnx.OnnxFaceAnalysis(src).get(image)
    assert len(a) == len(b) > 0
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.bbox, fb.bbox)
        np.testing.assert_array_equal(fa.embedding, fb.embedding)


def test_missing_folder_names_the_folder_and_files(tmp_path):
    with pytest.raises(face_onnx.FaceModelFilesError) as err:
        face_onnx.load_onnx_face_analysis(tmp_path / "models" / "buffalo_l")
    msg = str(err.value)
    assert "models/insightface/models/buffalo_l/" in msg and "det_10g.onnx" in msg and "w600k_r50.onnx" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_recognition_or_detector_file(face_models, tmp_path):
    only_det = tmp_path / "buffalo_l"
    only_det.mkdir()
    (only_det / "det_10g.onnx").write_bytes((face_models / "buffalo_l/det_10g.onnx").read_bytes())
    with pytest.raises(face_onnx.FaceModelFilesError, match=r"no recognition model.*det_10g.onnx \(detection\)"
                                                            r".*w600k_r50.onnx.*models/insightface/models/buffalo_l/"):
        face_onnx.OnnxFaceAnalysis(only_det)

    only_rec = tmp_path / "antelopev2"
    only_rec.mkdir()
    (only_rec / "glintr100.onnx").write_bytes((face_models / "antelopev2/glintr100.onnx").read_bytes())
    with pytest.raises(face_onnx.FaceModelFilesError, match=r"no detection model.*scrfd_10g_bnkps.onnx.*glintr100.onnx"
                                                            r".*models/insightface/models/antelopev2/"):
        face_onnx.OnnxFaceAnalysis(only_rec)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "det_10g.onnx").write_bytes(b"not a model")
    with pytest.raises(face_onnx.FaceModelFilesError, match="not a loadable ONNX model"):
        face_onnx.OnnxFaceAnalysis(broken)


def test_loader_caches_per_folder_and_provider_and_falls_back_to_cpu(face_models, caplog):
    a = face_onnx.load_onnx_face_analysis(face_models / "buffalo_l", "CPU")
    assert face_onnx.load_onnx_face_analysis(face_models / "buffalo_l", "CPU") is a
    with caplog.at_level(logging.WARNING):
        b = face_onnx.load_onnx_face_analysis(face_models / "buffalo_l", "NoSuchAccelerator")
    assert b is not a and "using the CPU" in caplog.text
    assert b.det_model.session.get_providers() == ["CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------------
# End to end against insightface's FaceAnalysis
# --------------------------------------------------------------------------------------------------
@needs_insightface
@pytest.mark.parametrize("pack", ["buffalo_l", "antelopev2"])
def test_face_analysis_matches_insightface(face_models, images, pack):
    from insightface.utils import face_align as if_align

    ours = face_onnx.OnnxFaceAnalysis(face_models / pack)
    ref = _insightface_analysis(face_models / pack)
    found = worst = 0.0
    for name, image in images.items():
        for size in DET_SIZES:
            ours.prepare(ctx_id=0, det_size=(size, size))
            ref.prepare(ctx_id=0, det_size=(size, size))
            with _no_warning_check():
                expected = ref.get(image)
            got = ours.get(image)
            assert len(got) == len(expected), (name, size)
            found += len(got)
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g.bbox, e.bbox, atol=BOX_TOL, rtol=0)
                np.testing.assert_allclose(g.kps, e.kps, atol=BOX_TOL, rtol=0)
                assert abs(float(g.det_score) - float(e.det_score)) <= SCORE_TOL
                assert g.embedding.shape == e.embedding.shape == (fm.EMBED_DIM,)
                worst = max(worst, _rel(g.embedding, e.embedding))
                assert _rel(g.embedding, e.embedding) <= EMBED_REL_TOL
                np.testing.assert_allclose(g.normed_embedding, e.normed_embedding, atol=EMBED_REL_TOL)
                assert abs(np.linalg.norm(g.normed_embedding) - 1) < 1e-5
                for crop in (112, 224):
                    with _no_warning_check():
                        ref_crop = if_align.norm_crop(image, e.kps, crop)
                    assert np.abs(face_onnx.norm_crop(image, g.kps, crop).astype(int) - ref_crop).max() <= 1
    # The detector finds faces in every image (several per image): every step above was exercised.
    assert found >= 3 * len(images) * len(DET_SIZES) * 0.8


@needs_insightface
def test_recognition_of_the_same_crop_matches_insightface(face_models, images):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    for rel in ("buffalo_l/w600k_r50.onnx", "antelopev2/glintr100.onnx", "variants/rec_mxnet.onnx"):
        ref = ArcFaceONNX(model_file=str(face_models / rel))
        ours = face_onnx.ArcFaceRecognizer(face_onnx.create_session(face_models / rel),
                                           face_models / rel)
        assert (ours.input_mean, ours.input_std) == (ref.input_mean, ref.input_std)
        crops = [np.ascontiguousarray(img[:112, :112]) for img in images.values()]
        for crop in crops:
            assert _rel(ours.get_feat(crop), ref.get_feat(crop)) <= SAME_CROP_REL_TOL
    mx = face_onnx.ArcFaceRecognizer(face_onnx.create_session(face_models / "variants/rec_mxnet.onnx"),
                                     face_models / "variants/rec_mxnet.onnx")
    assert (mx.input_mean, mx.input_std) == (0.0, 1.0)  # normalised inside an MXNet-converted graph


@needs_insightface
@pytest.mark.parametrize("variant,det_size", [("variants/det_5strides.onnx", 640), ("variants/det_5strides.onnx", 384),
                                              ("variants/det_nokps.onnx", 512), ("variants/det_static640.onnx", 320),
                                              ("antelopev2/scrfd_10g_bnkps.onnx", 448)])
def test_detector_layouts_match_insightface_scrfd(face_models, images, variant, det_size):
    from insightface.model_zoo.scrfd import SCRFD as RefSCRFD

    ref = RefSCRFD(model_file=str(face_models / variant))
    ref.prepare(0, input_size=(det_size, det_size), det_thresh=0.5)
    ours = face_detect.SCRFD(face_onnx.create_session(face_models / variant))
    assert ours.use_kps == ref.use_kps and ours.fmc == ref.fmc and ours.batched == ref.batched
    total = 0
    for image in images.values():
        dets, kps = ours.detect(image, (det_size, det_size))
        ref_dets, ref_kps = ref.detect(image)
        assert dets.shape == ref_dets.shape
        total += len(dets)
        np.testing.assert_allclose(dets[:, :4], ref_dets[:, :4], atol=BOX_TOL, rtol=0)
        np.testing.assert_allclose(dets[:, 4], ref_dets[:, 4], atol=SCORE_TOL, rtol=0)
        if ref.use_kps:
            np.testing.assert_allclose(kps, ref_kps, atol=BOX_TOL, rtol=0)
        else:
            assert kps is None
    assert total > 0


def test_detector_without_landmarks_cannot_give_embeddings(face_models, tmp_path, images):
    pack = tmp_path / "buffalo_l"
    pack.mkdir()
    for src, dst in (("variants/det_nokps.onnx", "det.onnx"), ("buffalo_l/w600k_r50.onnx", "w600k_r50.onnx")):
        (pack / dst).write_bytes((face_models / src).read_bytes())
    with pytest.raises(face_onnx.FaceModelFilesError, match="no landmarks"):
        face_onnx.OnnxFaceAnalysis(pack).get(images["landscape"])


# --------------------------------------------------------------------------------------------------
# Through the existing FaceID glue (analyze_faces)
# --------------------------------------------------------------------------------------------------
def _as_image_tensor(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).float().div(255.0)[None]


@needs_insightface
@pytest.mark.parametrize("selection", ["first", "largest"])
def test_analyze_faces_takes_the_onnx_analyser(face_models, images, selection):
    analyser = face_onnx.load_onnx_face_analysis(face_models / "buffalo_l")
    # A small face that scores best beside a larger one: "first" and "largest" pick different faces.
    image = fm.face_image(640, 480, [(180, 200, 16), (450, 250, 55)], seed=6)
    out = faceid.analyze_faces(analyser, _as_image_tensor(image), crop_size=224, selection=selection)
    analyser.prepare(ctx_id=0, det_size=(640, 640))
    faces = analyser.get(image)
    assert len(faces) == 2
    pick = faces[0] if selection == "first" else max(
        faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    if selection == "largest":
        assert pick is not faces[0]
    np.testing.assert_allclose(out.raw[0].numpy(), pick.embedding, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.normed[0].numpy(), pick.normed_embedding, atol=1e-6)
    # analyze_faces crops with insightface's norm_crop; the backend's crop is the same to one level.
    crop = face_onnx.norm_crop(image, pick.kps, 224)[..., ::-1].astype(np.float32) / 255.0
    assert out.crops.shape == (1, 224, 224, 3)
    assert np.abs(out.crops[0].numpy() - crop).max() <= 1.01 / 255


@needs_insightface
def test_analyze_faces_retries_smaller_detection_sizes(face_models, caplog):
    analyser = face_onnx.load_onnx_face_analysis(face_models / "buffalo_l")
    # One face too big for the detector at 640 (radius 100 px), found once the image is scaled down.
    image = fm.face_image(640, 640, [(320, 330, 100)], seed=5)
    analyser.prepare(ctx_id=0, det_size=(640, 640))
    assert analyser.get(image) == []
    with caplog.at_level(logging.INFO):
        out = faceid.analyze_faces(analyser, _as_image_tensor(image), crop_size=112)
    assert out.normed.shape == (1, fm.EMBED_DIM) and "found at detection size" in caplog.text
    assert analyser.det_size == (640, 640)  # left as loaded
    with pytest.raises(faceid.NoFaceError):
        faceid.analyze_faces(analyser, _as_image_tensor(fm.face_image(320, 320, [])), crop_size=112)


def test_face_object_interface(face_models, images):
    analyser = face_onnx.load_onnx_face_analysis(face_models / "buffalo_l")
    analyser.prepare(ctx_id=0, det_size=(640, 640))
    face = analyser.get(images["landscape"])[0]
    assert face.bbox.shape == (4,) and face.kps.shape == (5, 2) and face.bbox.dtype == np.float32
    assert 0.5 <= float(face.det_score) <= 1.0
    assert face["embedding"] is face.embedding
    np.testing.assert_allclose(face.normed_embedding, face.embedding / face.embedding_norm)
    assert analyser.get(images["landscape"], max_num=1)[0].bbox.tolist() == face.bbox.tolist()
    with pytest.raises(ValueError, match="BGR uint8"):
        analyser.get(images["landscape"].astype(np.float32))


def test_without_onnxruntime_the_backend_imports_and_says_what_to_install(face_models, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert not face_onnx.onnxruntime_available()
    with pytest.raises(ImportError, match="pip install onnxruntime"):
        face_onnx.OnnxFaceAnalysis(face_models / "buffalo_l")
