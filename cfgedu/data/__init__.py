"""Data sources for the training engine (the contract in source.py): the toy mixture, scikit-learn's digits and
ImageNet 64x64 (prepared once by imagenet64_convert.py into memory-mapped arrays)."""
