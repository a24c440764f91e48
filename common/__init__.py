"""Shared pieces of the LEAD pipeline: data, augmentation, metrics (and, later, models and losses)."""
