"""The ML stack runs on CPU.

PyPI's torchvision is a CUDA build; with the CPU torch it only loads after
tools/torchvision_cpu_fix.py (run by make setup). compressai imports torchvision.
"""

import pytest

torch = pytest.importorskip("torch", reason="torch comes with the 'learned' and 'models' extras")


def test_torchvision_nms_on_cpu():
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_faster_rcnn_forward_with_random_weights_on_cpu():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=128
    ).eval()
    with torch.no_grad():
        (out,) = model(torch.rand(1, 3, 128, 128))
    assert set(out) >= {"boxes", "labels", "scores"}
    assert out["boxes"].shape[-1] == 4
    assert out["boxes"].device.type == "cpu"


# compressai uses torch.jit.script, which torch 2.13 deprecates.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_compressai_imports_with_its_entropy_coder():
    import compressai

    assert "ans" in compressai.available_entropy_coders()
