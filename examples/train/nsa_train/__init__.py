"""nsa-train: a small decoder-only LM trained with NSA or dense attention (examples/train/README.md).

`python examples/train/train.py --config examples/train/configs/tiny.yaml --set train.steps=20`
"""
