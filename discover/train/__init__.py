"""Training and export: the learned codec, the diffusion control module, the ONNX edge half
(`discover train ...`, `discover export codec`)."""
