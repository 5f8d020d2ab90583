"""Training with the ImageNet geometry (random-resized crops, resize + centre-crop evaluation): a run
stopped mid-epoch and resumed matches the uninterrupted run bit for bit (windows are per-sample draws)."""
import pytest

from cit_fast.config import load_config
from cit_fast.train.loop import main

SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
         "data.batch_size=32", "optim.epochs=2", "optim.milestones=[1]", "progress=false", "threads=1",
         "data.train_crop=random_resized", "data.image_size=24", "data.eval_resize=28",
         "intervention.plan=stratify_c", "data.synthetic_version=V2"]


def cfg_for(path, *extra):
    return load_config(None, [*SMALL, f"out_dir={path}", *extra])


@pytest.mark.slow
def test_resume_mid_epoch_with_random_resized_crops_is_bitwise_exact(tmp_path):
    full = main(cfg_for(tmp_path / "full"))
    steps = [x for e in full["history"] for x in e["step_losses"]]
    k = 5  # stop inside epoch 1 (7 steps per epoch)
    part = main(cfg_for(tmp_path / "part"), stop_after_steps=k)
    assert part["stopped_at_step"] == k
    resumed = main(cfg_for(tmp_path / "part", "resume=auto"))
    after = [x for e in resumed["history"] for x in e["step_losses"]]
    assert after[-(len(steps) - k):] == steps[k:]  # bitwise equal on the CPU
    assert resumed["test_top1"] == full["test_top1"]
    # the crops change what the model sees: not the whole-image run
    plain = main(load_config(None, [*[a for a in SMALL if not a.startswith(("data.train_crop", "data.eval_resize"))],
                                    f"out_dir={tmp_path / 'plain'}"]))
    assert [x for e in plain["history"] for x in e["step_losses"]] != steps
