"""A run that diverges stops with one line and exit code 3, never writes a non-finite checkpoint, and
is never resumed from one; an fp16 step the loss scaler skips is not a failure; an exploding loss
gets one warning. The injection wraps the loop's ``compute_loss`` (the loop knows nothing of it)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cit_fast.train.divergence as divergence
import cit_fast.train.loop as loop
from cit_fast import checkpoint as ckpt
from cit_fast.cli import main as cli
from cit_fast.config import load_config
from cit_fast.train.distributed import DistEnv
from cit_fast.train.divergence import EXIT_CODE, Diverged, DivergenceWatch
from cit_fast.train.loop import Trainer, main

# 240 samples / 32 = 7 steps per epoch
SMALL = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
         "data.batch_size=32", "optim.epochs=2", "progress=false", "threads=1"]


def args_for(out, *extra):
    return [*SMALL, f"out_dir={out}", *extra]


def inject(monkeypatch, at=None, times=None, scale=None, factor=float("nan"), every=False):
    """Wrap compute_loss: record every loss (detached, before the injection); micro-step ``at``
    (1-based) gets loss * ``factor`` (nan; or a large finite factor, whose gradients overflow under a
    loss scaler); from micro-step ``times`` on, the loss reads ``scale`` times higher (its gradient
    unchanged, so training goes on as before). every: ``factor`` at micro-step ``at`` and every one after."""
    seen = []
    original = loop.compute_loss

    def compute_loss(model, batch, criterion=None):
        loss = original(model, batch, criterion)
        seen.append(loss.detach().clone())
        if at is not None and (len(seen) == at or every and len(seen) > at):
            return loss * factor
        if times is not None and len(seen) >= times:
            return loss + (scale - 1) * loss.detach()
        return loss

    monkeypatch.setattr(loop, "compute_loss", compute_loss)
    return seen


def stopped_lines(err: str):
    return [l for l in err.splitlines() if l.startswith("cit-fast train: stopped:")]


def finite(path: Path) -> bool:
    return ckpt.nonfinite_values(ckpt.load_checkpoint(path)["model"].items())[0] == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The losses of the run without an injection (and its stderr: no warning)."""
    mp = pytest.MonkeyPatch()
    out = tmp_path_factory.mktemp("full")
    seen = inject(mp)
    try:
        main(load_config(None, args_for(out, "checkpoint_every_steps=2", "log_interval=4")))
    finally:
        mp.undo()
    return [float(x) for x in seen]


def test_nonfinite_loss_stops_the_cli_with_one_line_and_exit_code_3(tmp_path, monkeypatch, capsys, uninterrupted):
    # micro-step 11 = epoch 2, step 4; log points every 4 steps: it is found right there, after the
    # step-2 checkpoint of epoch 2 and before the step-4 one
    seen = inject(monkeypatch, at=11)
    rc = cli(["train", *args_for(tmp_path, "checkpoint_every_steps=2", "log_interval=4")])
    err = capsys.readouterr().err
    assert rc == EXIT_CODE == 3
    lines = stopped_lines(err)
    newest = ckpt.find_latest(tmp_path / "checkpoints")
    assert newest.name == "ckpt_e0001_s000002.pt"
    assert len(lines) == 1 and "loss is not finite (nan) at epoch 2, step 4/7" in lines[0], err
    assert f"the last finite checkpoint is {newest}" in lines[0] and "optim.lr=0.1" in lines[0] \
        and "data.batch_size=32" in lines[0]
    assert all(finite(p) for p in ckpt.list_checkpoints(tmp_path / "checkpoints"))
    assert not (tmp_path / "results.json").exists()
    before = [float(x) for x in seen[:10]]
    assert before == uninterrupted[:10]  # bitwise on the CPU: the injection changed nothing before it
    assert "exploded" not in err


@pytest.mark.parametrize("where", ["parameter", "buffer"])
def test_nonfinite_weights_are_never_checkpointed(tmp_path, where):
    trainer = Trainer(load_config(None, args_for(tmp_path, "optim.epochs=1")))
    m = trainer.engine.module
    t = m.fc.weight if where == "parameter" else next(b for n, b in m.named_buffers() if n.endswith("running_var"))
    with torch.no_grad():
        t.view(-1)[3] = float("inf")
    with pytest.raises(Diverged, match=r"weights are not finite after epoch 1 \(1 non-finite values"):
        trainer.save(1, 0)
    with pytest.raises(Diverged, match="at epoch 1, step 2/7"):
        trainer.save(0, 2)  # a step checkpoint alike
    assert ckpt.list_checkpoints(tmp_path / "checkpoints") == []
    trainer.env.shutdown()


