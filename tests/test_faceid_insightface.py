"""The insightface glue: optional import, model folders (extra paths, the nested antelopev2 folder),
loading errors, detection retries, face selection, aligned crops, and the Unified Loader FaceID.

insightface is installed in the test environment when the machine can install it (it is not a runtime
dependency); its model files (buffalo_l, antelopev2: hundreds of MB, downloaded by hand) never are.
So the real package is used for what needs no weights: the import, ``FaceAnalysis`` construction
failing on a bad model folder, and ``face_align.norm_crop``. Detection itself is done by
``StandInAnalyser``, a small object with FaceAnalysis's interface (``prepare(ctx_id, det_size)``,
``get(bgr_image) -> faces`` with ``.bbox``, ``.kps``, ``.embedding``, ``.normed_embedding``), because no
face model files exist here.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import folder_paths

from harness import executor
from ipadapter_next.ipadapter import faceid, insightface_glue
from ipadapter_next.node_defs import faceid as faceid_nodes

E = 16
ARCFACE_224 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32) * 2  # the alignment template at 224 px


@pytest.fixture(scope="module", autouse=True)
def _single_thread(torch_single_thread):
    yield


class StandInFace:
    def __init__(self, bbox, embedding, kps=ARCFACE_224):
        self.bbox = np.asarray(bbox, dtype=np.float32)
        self.kps = np.asarray(kps, dtype=np.float32)
        self.embedding = np.asarray(embedding, dtype=np.float32)

    @property
    def normed_embedding(self):
        return self.embedding / np.linalg.norm(self.embedding)


class StandInAnalyser:
    """FaceAnalysis's interface; finds ``faces`` only at detection sizes <= ``finds_at``."""

    def __init__(self, faces, finds_at=640):
        self.faces, self.finds_at = faces, finds_at
        self.det_size, self.tried, self.images = 640, [], []

    def prepare(self, ctx_id=0, det_size=(640, 640)):
        self.det_size = det_size[0]

    def get(self, img):
        self.tried.append(self.det_size)
        self.images.append(img)
        return list(self.faces) if self.det_size <= self.finds_at else []


def face(seed, bbox=(10, 10, 60, 60)):
    return StandInFace(bbox, np.random.default_rng(seed).normal(size=E) * 5)


needs_insightface = pytest.mark.skipif(importlib.util.find_spec("insightface") is None,
                                       reason="insightface is not installable on this machine")


# --------------------------------------------------------------------------------------------------
# Optional import
# --------------------------------------------------------------------------------------------------
def test_without_insightface_the_pack_loads_and_detection_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # import insightface -> ImportError
    importlib.reload(faceid_nodes)  # the node module imports without it
    with pytest.raises(insightface_glue.InsightFaceMissingError,
                       match="pip install insightface onnxruntime.*onnxruntime backend.*face_embeds"):
        insightface_glue.import_insightface()
    with pytest.raises(insightface_glue.InsightFaceMissingError):
        insightface_glue.load_face_analysis("buffalo_l", backend="insightface")
    # "auto" falls back to the pack's own onnxruntime pipeline, which needs only the model files.
    assert insightface_glue.resolve_backend("auto") == "onnxruntime"
    assert "IPAdapterFaceID" in faceid_nodes.NODES


# --------------------------------------------------------------------------------------------------
# Model folders
# --------------------------------------------------------------------------------------------------
def _pack(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "det_10g.onnx").write_bytes(b"not a real model")
    return folder


def test_models_insightface_is_registered_and_extra_model_paths_are_searched(tmp_path, models_dir):
    roots = insightface_glue.insightface_roots()
    assert Path(folder_paths.models_dir) / "insightface" in roots
    extra = tmp_path / "elsewhere"
    folder_paths.add_model_folder_path("insightface", str(extra))
    try:
        pack = _pack(extra / "models" / "buffalo_l")
        assert insightface_glue.find_model_dir("buffalo_l") == pack
    finally:
        folder_paths.folder_names_and_paths["insightface"][0].remove(str(extra))


def test_the_nested_antelopev2_folder_left_by_unzipping_is_found(tmp_path):
    nested = _pack(tmp_path / "models" / "antelopev2" / "antelopev2")
    assert insightface_glue.find_model_dir("antelopev2", [tmp_path]) == nested


