"""Randomly initialised stand-ins for the pretrained backbones discover/bench/perceptual.py loads from
the torch hub cache, saved under the exact file names the real loaders look for (the real
weights cannot be had offline; DESIGN.md section 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HUB_FILES = ("weights-inception-2015-12-05-6726825d.pth", "alexnet-owt-7be5be79.pth",
             "vgg16-397923af.pth")


# -- fake weights -------------------------------------------------------------------------------

def _torchvision_state_dict(builder) -> dict:  # noqa: ANN001
    """Same keys and shapes as the torchvision checkpoint: random (Kaiming) conv layers, the
    classifier (unused by LPIPS/DISTS, 95 % of the bytes) as stride-0 zeros so the file is small."""
    with torch.device("meta"):
        meta = builder(weights=None)
    sd = {}
    for key, v in meta.state_dict().items():
        if key.startswith("features.") and key.endswith(".weight"):
            w = torch.empty(v.shape)
            torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
            sd[key] = w
        elif key.startswith("features."):
            sd[key] = torch.zeros(v.shape)
        else:
            sd[key] = torch.zeros(()).expand(v.shape)
    return sd


def _inception_state_dict() -> dict:
    """torch-fidelity's InceptionV3, built without loading any weights, convs re-initialised
    (Kaiming) so activations keep their scale through the 90-odd layers."""
    from torch_fidelity import feature_extractor_inceptionv3 as fi

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fi, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    return net.state_dict()


def write_weights(checkpoints: Path, files: tuple[str, ...] = HUB_FILES) -> None:
    """Write the stand-ins named in ``files`` (default: all three) into ``checkpoints``."""
    from torchvision.models import alexnet, vgg16

    checkpoints.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if HUB_FILES[0] in files:
            torch.save(_inception_state_dict(), checkpoints / HUB_FILES[0])
        if HUB_FILES[1] in files:
            torch.save(_torchvision_state_dict(alexnet), checkpoints / HUB_FILES[1])
        if HUB_FILES[2] in files:
            torch.save(_torchvision_state_dict(vgg16), checkpoints / HUB_FILES[2])
