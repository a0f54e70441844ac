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


def test_ci_stops_when_the_readme_test_command_fails(tmp_path):
    """A failed install inside the README's && list must fail CI before the aarch64 job (set -e alone
    does not see a failure that is not the list's last command)."""
    import subprocess

    _, tests = _setup_commands()
    script = (ROOT / ".ci" / "run").read_text()
    # The same shape as the README line: an early step fails, the last (pytest) never runs.
    script = script.replace(tests, "false && echo PYTEST-RAN").replace("\n.ci/aarch64", "\necho AARCH64-RAN")
    script = script.replace('cd "$(dirname "$0")/.."', f"cd {tmp_path}")
    (tmp_path / "run").write_text(script)
    r = subprocess.run(["bash", str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "PYTEST-RAN" not in r.stdout and "AARCH64-RAN" not in r.stdout
    assert "README's test command failed" in r.stderr
