"""`benchmarks/train_step.py --compile_only` on the tiny config: FLOPs and XLA's memory analysis, nothing allocated."""

import json
import os
import sys

from benchmarks import train_step as bench


def test_compile_only_reports_flops_and_memory(tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    # main() adds the trainer's CPU scheduler flag to XLA_FLAGS; restored afterwards, so later subprocess tests
    # inherit the suite's environment unchanged.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    # 100-query chunks: the tiny UNet's 256-token attention runs as a loop, whose body XLA's count sees once.
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--config", "configs/tiny_test.py", "--compile_only",
                                      "--set", "model.attention_query_chunk=100", "--out", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    assert result["compile_only"] and "joint_over_two_pass_time" not in result
    assert result["overrides"] == {"model.attention_query_chunk": "100"}
    for form in ("two_pass", "joint"):
        row = result["forms"][form]
        assert "step_s" not in row and row["compile_s"] > 0
        assert row["flops_per_step"] > row["executable_flops"] > 0, row  # counted with all queries at once
        memory = row["memory"]
        assert memory["alias_size_in_bytes"] > 0  # the state is donated
        assert memory["step_bytes"] == (memory["argument_size_in_bytes"] + memory["temp_size_in_bytes"]
                                        + memory["output_size_in_bytes"] - memory["alias_size_in_bytes"]) > 0


def test_phase_peaks_are_each_phases_own():
    """`end_phase` restarts the kernel's peak count, so a phase after a 200 MB allocation does not inherit its peak;
    `max_phase_peak` still sees it (Linux /proc; elsewhere nothing is recorded)."""
    import numpy as np  # noqa: PLC0415

    if not bench.resident_mb():
        return
    phases: dict = {}
    bench.end_phase(phases, "before")
    block = np.ones(50_000_000, np.float32)  # 200 MB, touched
    del block
    bench.end_phase(phases, "allocated")
    bench.end_phase(phases, "after")
    assert phases["allocated"]["peak"] >= phases["before"]["rss"] + 150, phases
    assert phases["after"]["peak"] < phases["allocated"]["peak"] - 150, phases
    assert bench.max_phase_peak(phases) == phases["allocated"]["peak"]
