"""Train the learned region codec (seed §3.4): stage I rate-distortion, stage II masked latents.

Defaults train the shipped small model, one checkpoint with a rate point per lambda, into
``sdk/codecs/learned/checkpoints/small``, on frames 0-499 of OpenCV's vtest.avi
(``apt-get install opencv-doc``) plus scikit-image's photos when it is installed. vtest.avi
frames 500 on are the evaluation split and are never read, whatever --last says.

    discover train codec --size small --steps1 20000 --steps2 5000
    discover train codec --stages II --init sdk/codecs/learned/checkpoints/small
    discover train codec --size tiny --steps1 200 --steps2 50 --crop 64 --out /tmp/ck

Progress lines go to stderr; ``--json`` prints a one-line summary on stdout at the end.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """Training data and bookkeeping options (shared with discover/train/control.py)."""
    from discover.sdk.codecs.learned.training import VTEST

    ap.add_argument("--video", type=Path, action="append",
                    help=f"training video (default {VTEST}, frames 0-499)")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--last", type=int, default=499,
                    help="last frame (vtest.avi is capped at 499: 500 on is the evaluation split)")
    ap.add_argument("--stride", type=int, default=2, help="take every n-th frame")
    ap.add_argument("--images", type=Path, action="append", help="folder of extra stills")
    ap.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's photos")
    ap.add_argument("--opencv-photos", action="store_true",
                    help="add the 27 natural stills of OpenCV's sample data the shipped "
                         "checkpoint trained on (never the benchmark's held-out ones)")
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from discover.sdk.codecs.learned.checkpoint import CHECKPOINT_ROOT
    from discover.sdk.codecs.learned.training import DEFAULT_LAMBDAS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="small", choices=["tiny", "small", "paper"])
    ap.add_argument("--lmbda", type=float, action="append",
                    help=f"rate-distortion trade-off of one rate point; repeat for several "
                         f"(default {' '.join(map(str, DEFAULT_LAMBDAS))})")
    ap.add_argument("--name", help="checkpoint folder name under --out (default: the size)")
    ap.add_argument("--stages", default="I,II,T",
                    help="any of I (rate-distortion), II (masked latents), T (residual model "
                         "for temporal coding, boxes from the nanodet grounder); default I,II,T")
    ap.add_argument("--pairs", type=int, default=40,
                    help="consecutive frame pairs stage T fits on (default 40)")
    ap.add_argument("--steps1", type=int, default=20000, help="stage I steps")
    ap.add_argument("--steps2", type=int, default=5000, help="stage II steps")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256, help="crop size, a multiple of 64")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr2", type=float, default=5e-5, help="stage II learning rate")
    ap.add_argument("--mask-max", type=float, default=0.5,
                    help="stage II masks up to this share of the latent (default 0.5)")
    ap.add_argument("--init", type=Path, help="start from this checkpoint folder")
    ap.add_argument("--out", type=Path, required=True,
                    help="folder for the new checkpoint (a subfolder --name, default the size); "
                         f"never the shipped one under {CHECKPOINT_ROOT}")
    add_data_arguments(ap)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", action="store_true", help="one-line JSON summary on stdout")
    return ap


def detection_boxes():  # noqa: ANN201 - returns training.BoxesFn
    """Boxes the detection task would code: the default grounder (nanodet) with the shipped
    detection profile's labels, padded like the edge does."""
    from discover.edge.config import EdgeSection
    from discover.sdk.grounders import GROUNDERS
    from discover.sdk.profiles import load_profile
    from discover.sdk.regions import pad_and_clip

    edge = EdgeSection()
    g = GROUNDERS.create(edge.grounder)
    labels = list(load_profile("detection").labels)

    def boxes(img):  # noqa: ANN001, ANN202
        h, w = img.shape[:2]
        out = []
        for d in g.ground(img, labels):
            if d.score >= edge.grounder.min_score:
                b = pad_and_clip(d.box, edge.grounder.margin, w, h, 16)
                if b is not None:
                    out.append(b)
        return out

    return boxes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from discover.sdk.codecs.learned.training import (
            DEFAULT_LAMBDAS,
            VTEST,
            TrainConfig,
            VideoSource,
            train_codec,
        )
    except ImportError as e:
        print(f"error: training needs torch and compressai ({e}): "
              "pip install 'discover-sdk[learned]'", file=sys.stderr)
        return 2
    videos = [VideoSource(p, args.first, args.last, args.stride) for p in (args.video or [VTEST])]
    cfg = TrainConfig(
        size=args.size, lambdas=tuple(args.lmbda or DEFAULT_LAMBDAS),
        stages=tuple(s.strip() for s in args.stages.split(",") if s.strip()),
        steps_stage1=args.steps1, steps_stage2=args.steps2, batch=args.batch, crop=args.crop,
        lr=args.lr, lr_stage2=args.lr2, mask_max=args.mask_max, out=args.out,
        name=args.name, init=args.init,
        save_every=args.save_every, log_every=args.log_every, seed=args.seed,
        device=args.device, threads=args.threads, videos=videos, images=args.images or [],
        use_skimage=not args.no_skimage, temporal_pairs=args.pairs,
        opencv_photos=args.opencv_photos)
    from discover.train._cli import run_training

    def train(log: Callable[[str], None]) -> dict[str, Any]:
        boxes_fn = detection_boxes() if "T" in cfg.stages else None
        return train_codec(cfg, log=log, boxes_fn=boxes_fn)

    return run_training(train, args.json)


if __name__ == "__main__":
    sys.exit(main())
