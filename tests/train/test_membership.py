"""What the user is told when the job's nodes change (train/membership.py): rank 0's one line per
start of the workers, out_dir/nodes.json, and the world size / nodes / restarts metrics. The
multi-node runs that produce these lines are tests/train/test_node_restart.py's."""
import json
import urllib.request

import pytest

from cit_fast.config import load_config
from cit_fast.train import membership
from cit_fast.train.callbacks import Callback
from cit_fast.train.loop import main
from cit_fast.train.membership import Membership

A1, B1, B2, C1 = "h:100", "h:200", "h:201", "h:300"


@pytest.mark.parametrize("before, now, line", [
    (None, {"a": A1, "b": B1}, None),  # a run's first start says nothing
    ({"a": A1, "b": B1}, {"a": A1}, "restart 1: node b left; world size 2 -> 1 (nodes: a)"),
    ({"a": A1}, {"a": A1, "b": B2}, "restart 1: node b came back; world size 1 -> 2 (nodes: a, b)"),
    ({"a": A1, "b": B1}, {"a": A1, "b": B2}, "restart 1: node b restarted; world size 2 (nodes: a, b)"),
    ({"a": A1, "b": B1}, {"a": A1, "c": C1}, "restart 1: node b left; node c joined; world size 2 (nodes: a, c)"),
    ({"a": A1, "b": B1}, {"a": A1, "b": B1}, "restart 1: workers restarted on the same nodes; world size 2 "
                                             "(nodes: a, b)"),
])
def test_event_line_names_what_changed(before, now, line):
    previous = None if before is None else {"restarts": 0, "world_size": len(before), "nodes": before,
                                            "seen": ["a", "b"]}
    m = Membership(now, len(now), previous, restarts=0 if previous is None else 1)
    assert m.event_line() == line


def test_each_start_is_compared_with_the_previous_one(tmp_path, monkeypatch):
    def start(node, agent, resuming=True):
        monkeypatch.setattr(membership, "this_node", lambda: {"node": node, "agent": agent})
        m = Membership.gather(tmp_path, 1, resuming)
        m.save(tmp_path)
        return m

    assert start("a", A1).event_line() is None  # no nodes.json yet
    assert start("a", "h:101").event_line() == "restart 1: node a restarted; world size 1 (nodes: a)"
    m = start("b", B1)
    assert m.event_line() == "restart 2: node a left; node b joined; world size 1 (nodes: b)"
    assert start("a", A1).event_line() == "restart 3: node b left; node a came back; world size 1 (nodes: a)"
    assert json.loads((tmp_path / "nodes.json").read_text())["seen"] == ["a", "b"]
    assert start("a", A1, resuming=False).event_line() is None  # a run without resume starts a new history
    (tmp_path / "nodes.json").write_text("{not json")
    assert start("a", A1).event_line() is None  # an unreadable record is no record, never an error


class Scrape(Callback):
    """Reads this rank's metrics once, at the first step."""
    text = ""

    def on_step_end(self, trainer, info):
        if not Scrape.text:
            with urllib.request.urlopen(f"http://127.0.0.1:{trainer.metrics.port}/metrics", timeout=5) as r:
                Scrape.text = r.read().decode()


def test_a_resumed_run_says_so_in_one_line_and_in_its_metrics(tmp_path, monkeypatch, capsys):
    args = ["model.name=resnet8", "data.synthetic_train_per_class=8", "data.synthetic_test_per_class=2",
            "data.batch_size=16", "optim.epochs=1", "max_steps_per_epoch=4", "progress=false", "threads=1",
            "metrics.enabled=true", "metrics.base_port=0", "checkpoint_every_steps=2", f"out_dir={tmp_path}",
            "resume=auto"]
    monkeypatch.setenv("CIT_FAST_NODE", "node7")
    main(load_config(None, args), stop_after_steps=2)
    assert "restart" not in capsys.readouterr().out
    monkeypatch.setattr(membership.os, "getppid", lambda: 4242)  # the node's command started again
    Scrape.text = ""
    main(load_config(None, args), callbacks=[Scrape()])
    out = capsys.readouterr().out
    lines = [s for s in out.splitlines() if s.startswith("restart")]
    assert len(lines) == 1, out
    assert lines[0].startswith("restart 1: node node7 restarted; world size 1 (nodes: node7); resumed from ")
    assert lines[0].endswith("ckpt_e0000_s000002.pt at epoch 1, step 2")
    lv = 'job="cit_fast",model="resnet8",rank="0"'
    for name, value in (("world_size", 1), ("nodes", 1), ("restarts", 1)):
        assert f"cit_fast_{name}{{{lv}}} {value:.1f}" in Scrape.text
