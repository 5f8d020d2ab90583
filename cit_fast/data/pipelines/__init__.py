"""Pipelines: the contract and ``compose`` (``contract``), the torch and DALI implementations, the typed
batches they emit (``batch``) and batch ops such as Mixup / CutMix (``mix``)."""
