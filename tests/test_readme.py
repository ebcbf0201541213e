"""The README a newcomer follows: its first example runs as written, and the files, configs and
commands it names exist."""
from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_first_python_example_runs_as_written(capsys):
    torch.manual_seed(0)
    exec(compile(_python_blocks()[0], "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()  # it prints the certified fraction and the shapes


def test_every_repository_path_the_readme_names_exists():
    paths = set(re.findall(r"`((?:configs|benchmarks|docs|robustsuite|tests)/[\w./*-]+)`", README))
    paths |= set(re.findall(r"\]\(((?:docs)/[\w./-]+)\)", README))
    missing = [p for p in sorted(paths) if "*" not in p and not (ROOT / p).exists()]
    assert paths and not missing, missing


def test_every_cli_command_the_readme_uses_exists():
    from robustsuite.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    used = set(re.findall(r"robustsuite ([a-z]+) ", README)) - {"import"}  # "from robustsuite import"
    assert used and used <= set(sub.choices), used - set(sub.choices)
