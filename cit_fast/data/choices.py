"""The data layer's vocabulary: the values its config keys take (``intervention.plan``,
``data.train_crop``, ``data.mix``). Plain tuples, no imports: the config reads them from here, so
the data layer owns its choices and never imports the config."""

PLANS = ("none", "stratify_c", "stratify_b", "random")
TRAIN_CROPS = ("resize", "random_resized")
MIX_MODES = ("none", "mixup", "cutmix")
