"""The README's two set-up commands: .ci/run runs exactly the test command, and that command installs the browser
the HTML-report test needs before it runs the suite (so it passes on a fresh Debian machine as written)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    setup = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    main_job, test_command = readme_commands()
    assert "run.py" in main_job and "pytest" in test_command
    ci_lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert ci_lines[-1] == test_command


def test_the_test_command_installs_the_browser_first():
    test_command = readme_commands()[1]
    assert test_command.startswith("sh tests/install-browser.sh && ")
    script = ROOT.joinpath("tests/install-browser.sh").read_text()
    assert "apt-get install" in script and "chromium" in script
