"""Data: the data sets by name, their file formats, downloads and on-device augmentation."""
