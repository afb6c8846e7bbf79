"""Data: FER2013 CSV reading, preparation, caches, datasets and augmentation."""
