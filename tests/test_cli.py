"""``train/run.py`` usability: the stage list in --help, a bad --root, Ctrl-C and resuming.

The end-to-end runs and the one-line errors of bad arguments are in tests/test_pipeline.py.
"""

from __future__ import annotations

import re

import pytest

import wsss.pipeline
import wsss.trainer
from wsss.cli import main
from wsss.pipeline import STAGES


def main_interrupted(args: list[str]) -> int:
    """main(args) where a KeyboardInterrupt is expected to be handled inside."""
    try:
        return main(args)
    except KeyboardInterrupt:  # would otherwise stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped wsss.cli.main")


def test_help_names_each_stage_output_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    stages = text.split("stages (in order):\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert len(stages) == len(STAGES)
    for line, stage in zip(stages, STAGES, strict=True):
        assert re.match(rf"  {stage.name}\s", line)
        assert line.count("->") == 1 and line.endswith(f" -> {stage.output}"), line


@pytest.mark.parametrize("kind", ["voc", "coco", "folder"])
def test_missing_root_leaves_no_run_folder(kind, tmp_path, capsys):
    out = tmp_path / "runs" / "x"
    missing = tmp_path / "missing"
    assert main(["cam", "--data", kind, "--root", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: dataset folder not found: {missing}"
    assert not out.exists() and not out.parent.exists()


def test_root_that_is_no_voc_folder_leaves_no_run_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    args = ["cam", "--data", "voc", "--root", str(tmp_path / "empty"), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not a VOC folder") and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("force", [False, True])
def test_ctrl_c_is_one_line_and_exit_130(force, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(wsss.pipeline, "run_pipeline", interrupted)
    out = tmp_path / "run"
    args = ["cam", "--preset", "smoke", "--out", str(out), "--quiet"] + ["--force"] * force
    assert main_interrupted(args) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"interrupted: {out} keeps what was finished")
    again = "the same command without --force" if force else "the same command to resume"
    assert again in err[0]


def test_ctrl_c_in_training_then_the_same_command_resumes(tmp_path, monkeypatch, capsys, cache_dir):
    """What the Ctrl-C line promises: the rerun continues after the last finished epoch."""
    real_progress = wsss.trainer.progress

    class InterruptInEpoch2:
        """The trainer's progress bar, with a Ctrl-C after the first batch of epoch 2."""

        def __init__(self, iterable, desc, **kwargs):
            self.bar, self.desc = real_progress(iterable, desc, **kwargs), desc

        def __iter__(self):
            for i, item in enumerate(self.bar):
                if self.desc.endswith(" 2/2") and i == 1:
                    raise KeyboardInterrupt
                yield item

        def set_postfix(self, **kwargs):
            self.bar.set_postfix(**kwargs)

    out = tmp_path / "run"
    args = ["cam", "--preset", "smoke", "--out", str(out), "--quiet", "--stages", "cls"]
    args += ["--set", "cls.epochs=2"]
    monkeypatch.setattr(wsss.trainer, "progress", InterruptInEpoch2)
    assert main_interrupted(args) == 130
    assert "run the same command to resume" in capsys.readouterr().err
    assert (out / ".cls.state.pt").exists() and not (out / "classifier.pt").exists()

    monkeypatch.setattr(wsss.trainer, "progress", real_progress)
    assert main(args) == 0
    log = (out / "run.log").read_text()
    assert "resuming after epoch 1" in log
    assert (out / "classifier.pt").exists() and not (out / ".cls.state.pt").exists()