def test_missing_model_files_name_every_folder_tried_and_the_fix(tmp_path):
    with pytest.raises(insightface_glue.FaceModelMissingError) as err:
        insightface_glue.find_model_dir("antelopev2", [tmp_path])
    message = str(err.value)
    assert str(tmp_path / "models" / "antelopev2") in message and "nothing is downloaded automatically" in message
    assert "scrfd_10g_bnkps.onnx" in message and "glintr100.onnx" in message  # the files FaceID needs


@needs_insightface
def test_real_insightface_with_model_files_absent_gives_a_clear_error(tmp_path):
    with pytest.raises(insightface_glue.FaceModelMissingError, match="'buffalo_l' not found"):
        insightface_glue.load_face_analysis("buffalo_l", "CPU", roots=[tmp_path])


@needs_insightface
def test_real_insightface_on_a_damaged_model_folder_is_wrapped_with_the_folder_named(tmp_path):
    pack = _pack(tmp_path / "models" / "buffalo_l")
    with pytest.raises(insightface_glue.FaceModelMissingError, match=f"could not load 'buffalo_l' from {pack}"):
        insightface_glue.load_face_analysis("buffalo_l", "CPU", roots=[tmp_path])


def test_the_unified_loaders_insightface_entry_reuses_a_matching_analyser_and_keeps_a_failure(monkeypatch):
    loaded = {"provider": "CPU", "name": "buffalo_l", "model": StandInAnalyser([])}
    assert insightface_glue.face_analysis_entry(loaded, "buffalo_l", "CPU") is loaded  # chained: not loaded again
    monkeypatch.setitem(sys.modules, "insightface", None)  # another provider has to load: insightface is missing
    entry = insightface_glue.face_analysis_entry(loaded, "buffalo_l", "CUDA", backend="insightface")
    assert entry["model"] is None and isinstance(entry["error"], insightface_glue.InsightFaceMissingError)
    assert (entry["provider"], entry["name"], entry["backend"]) == ("CUDA", "buffalo_l", "insightface")
    # Nothing to reuse: the failure is kept for the FaceID node too, not raised here ("auto" chose
    # onnxruntime, which finds no antelopev2 files in the fixture models).
    fresh = insightface_glue.face_analysis_entry(None, "antelopev2", "CPU")
    assert fresh["model"] is None and isinstance(fresh["error"], insightface_glue.FaceModelMissingError)


# --------------------------------------------------------------------------------------------------
# Detection (stand-in analyser) and alignment (real insightface)
# --------------------------------------------------------------------------------------------------
@needs_insightface
def test_detection_retries_at_smaller_sizes_and_returns_aligned_rgb_crops():
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    analyser = StandInAnalyser([face(1)], finds_at=448)
    faces = faceid.analyze_faces(analyser, image, crop_size=224)
    assert analyser.tried == [640, 576, 512, 448]
    assert analyser.det_size == 640  # left as loaded
    # insightface got BGR uint8; the template landmarks at 224 make the alignment the identity.
    np.testing.assert_array_equal(analyser.images[0][..., 0], (image[0, ..., 2] * 255).round().byte().numpy())
    assert faces.crops.shape == (1, 224, 224, 3)
    torch.testing.assert_close(faces.crops, image, rtol=0, atol=1 / 255 + 1e-6)
    torch.testing.assert_close(faces.raw[0], torch.tensor(face(1).embedding))
    torch.testing.assert_close(faces.normed[0], torch.tensor(face(1).normed_embedding))


@needs_insightface
def test_first_face_by_default_largest_on_request():
    small, large = face(1, bbox=(0, 0, 20, 20)), face(2, bbox=(0, 0, 90, 80))
    image = torch.rand(1, 112, 112, 3)
    first = faceid.analyze_faces(StandInAnalyser([small, large]), image, crop_size=112)
    largest = faceid.analyze_faces(StandInAnalyser([small, large]), image, crop_size=112, selection="largest")
    torch.testing.assert_close(first.raw[0], torch.tensor(small.embedding))
    torch.testing.assert_close(largest.raw[0], torch.tensor(large.embedding))


@needs_insightface
def test_no_face_names_the_image_and_the_sizes_tried():
    class FaceOnlyInFirst(StandInAnalyser):
        def get(self, img):
            return [face(1)] if len(self.images) == 0 and not self.images.append(img) else []

    with pytest.raises(faceid.NoFaceError, match=r"image 1 of 2 .*640, 576, 512, 448, 384, 320"):
        faceid.analyze_faces(FaceOnlyInFirst([]), torch.rand(2, 100, 100, 3))


