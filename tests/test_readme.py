"""README keeps exactly two set-up commands near its top, and .ci/run runs the second (fast tier)."""

from __future__ import annotations

import re

from conftest import ROOT


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", setup, flags=re.S)


def test_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = _setup_commands()
    assert "edgekit build" in main_job and "serve_smoke.py" in main_job
    assert "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines
