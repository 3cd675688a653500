"""README.md's code as a reader would use it: every ```python block runs on its own in a fresh
interpreter, and every command it shows names files and options that exist."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import rnnkern
from rnnkern.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
BASH_BLOCKS = re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M)


def test_the_readme_has_code() -> None:
    assert len(PYTHON_BLOCKS) >= 3 and BASH_BLOCKS


# The directory holding the rnnkern under test (the installed one in CI, not the source tree's,
# which has no compiled core there).
_PACKAGE_ROOT = str(Path(rnnkern.__file__).resolve().parent.parent)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_alone(index: int, tmp_path: Path) -> None:
    """Copied into a fresh interpreter (in an empty directory), the block runs without error."""
    block = PYTHON_BLOCKS[index]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", block], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"README block {index + 1} failed:\n{block}\n{done.stderr}"


def _commands() -> list[str]:
    """The shell commands of the bash blocks (split at && and ;, comments dropped) and the
    `rnnkern ...` / `python ...` commands quoted inline, without placeholders (CKPT, [FILE])."""
    commands = []
    for block in BASH_BLOCKS:
        for line in block.splitlines():
            line = line.split("#")[0]
            commands += [c.strip() for c in re.split(r"&&|;", line) if c.strip()]
    for span in re.findall(r"`((?:rnnkern |python |(?:scripts|benchmarks)/\S+\.py)[^`]*)`", README):
        if not re.search(r"\[|\b[A-Z][A-Z_]*\b", span):  # a placeholder: CKPT, [TEXT_FILE]
            commands.append(span if span.startswith(("rnnkern", "python")) else f"python {span}")
    return commands


def test_commands_exist() -> None:
    """Each `rnnkern` command parses with the real parser; each script and test path exists."""
    parser = build_parser()
    checked = 0
    for command in _commands():
        words = shlex.split(command)
        if words[0] == "rnnkern":
            parser.parse_args(words[1:])  # SystemExit on an unknown command or option
            checked += 1
        elif words[0] == "python":
            paths = [w for w in words[1:] if not w.startswith("-") and "/" in w or
                     w.endswith(".py") or w in ("tests", "benchmarks")]
            for w in paths:
                assert (ROOT / w).exists(), f"{command!r}: no {w}"
            checked += 1
        elif words[:2] == ["bash", "scripts/sanitize.sh"]:
            assert (ROOT / words[1]).exists()
            checked += 1
    assert checked >= 5


def test_readme_scripts_take_their_options() -> None:
    """The options the README passes to a script are ones its --help lists."""
    for command in _commands():
        words = shlex.split(command)
        if words[0] != "python" or not words[1].endswith(".py"):
            continue
        shown = subprocess.run([sys.executable, str(ROOT / words[1]), "--help"],
                               capture_output=True, text=True, timeout=120, check=False,
                               env={**os.environ, "PYTHONPATH": _PACKAGE_ROOT})
        assert shown.returncode == 0, shown.stderr
        for option in (w for w in words[2:] if w.startswith("--")):
            assert option in shown.stdout, f"{command!r}: {words[1]} has no {option}"
