"""FaceID end to end without the insightface package: the pack's onnxruntime backend detects the face.

insightface is hidden (``sys.modules["insightface"] = None``, so importing it fails as when it is not
installed) and the ONNX stand-in models of ``harness.face_onnx_models`` (real input/output layout, the
tiny adapters' face width) sit in ``models/insightface/models/<pack>/``. The IPAdapter InsightFace
Loader on "auto" then loads the onnxruntime backend, and FaceID, FaceID-Plus v2 and Portrait run as
workflows; Kolors FaceID runs at library level (ComfyUI has no Kolors model; see test_faceid.py).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import folder_paths

from harness import executor, face_onnx_models
from ipadapter_next.ipadapter import face_onnx, faceid, insightface_glue
from support import sample
from test_faceid import clip_for, faceid_graph, image_of, kolors_unet, tiny_faceid, tiny_widths  # noqa: F401

FACE = "onnx_backend_face.png"
PACKS = ("buffalo_l", "antelopev2")


@pytest.fixture(scope="module")
def face_models(models_dir):
    """The stand-in packs in the runtime's insightface folder, and a face image in input/."""
    built = face_onnx_models.ensure_face_models() / "tiny_width"
    root = Path(folder_paths.get_folder_paths("insightface")[0]) / "models"
    for pack in PACKS:
        face_onnx_models.copy_pack(built / pack, root / pack)
    bgr = face_onnx_models.face_image(320, 320, [(160, 170, 70)], seed=3)
    Image.fromarray(np.ascontiguousarray(bgr[..., ::-1])).save(Path(folder_paths.get_input_directory()) / FACE)
    yield root
    for pack in PACKS:
        shutil.rmtree(root / pack, ignore_errors=True)


@pytest.fixture
def without_insightface(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)
    assert insightface_glue.resolve_backend("auto") == "onnxruntime"


def onnx_graph(ipadapter_file, *, ckpt, weight=1.0, prefix, backend="auto"):
    prompt = faceid_graph(ipadapter_file, ckpt=ckpt, weight=weight, prefix=prefix)
    prompt["12"]["inputs"]["image"] = FACE
    del prompt["14"]
    prompt["16"] = {"class_type": "IPAdapterInsightFaceLoader",
                    "inputs": {"provider": "CPU", "model_name": "buffalo_l", "backend": backend}}
    inputs = prompt["13"]["inputs"]
    del inputs["face_embeds"]
    inputs["insightface"] = ["16", 0]
    return prompt


@pytest.mark.parametrize("ipadapter_file, ckpt", [
    ("ip-adapter-faceid_sd15.bin", "tiny_sd15.safetensors"),
    ("ip-adapter-faceid-plusv2_sd15.safetensors", "tiny_sd15.safetensors"),
    ("ip-adapter-faceid-portrait_sd15.safetensors", "tiny_sd15.safetensors"),
])
def test_faceid_workflows_run_with_only_onnxruntime(ipadapter_file, ckpt, face_models, without_insightface, tiny_widths):
    stem = Path(ipadapter_file).stem
    plain = image_of(executor.run_prompt(onnx_graph(ipadapter_file, ckpt=ckpt, weight=0.0, prefix=f"onnx_{stem}_w0")))
    result = executor.run_prompt(onnx_graph(ipadapter_file, ckpt=ckpt, prefix=f"onnx_{stem}"))
    image = image_of(result)
    assert image.shape == plain.shape and (image - plain).abs().mean() > 0.005


def test_the_loader_gives_the_onnx_backend_and_its_embedding_is_what_the_adapter_reads(face_models, without_insightface):
    analyser = insightface_glue.load_face_analysis("buffalo_l", "CPU")
    assert isinstance(analyser, face_onnx.OnnxFaceAnalysis)
    image = torch.from_numpy(np.array(Image.open(Path(folder_paths.get_input_directory()) / FACE))).float()[None] / 255
    faces = faceid.analyze_faces(analyser, image, crop_size=224)
    assert faces.normed.shape == (1, 16) and torch.allclose(faces.normed.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert faces.crops.shape == (1, 224, 224, 3)
    # The same face through the backend directly, at the first detection size that finds it: the
    # embedding FaceID uses is that face's.
    bgr = np.ascontiguousarray((image[0].numpy() * 255).round().astype(np.uint8)[..., ::-1])
    for size in insightface_glue.DET_SIZES:
        analyser.prepare(ctx_id=0, det_size=(size, size))
        found = analyser.get(bgr)
        if found:
            break
    analyser.prepare(ctx_id=0, det_size=(insightface_glue.DET_SIZES[0],) * 2)
    assert found and np.allclose(faces.raw[0].numpy(), found[0].embedding, atol=1e-6)


def test_kolors_faceid_runs_with_only_onnxruntime(face_models, without_insightface):
    adapter = tiny_faceid("Kolors-IP-Adapter-FaceID-Plus")
    analyser = insightface_glue.load_face_analysis("antelopev2", "CPU")
    image = torch.from_numpy(np.array(Image.open(Path(folder_paths.get_input_directory()) / FACE))).float()[None] / 255
    model, crops = faceid.apply_faceid(kolors_unet(), adapter, image=image, insightface=analyser,
                                       clip_vision=clip_for(adapter), weight_kolors=1.0)
    assert crops.shape[1:3] == (336, 336)  # Kolors aligns at its encoder's size
    assert torch.isfinite(sample(model, "sdxl")).all()


def test_an_explicit_insightface_choice_without_the_package_says_what_to_install(face_models, without_insightface):
    with pytest.raises(insightface_glue.InsightFaceMissingError, match="onnxruntime backend"):
        insightface_glue.load_face_analysis("buffalo_l", "CPU", backend="insightface")
    with pytest.raises(insightface_glue.FaceIDError, match="unknown face analysis backend"):
        insightface_glue.load_face_analysis("buffalo_l", "CPU", backend="dlib")
