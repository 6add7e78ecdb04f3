"""BG: breast carcinoma histological images in three grades (Zenodo record 834910)."""

from data.bg.bg_dataset_builder import Builder

__all__ = ["Builder"]
