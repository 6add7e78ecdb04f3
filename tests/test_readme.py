"""The README's promises: its tested example runs, and CI runs its test command."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_tested_blocks() -> list[str]:
    return re.findall(r"<!-- tested[^>]*-->\n```python\n(.*?)```", README, re.S)


def test_the_optimizer_example_runs_as_written():
    blocks = readme_tested_blocks()
    assert blocks, "README.md has no block marked <!-- tested -->"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # the block asserts its own result


def test_ci_runs_the_readme_test_command():
    script = (
        "awk '/<!-- test-command -->/{found=1; next} found && /^```/{if (inblock) exit; "
        "inblock=1; next} inblock{print; exit}' README.md"
    )
    extracted = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert script.split("'")[1] in (ROOT / ".ci" / "run").read_text()
    quickstart = re.search(r"## Quickstart(.*?)\n## ", README, re.S).group(1)
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)
    assert commands == ['pip install -e ".[app]" && python train.py', extracted]
    assert "pytest" in extracted
