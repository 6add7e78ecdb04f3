"""LAR: laryngeal endoscopic tissue patches in four classes and three given folds."""

from data.lar.lar_dataset_builder import Builder

__all__ = ["Builder"]
