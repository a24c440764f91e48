"""Shared pieces of the LEAD pipeline: data, augmentation, models, losses, training, metrics, the Hub."""