def test_resume_auto_skips_an_old_nonfinite_checkpoint(tmp_path, capsys):
    extra = ["optim.epochs=1", "max_steps_per_epoch=4", "checkpoint_every_steps=2"]
    full = main(load_config(None, args_for(tmp_path / "full", *extra)))
    out = tmp_path / "run"
    main(load_config(None, args_for(out, *extra)))
    cks = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in cks] == ["ckpt_e0000_s000002.pt", "ckpt_e0001_s000000.pt"]
    # what an older version wrote after a divergence: the newest checkpoint with nan weights
    state = torch.load(cks[-1], weights_only=True)
    state["model"]["fc.weight"][0, 0] = float("nan")
    state["model"]["fc.bias"][:] = float("inf")
    torch.save(state, cks[-1])
    # asked for by name, it is one clear error
    capsys.readouterr()
    assert cli(["train", *args_for(out, *extra, f"resume={cks[-1]}")]) == 2
    assert "its weights hold 11 non-finite values" in capsys.readouterr().err
    resumed = main(load_config(None, args_for(out, *extra, "resume=auto")))
    err = capsys.readouterr()
    assert "warning: resume=auto: skipping ckpt_e0001_s000000.pt" in err.err
    assert "11 non-finite values" in err.err and "a run that diverged" in err.err
    assert f"resumed from {cks[0]} at epoch 1, step 2" in err.out
    # it re-did epoch 1 from step 2: the losses of the uninterrupted run
    assert resumed["history"][-1]["step_losses"] == full["history"][0]["step_losses"][2:]
    assert finite(cks[-1])  # written again, by the resumed run


def test_lr_1e30_on_the_embedded_data_stops_with_exit_code_3(tmp_path, capsys):
    """The issue's case, nothing injected: optim.lr=1e30 diverges within a few steps; the run stops
    with one line naming the step and the last finite checkpoint, and no checkpoint on disk holds a
    non-finite value (a checkpoint was due after every step)."""
    rc = cli(["train", *args_for(tmp_path, "optim.lr=1e30", "checkpoint_every_steps=1")])
    err = capsys.readouterr().err
    assert rc == EXIT_CODE
    lines = stopped_lines(err)
    assert len(lines) == 1, err
    m = re.search(r"the loss is not finite \((nan|inf|-inf)\) at epoch 1, step (\d)/7;", lines[0])
    assert m, lines[0]
    assert "optim.lr=1e+30" in lines[0] and "data.batch_size=32" in lines[0]
    written = sorted((tmp_path / "checkpoints").glob("*.pt")) if (tmp_path / "checkpoints").exists() else []
    assert written == ckpt.list_checkpoints(tmp_path / "checkpoints")  # no temporary file left either
    assert all(finite(p) for p in written)
    if written:  # the newest one is named, and it is from before the failing step
        assert f"the last finite checkpoint is {written[-1]};" in lines[0]
        assert ckpt.load_checkpoint(written[-1])["step_in_epoch"] < int(m.group(2))
    else:
        assert "the last finite checkpoint is none" in lines[0]
    assert not (tmp_path / "results.json").exists()
    assert "Traceback" not in err


