"""fertool: facial expression recognition with LHC-Net.

The data flows one way: CSV -> prepared images -> dataset/augmentation -> model ->
train / evaluate / ablate -> reports.  Each step is a plain library function; the
``fertool.cli`` package only parses options and renders results.
"""

__version__ = "0.1.0"

#: FER2013 label order: the index is the ``emotion`` column of the CSV.
CLASS_NAMES: tuple[str, ...] = (
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
    "Neutral",
)
