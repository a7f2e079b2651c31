"""The benchmark runner: sections, results.json, and README tables rendered from it."""

import json

import torch

from wsss.bench import crf, runner, training
from wsss.bench.common import markdown_table

FULL_SECTION = training.section


def _smoke_section(out_dir, say):
    """The real training section, one method on the smoke preset (seconds)."""
    return FULL_SECTION(out_dir, say, methods=("cam",), preset="smoke")


def test_section_results_json_and_readme_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "section", _smoke_section)
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\nintro\n\n<!-- bench:training -->\nstale table\n<!-- /bench:training -->\n\n"
        "<!-- bench:quality -->\nkept: no quality results yet\n<!-- /bench:quality -->\ntail\n"
    )
    assert runner.main(["--only", "training", "--out", str(out), "--readme", str(readme)]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["sections"]["training"]
    row = entry["results"]["methods"]["cam"]
    assert row["images_per_second"] > 0 and row["batch"] == 8 and "cls" in row["loss_terms"]
    assert entry["machine"]["cpu_count"] >= 1
    text = readme.read_text()
    assert "stale table" not in text and "kept: no quality results yet" in text
    assert text.startswith("# Title\n\nintro\n") and text.endswith("tail\n")
    assert f"| {row['images_per_second']:.1f} |" in text
    assert "python -m wsss.bench --only training" in text
    assert "## training" in (out / "report.md").read_text()
    # Rendering again from results.json alone gives the same README.
    assert runner.main(["--render-only", "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_a_section_pinning_threads_does_not_leak_into_the_next(tmp_path, monkeypatch):
    """crf pins one thread; the training section after it must get the default back."""
    original = torch.get_num_threads()
    torch.set_num_threads(2)  # the default under test, whatever this machine's is
    seen = []

    def pin_one_thread(out_dir, say):
        torch.set_num_threads(1)
        return {}

    def record_threads(out_dir, say):
        seen.append(torch.get_num_threads())
        return {}

    monkeypatch.setattr(crf, "section", pin_one_thread)
    monkeypatch.setattr(training, "section", record_threads)
    try:
        runner.run_sections(["crf", "training"], tmp_path, say=lambda text: None)
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_unknown_section_is_a_one_line_error(capsys, tmp_path):
    assert runner.main(["--only", "quality,speed", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown section 'speed'" in err and len(err.splitlines()) == 1


def test_markdown_table_alignment():
    table = markdown_table(["a", "b"], [["x", "1.0"]])
    assert table.splitlines() == ["| a | b |", "|:--|--:|", "| x | 1.0 |"]
