"""The README keeps exactly two set-up commands, and CI runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command_after(marker: str, text: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.+)\n```", text)
    assert match, f"README has no command after <!-- {marker} -->"
    return match.group(1)


def test_readme_has_the_two_fresh_machine_commands():
    text = (ROOT / "README.md").read_text()
    main = _command_after("main-command", text)
    tests = _command_after("test-command", text)
    assert "pip install" in main and "imagesynth" in main
    assert "pip install" in tests and "pytest" in tests
    assert text.count("<!-- main-command -->") == text.count("<!-- test-command -->") == 1


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and 'bash -c "$command"' in ci
