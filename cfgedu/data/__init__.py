"""Datasets as DataSources for the training engine: `batch(step, micro, rank, world_size, size) -> (x, c)`.

Modules here import their heavy dependencies (scikit-learn, numpy files) only when a dataset is built.
"""