@pytest.mark.parametrize("precision, factor, stops", [
    ("fp16", float("nan"), False),  # a nan loss: GradScaler finds nan gradients and skips the step
    ("fp16", 1e35, False),  # a finite loss whose scaled gradients overflow: a real fp16 overflow step
    ("fp32", float("nan"), True),  # no scaler: the same nan stops the run
], ids=["fp16-nan", "fp16-overflow", "fp32-nan"])
def test_a_step_the_fp16_loss_scaler_skips_is_not_a_failure(tmp_path, monkeypatch, capsys, precision, factor, stops):
    """GradScaler (ddp engine, fp16 autocast on the CPU) skips the step: the run goes on, through the
    CLI, and the skipped step is neither averaged in nor taken for an explosion."""
    inject(monkeypatch, at=2, factor=factor)
    rc = cli(["train", *args_for(tmp_path, "optim.epochs=1", "max_steps_per_epoch=4", "log_interval=1",
                                 f"dist.precision={precision}", "device=cpu")])
    err = capsys.readouterr().err
    if stops:
        assert rc == EXIT_CODE and len(stopped_lines(err)) == 1 and "at epoch 1, step 2/4" in err, err
        assert not (tmp_path / "checkpoints").exists() or not ckpt.list_checkpoints(tmp_path / "checkpoints")
        return
    assert rc == 0, err
    res = json.loads((tmp_path / "results.json").read_text())
    losses = res["history"][0]["step_losses"]
    assert not math.isfinite(losses[1]) if math.isnan(factor) else losses[1] > 1e30
    assert all(math.isfinite(x) and x < 10 for x in losses[:1] + losses[2:])
    assert math.isfinite(res["history"][0]["train_loss"]) and res["history"][0]["train_loss"] < 10
    assert "exploded" not in err and not stopped_lines(err)
    assert finite(ckpt.find_latest(tmp_path / "checkpoints"))


def test_a_loss_the_scaler_skips_for_ever_stops_the_run(tmp_path, monkeypatch, capsys):
    """A loss that is nan at every scale: GradScaler skips every step and nothing trains any more;
    after MAX_SKIPPED_STEPS in a row (3 here) the run stops with one line."""
    monkeypatch.setattr(divergence, "MAX_SKIPPED_STEPS", 3)
    inject(monkeypatch, at=2, every=True)
    rc = cli(["train", *args_for(tmp_path, "optim.epochs=1", "log_interval=1", "checkpoint_every_steps=1",
                                 "dist.precision=fp16", "device=cpu")])
    err = capsys.readouterr().err
    lines = stopped_lines(err)
    assert rc == EXIT_CODE and len(lines) == 1, err
    assert "the loss scaler skipped the last 3 steps (to epoch 1, step 4/7)" in lines[0], lines[0]
    newest = ckpt.find_latest(tmp_path / "checkpoints")
    assert f"the last finite checkpoint is {newest};" in lines[0] and "optim.lr=0.1" in lines[0]
    assert all(finite(p) for p in ckpt.list_checkpoints(tmp_path / "checkpoints"))


@pytest.mark.slow
@pytest.mark.parametrize("precision, stops", [("fp16", False), ("fp32", True)])
def test_deepspeed_fp16_skipped_step_is_not_a_failure(tmp_path, monkeypatch, capsys, precision, stops):
    """DeepSpeed's own loss scaler (fp16, ZeRO-1, CPU accelerator) skips the nan step: the run goes on;
    in fp32 the same nan stops it with exit code 3."""
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    inject(monkeypatch, at=2)
    rc = cli(["train", *args_for(tmp_path, "optim.epochs=1", "max_steps_per_epoch=4", "log_interval=1",
                                 "dist.engine=deepspeed", "dist.zero_stage=1", f"dist.precision={precision}",
                                 "device=cpu")])
    err = capsys.readouterr().err
    if stops:
        assert rc == EXIT_CODE and len(stopped_lines(err)) == 1 and "at epoch 1, step 2/4" in err, err[-3000:]
        return
    assert rc == 0, err[-3000:]
    losses = json.loads((tmp_path / "results.json").read_text())["history"][0]["step_losses"]
    assert math.isnan(losses[1]) and all(math.isfinite(x) for x in losses[:1] + losses[2:])


# what reads a tensor back to the host (a device sync on a GPU)
SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def count_syncs(monkeypatch):
    """Count the host reads of tensors made by cit_fast/train's own code while an epoch trains."""
    calls, active = [], [False]
    here = str(Path(loop.__file__).parent)
    for name in SYNCS:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            frame = sys._getframe(1)
            if active[0] and frame.f_code.co_filename.startswith(here):
                calls.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {_name}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    real_epoch = Trainer.train_one_epoch

    def train_one_epoch(self, epoch):
        active[0] = True
        try:
            return real_epoch(self, epoch)
        finally:
            active[0] = False

    monkeypatch.setattr(Trainer, "train_one_epoch", train_one_epoch)
    return calls


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_the_loss_check_adds_no_per_step_host_sync(tmp_path, monkeypatch, precision):
    """The watch reads losses at log points only: with the same log points (the first and the last
    step), 6 steps read back as often as 3; every log point more adds reads (so the count sees them)."""
    calls = count_syncs(monkeypatch)

    def reads(steps, log_interval):
        calls.clear()
        main(load_config(None, args_for(tmp_path / f"{steps}_{log_interval}", "optim.epochs=1",
                                        f"max_steps_per_epoch={steps}", f"log_interval={log_interval}",
                                        f"dist.precision={precision}", "device=cpu")))
        return list(calls)

    three, six = reads(3, 100), reads(6, 100)
    assert three and len(six) == len(three), (three, six)
    assert len(reads(6, 1)) > len(six)
    assert any("divergence.py" in c for c in three)


