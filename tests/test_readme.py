"""The README as a newcomer uses it: the two quick-start commands, the demo output it shows, and every other
command copied as typed into a fresh copy of the project (long ones and the server excepted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

README = (ROOT / "README.md").read_text(encoding="utf-8")
QUICK_START = (
    "bash scripts/setup.sh && bash scripts/demo.sh",
    "bash scripts/setup.sh --dev && .venv/bin/python -m pytest -q",
)


def bash_blocks(text: str) -> list[list[str]]:
    """The commands of every ```bash block, one string per command (comments and blank lines dropped)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        body = body.replace("\\\n", " ")
        blocks.append(
            [line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        )
    return blocks


def commented_long(text: str) -> set[str]:
    """Commands under a `# long` comment, or marked as running until Ctrl-C."""
    marked = set()
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        previous = ""
        for line in body.splitlines():
            if (
                line.strip()
                and not line.lstrip().startswith("#")
                and (previous.startswith("# long") or "until Ctrl-C" in line)
            ):
                marked.add(line.strip())
            previous = line.strip()
    return marked


def test_exactly_two_quick_start_commands_and_ci_runs_the_test_command() -> None:
    blocks = bash_blocks(README)
    assert (blocks[0], blocks[1]) == ([QUICK_START[0]], [QUICK_START[1]])
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci and "bash scripts/setup.sh --dev" in ci
    # the environment is activated before the first bare `python` command
    first_python = README.index("\npython ")
    assert README.index("source .venv/bin/activate") < first_python


def test_demo_output_shown_is_what_demo_prints() -> None:
    shown = re.search(r"Demo output:\n\n```\n(.*?)```", README, flags=re.S).group(1)
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    # how many recordings the library embeds depends on its cache (none on a fresh clone): not compared
    def same(text: str) -> str:
        return re.sub(r"\d+ new recordings? embedded", "N new recordings embedded", text)

    assert same(result.stdout) == same(shown)
    assert len(result.stdout.splitlines()) <= 14  # the answer, the speech it used and the model, per command


def fresh_copy(tmp_path: Path) -> Path:
    """The project as a clone has it (tracked and new files, nothing ignored), beside a link to the shared data."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    clone = tmp_path / "voiceprint"
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    (clone / ".venv").symlink_to(ROOT / ".venv")  # what `bash scripts/setup.sh` made
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    return clone


def test_every_other_readme_command_works_as_typed(shared_data: Path, tmp_path: Path) -> None:
    clone = fresh_copy(tmp_path)
    venv = clone / ".venv"
    # what `source .venv/bin/activate` does: the environment's programs first on PATH
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    skipped = commented_long(README)
    ran = []
    for command in [c for block in bash_blocks(README)[2:] for c in block]:
        if command == "source .venv/bin/activate" or command in skipped:
            continue
        result = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert result.returncode == 0, (
            f"README command failed: {command}\n{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
        )
        assert "Traceback" not in result.stderr, command
        ran.append(command)
    assert any(c.startswith("python train.py --max_minutes 1") for c in ran)
    assert any(c.startswith("python infer_recognition.py") for c in ran) and len(ran) >= 15
    assert (clone / "runs" / "quick" / "inference.pt").is_file()
    # the bundled model is never touched by training
    assert (clone / "models" / "voiceprint_resnet34.pt").read_bytes() == (
        ROOT / "models" / "voiceprint_resnet34.pt"
    ).read_bytes()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
