"""SparK-style masked image modelling with differentiated ROI masking."""
