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
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("# Page\n<!-- bench:training -->\nold\n<!-- /bench:training -->\n")
    (tmp_path / "docs" / "plain.md").write_text("no markers\n")
    assert runner.main(["--only", "training", "--out", str(out), "--readme", str(readme)]) == 0
    assert "old" not in page.read_text() and "--only training" in page.read_text()
    assert (tmp_path / "docs" / "plain.md").read_text() == "no markers\n"
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


def test_quality_section_repeats_seeds_and_renders(tmp_path, cache_dir):
    """Two methods, two seeds, smoke preset: per-seed runs, summaries, seed 0's DeepLab."""
    from wsss.bench import quality

    results = quality.section(
        tmp_path, lambda text: None, methods=("cam", "fbr"), preset="smoke", seeds=(0, 1)
    )
    cam = results["methods"]["cam"]
    assert sorted(cam["reports"]) == ["0", "1"]
    values = [cam["reports"][s]["seed_miou"] for s in ("0", "1")]
    assert cam["summary"]["seed_miou"]["values"] == values
    assert cam["summary"]["seed_miou"]["mean"] == round(sum(values) / 2, 2)
    assert (tmp_path / "runs" / "cam" / "seed1" / "report.json").exists()
    assert not (tmp_path / "runs" / "cam" / "seed1" / "deeplab.pt").exists()  # seed 0 only
    assert cam["seed0"]["seg_miou"] is not None and cam["upper_bound_crf_miou"] is not None
    assert cam["seed0"]["pseudo_miou_affinity"] is not None
    assert "healthy" in cam["reports"]["0"]["health"]
    text = quality.markdown(results)
    assert "± " in text and "pseudo: CRF: vs cam" in text and "upper bound (true masks)" in text
    fbr_row = next(line for line in text.splitlines() if line.startswith("| fbr "))
    assert f"| {quality.PAPER_COLUMN} |" in text and "| +23.9 (72.2, PPC host) |" in fbr_row
    assert fbr_row.count("±") == 4 and fbr_row.rstrip(" |").split("| ")[-1] in (
        "ok",
        "**unhealthy** (seed 0)",
        "**unhealthy** (seed 1)",
        "**unhealthy** (seed 0, 1)",
    )
    assert quality.compute_seconds(results) > 0


def test_versus_baseline_says_when_a_difference_is_within_the_spread():
    from wsss.bench.quality import versus_baseline

    base = {"summary": {"seed_miou": {"mean": 40.0, "std": 1.0}}}
    near = {"summary": {"seed_miou": {"mean": 41.5, "std": 2.0}}}
    far = {"summary": {"seed_miou": {"mean": 45.0, "std": 2.0}}}
    assert versus_baseline(near, base, "seed_miou") == {
        "delta": 1.5,
        "spread": 2.0,
        "beyond_spread": False,
    }
    assert versus_baseline(far, base, "seed_miou")["beyond_spread"]


def test_ktse_ablation_table_compares_each_module_with_the_network_alone():
    from wsss.bench import ktse_ablation

    def row(mean, std, unhealthy=()):
        entry = {"mean": mean, "std": std, "values": []}
        summary = {k: entry for k, _ in ktse_ablation.SEED_KEYS}
        return {"summary": {**summary, "unhealthy_seeds": list(unhealthy)}, "stage_seconds": {}}

    results = {
        "seeds": [0, 1, 2],
        "variants": {
            "network + L_cls": row(40.0, 1.0),
            "+SIE": row(44.0, 1.0),
            "+SSR": row(40.5, 1.0),
            "all (ktse)": row(30.0, 2.0, unhealthy=(1,)),
        },
    }
    text = ktse_ablation.markdown(results)
    assert "| +SIE | 44.0 ± 1.0 |" in text and "+4.0 |" in text
    assert "+0.5 (within spread)" in text
    assert "**unhealthy** (seed 1)" in text
