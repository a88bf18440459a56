"""The par-export command line, through its entry point and as a subprocess."""

from __future__ import annotations

import subprocess
import sys

from par_export.cli import main
from par_export.reduce import available_methods


def test_methods_lists_every_registered_reducer(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in available_methods():
        assert f"\n{name} " in out


def test_flops_prints_the_table_for_all_budgets_and_text_lengths(capsys):
    assert main(["flops", "--model-config", "llava-1.5-7b", "--budget", "64"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "|" in line and not line.strip().startswith("K")]
    assert {(r[0], r[1]) for r in rows} == {
        (k, t) for k in ("576", "192", "128", "64", "auto~64") for t in ("16", "64", "256")
    }
    assert len(rows) == 15
    assert "83%" in out


def test_reduce_writes_png_and_reports_kept_tokens(tmp_path, capsys):
    assert main(["reduce", "--budget", "32", "--batch", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("kept 32/576 tokens") == 2
    png = tmp_path / "kept_tokens.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))


def test_bad_budget_is_a_clear_error(capsys):
    assert main(["reduce", "--method", "pool", "--budget", "auto"]) == 2
    assert "has no adaptive budget" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "par_export.cli", "methods"], capture_output=True, text=True)
    assert result.returncode == 0 and "visionzip" in result.stdout
