"""cit_fast: distributed causal interventional training for image recognition."""
__version__ = "0.1.0"
