"""Media and weights shipped with the SDK (each folder has its licence notice)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
SAMPLE_CLIP = ASSETS / "sample" / "street.mp4"
