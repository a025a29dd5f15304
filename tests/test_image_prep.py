"""PrepImageForClipVision gives the old extension's pixels exactly.

The old node cropped, then converted each image to PIL with torchvision's ``ToPILImage`` (``x * 255``
truncated to uint8), resized with PIL and converted back with ``ToTensor`` (``/ 255``). The reference
below is that sequence, written with torchvision's own functions.
"""
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import nodes


def old_prep(image: torch.Tensor, interpolation: str, crop_position: str) -> torch.Tensor:
    _, h, w, _ = image.shape
    s = min(h, w)
    y = {"top": 0, "bottom": h - s}.get(crop_position, (h - s) // 2)
    x = {"left": 0, "right": w - s}.get(crop_position, (w - s) // 2)
    out = []
    for img in image.permute(0, 3, 1, 2)[:, :, y:y + s, x:x + s]:
        pil = TF.to_pil_image(img).resize((224, 224), resample=Image.Resampling[interpolation])
        out.append(TF.to_tensor(pil))
    return torch.stack(out).permute(0, 2, 3, 1)


@pytest.mark.parametrize("interpolation,crop_position", [("LANCZOS", "top"), ("BICUBIC", "center"), ("NEAREST", "right")])
def test_prep_image_reproduces_the_old_node_exactly(interpolation, crop_position):
    image = torch.rand(2, 260, 300, 3, generator=torch.Generator().manual_seed(7))
    (out,) = nodes.NODE_CLASS_MAPPINGS["PrepImageForClipVision"]().prep_image(image, interpolation, crop_position, 0.0)
    assert torch.equal(out, old_prep(image, interpolation, crop_position))


def test_rounding_instead_of_truncating_would_be_caught():
    """The reference distinguishes the two conversions on this image (so the test above can fail)."""
    image = torch.rand(1, 260, 300, 3, generator=torch.Generator().manual_seed(7))
    rounded = (image * 255).round() / 255
    assert not torch.equal(old_prep(rounded, "LANCZOS", "top"), old_prep(image, "LANCZOS", "top"))
