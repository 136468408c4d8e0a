"""The masking-strategy study: every phase run as a subprocess over a grid of arms and seeds, then a report."""
