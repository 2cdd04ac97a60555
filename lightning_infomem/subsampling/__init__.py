"""Feldman-Zhang subsampled memorization and influence: train many models on random subsets, then estimate.

`train_on_subsets` (the runner) trains the models and writes one record per model; `load_records`
and `SubsampleRecords` (the records) read them back and compute the estimates.
"""

from lightning_infomem.subsampling.records import RecordError, SubsampleRecords, load_records
from lightning_infomem.subsampling.runner import Builder, subset_mask, train_on_subsets

__all__ = ["Builder", "RecordError", "SubsampleRecords", "load_records", "subset_mask", "train_on_subsets"]
