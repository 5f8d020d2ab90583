"""Generated data: the embedded CIT benchmark (``benchmark``), the synthetic multi-label sets
(``multilabel``, ``scenes``) and real photos with hand-drawn outlines (``sample_photos``)."""
