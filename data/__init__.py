"""Images on disk and the formats both phases share: readers, manifest, ROI cache, datasets."""
