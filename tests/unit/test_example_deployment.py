"""configs/example-deployment.yaml is what a new deployment copies: it parses as the file
``discover edge --config`` reads, names the edge's actual defaults (nanodet, tracking, the
``video`` codec), and its commented person-task alternative (SVT-AV1) codes a frame."""

from __future__ import annotations

import numpy as np
import yaml
from discover.sdk.codecs import CODECS
from discover.sdk.resources import config_path

from discover.config import Deployment

EXAMPLE = config_path("example-deployment.yaml")


def codes_a_frame(section: dict) -> int:
    codec = CODECS.create(section)
    codec.start(["detection"], 10.0)
    frame = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    coded = codec.compress(frame, [], False)
    codec.close()
    return len(coded.tasks["detection"])


def test_the_example_parses_and_names_the_defaults():
    d = Deployment.model_validate(yaml.safe_load(EXAMPLE.read_text()))
    defaults = Deployment.model_validate({})
    assert d.edge.grounder.type == defaults.edge.grounder.type == "nanodet"
    assert d.edge.codec.type == defaults.edge.codec.type == "video"
    assert d.edge.tracking.every == defaults.edge.tracking.every
    assert codes_a_frame(d.edge.codec.model_dump()) > 0


def test_the_commented_av1_alternative_is_a_valid_codec_section():
    text = EXAMPLE.read_text()
    assert "    # encoder: av1" in text
    text = text.replace("    encoder: hevc", "    # encoder: hevc").replace(
        "    # encoder: av1", "    encoder: av1")
    c = Deployment.model_validate(yaml.safe_load(text)).edge.codec
    assert c.encoder == "av1"
    assert codes_a_frame(c.model_dump()) > 0
    boosted = Deployment.model_validate(yaml.safe_load(text.replace(
        "    # params: enable-variance-boost=1", "    params: enable-variance-boost=1"))).edge.codec
    assert boosted.params == "enable-variance-boost=1"
    assert codes_a_frame(boosted.model_dump()) > 0
