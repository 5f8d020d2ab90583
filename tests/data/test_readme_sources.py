"""The README's COCO-Stuff / DeepFashion commands, run verbatim on the download layouts."""
import re
import shlex
from pathlib import Path

from cit_fast.cli import main as cli
from tests.data.test_cocostuff import write_cocostuff
from tests.data.test_deepfashion import write_deepfashion

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(marker: str) -> list:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    block = next(b for b in blocks if marker in b)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_points_cit_fast_at_the_downloads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_cocostuff(Path("data/cocostuff"))
    write_deepfashion(Path("data/deepfashion"))
    lines = _block("data.train=data/cocostuff")
    assert len(lines) == 2
    for line, source in zip(lines, ("cocostuff", "deepfashion")):
        argv = shlex.split(line, comments=True)
        assert argv[0] == "cit-fast" and cli(argv[1:]) == 0
        assert f"  source: {source}  #" in capsys.readouterr().out
