"""Text-guided ROI localization (BiomedCLIP + SAM) into the ROI cache."""
