"""Datasets: data yaml resolution, label cache, the training dataset and its loader, augmentations,
inference sources and the embedded synthetic data."""
