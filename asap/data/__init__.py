"""Datasets: readers of the raw data (facades, cityscapes, nyu, folders) and the prepared form that
training reads (prepared: DatasetInfo, PreparedDataset). Preparation (common.prepare) is torch-free."""
