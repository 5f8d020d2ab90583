"""Intervention plans: for every sample, its context partner (``intervention``), and decode-reuse
batches whose partners sit in the same batch (``balanced``)."""