def test_watch_decides_with_the_scalers_own_skip_signal():
    """The decision itself, with device flags as GradScaler gives them and host flags as DeepSpeed's."""
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    for flag, fails in [(torch.tensor(True), False), (torch.tensor(False), True), (True, False), (False, True)]:
        w = DivergenceWatch(env, 5, scaled=True, floor=0.0, advice="advice")
        w.record(0, 0, torch.tensor(2.0))
        w.optimizer_step(False)
        w.record(0, 1, torch.tensor(float("inf")))
        w.check(lambda: "none")  # the inf step's optimizer step is still to come: not decided yet
        w.optimizer_step(flag)
        if fails:
            with pytest.raises(Diverged, match=r"not finite \(inf\) at epoch 1, step 2/5"):
                w.check(lambda: "none")
        else:
            w.check(lambda: "none")


def test_an_exploding_loss_gets_one_warning(tmp_path, monkeypatch, capsys):
    inject(monkeypatch, times=5, scale=100.0)  # finite, 100x from micro-step 5 on
    res = main(load_config(None, args_for(tmp_path, "log_interval=2")))
    err = capsys.readouterr().err
    warnings = [l for l in err.splitlines() if "the training loss exploded" in l]
    assert len(warnings) == 1, err
    assert "at epoch 1, step 6" in warnings[0] and "optim.lr=0.1" in warnings[0] and "data.batch_size=32" in warnings[0]
    assert res["test_top1"] is not None  # a warning, not a stop


# ---------------------------------------------------------------------------------------------
# two processes: only rank 1 goes non-finite, both stop

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
PROBE = str(Path(__file__).with_name("nonfinite_probe.py"))
DDP = ["model.name=resnet8", "data.synthetic_train_per_class=24", "data.synthetic_test_per_class=8",
       "data.batch_size=8", "optim.epochs=1", "progress=false", "threads=1", "checkpoint_every_steps=2",
       "log_interval=3"]  # 240 / (8 x 2) = 15 steps per epoch


def torchrun(out: Path, step: int, rank: int):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", PROBE, str(step), str(rank), str(out / "losses"),
           *DDP, f"out_dir={out}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.distributed
def test_ddp_nonfinite_on_rank_1_stops_both_ranks(tmp_path):
    full = torchrun(tmp_path / "full", 0, 1)
    assert full.returncode == 0, full.stderr[-3000:]
    # rank 1's micro-step 5 (epoch 1, step 5) goes nan; the log point at step 6 finds it on both ranks
    r = torchrun(tmp_path / "nan", 5, 1)
    text = r.stdout + r.stderr
    assert r.returncode != 0
    lines = stopped_lines(text)
    newest = ckpt.find_latest(tmp_path / "nan" / "checkpoints")
    assert newest.name == "ckpt_e0000_s000004.pt"
    assert len(lines) == 1 and "at epoch 1, step 5/15 (rank 1)" in lines[0] and str(newest) in lines[0], text[-3000:]
    assert text.count("exitcode  : 3") == 2 or "exitcode: 3" in text or "exit code 3" in text, text[-3000:]
    assert all(finite(p) for p in ckpt.list_checkpoints(tmp_path / "nan" / "checkpoints"))
    for rank in (0, 1):
        a = json.loads((tmp_path / "full" / "losses" / f"losses_rank{rank}.json").read_text())
        b = json.loads((tmp_path / "nan" / "losses" / f"losses_rank{rank}.json").read_text())
        assert len(b) == 6 and b[:5] == a[:5]  # both stopped at step 6; the steps before it as uninterrupted
