"""Data: FER2013 CSV reading, FER+ labels, class folders and RAF-DB, preparation, caches, datasets
and augmentation."""