def test_crop_size_insightface_cannot_align_is_refused():
    with pytest.raises(faceid.FaceIDError, match="multiples of 112 or 128"):
        faceid.analyze_faces(StandInAnalyser([face(1)]), torch.rand(1, 64, 64, 3), crop_size=230)


@needs_insightface
def test_faceid_node_detects_with_the_analyser_and_outputs_the_face_crops(models_dir):
    from ipadapter_next.ipadapter.adapter import load_adapter

    adapter = load_adapter(models_dir / "ipadapter" / "ip-adapter-faceid_sd15.safetensors")
    import nodes

    (model,) = nodes.CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:1]
    image = torch.rand(1, 224, 224, 3)
    with torch.inference_mode():  # as ComfyUI runs nodes
        patched, face_image = faceid_nodes.IPAdapterFaceID().apply_ipadapter(
            model, adapter, image, 1.0, 1.0, "linear", "concat", 0.0, 1.0, "V only",
            insightface=StandInAnalyser([face(3)]))
    assert face_image.shape == (1, 224, 224, 3)
    assert patched is not model


# --------------------------------------------------------------------------------------------------
# Unified Loader FaceID
# --------------------------------------------------------------------------------------------------
def unified_graph(preset: str, lora_strength: float = 0.6, prefix: str = "unified_faceid") -> dict:
    prompt = executor.workflow_plain_sd15(seed=3, filename_prefix=prefix)
    prompt["10"] = {"class_type": "IPAdapterUnifiedLoaderFaceID", "inputs": {
        "model": ["1", 0], "preset": preset, "lora_strength": lora_strength, "provider": "CPU"}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": "unified_face.png"}}
    prompt["14"] = {"class_type": "IPAdapterFaceEmbedsLoad", "inputs": {"face_embeds": "unified.face.safetensors"}}
    prompt["13"] = {"class_type": "IPAdapterFaceID", "inputs": {
        "model": ["10", 0], "ipadapter": ["10", 1], "image": ["12", 0], "weight": 1.0, "weight_faceidv2": 1.0,
        "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only", "face_embeds": ["14", 0]}}
    prompt["5"]["inputs"]["model"] = ["13", 0]
    return prompt


@pytest.fixture
def tiny_encoders_known():
    """The tiny fixture encoders count as real ones for the presets' file search (tensor widths)."""
    from harness.widths import TINY_WIDTHS
    from ipadapter_next.ipadapter import encoders

    with encoders.widths_registered(TINY_WIDTHS):
        yield


def test_unified_loader_faceid_loads_the_preset_applies_its_lora_and_feeds_the_faceid_node(models_dir, tiny_encoders_known):
    from PIL import Image

    inputs = Path(folder_paths.get_input_directory())
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(inputs / "unified_face.png")
    faceid.save_face_embeds(faceid.FaceEmbeds.from_tensor(torch.randn(1, E)), inputs / "unified.face.safetensors")
    with_lora = executor.run_prompt(unified_graph("FACEID PLUS V2", 0.6, "uni_lora")).raise_for_error().image_tensors()[0]
    no_lora = executor.run_prompt(unified_graph("FACEID PLUS V2", 0.0, "uni_nolora")).raise_for_error().image_tensors()[0]
    assert (with_lora - no_lora).abs().mean() > 1e-3  # the LoRA changed the UNet

    (model,) = __import__("nodes").CheckpointLoaderSimple().load_checkpoint("tiny_sd15.safetensors")[:1]
    loader = faceid_nodes.IPAdapterUnifiedLoaderFaceID()
    patched, pipeline = loader.load_models(model, "FACEID", 0.6, "CPU")
    assert pipeline["ipadapter"]["file"].endswith("faceid_sd15.safetensors") or "faceid_sd15" in pipeline["ipadapter"]["file"]
    assert len(patched.patches) == 4 * 2 * 16 and not model.patches
    assert pipeline["faceid_v2"] is False
    # Chained: the same file is not loaded again, and the analyser entry is reused.
    _, chained = loader.load_models(model, "FACEID", 0.6, "CPU", ipadapter=pipeline)
    assert chained["ipadapter"]["model"] is pipeline["ipadapter"]["model"]
