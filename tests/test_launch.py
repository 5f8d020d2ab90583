"""cit_fast.launch: torchrun, ending with one line where the cause is the user's."""
import torch.distributed.run as torchrun
from torch.distributed.elastic.rendezvous.api import RendezvousClosedError

from cit_fast import launch


def test_a_rendezvous_a_finished_job_closed_is_one_line(monkeypatch, capsys):
    def closed(args):
        raise RendezvousClosedError()

    monkeypatch.setattr(torchrun, "run", closed)
    assert launch.main(["--nnodes", "1:2", "--rdzv_id", "run7", "-m", "cit_fast.cli", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cit_fast.launch: the rendezvous of JOB_ID=run7 is closed: a job with that id has finished; "
                   "give this job a new JOB_ID (launchers: JOB_ID=...)"]
