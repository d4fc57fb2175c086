"""Every example of README.md, docs/usage.md and docs/recipes.md runs.

- Each ```python block runs, in document order, in one namespace per file, in a fresh working
  folder per file.
- In ```bash / ```sh / ```console blocks, every command that starts with ``fimvar`` (also after
  ``&&`` or ``;``, or a ``$`` prompt) runs through :func:`fimvar.cli.main` and must exit with 0, in
  the same working folder, interleaved with the Python blocks in document order. Small sizes:
  ``fimvar analyze`` and ``fimvar demo`` get ``--inputs 16`` (and the demo ``--epochs 20``) when the
  example does not choose, and ``--no-figures`` (figures are tested in ``test_report.py``);
  ``fimvar reproduce`` gets ``--quick``.
- A block right after a line ``<!-- no-test -->`` is skipped.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from fimvar.app.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/usage.md", "docs/recipes.md")
FENCE = re.compile(r"^```(\w*)\s*$")


def examples(text: str) -> list[tuple[str, str, int]]:
    """``(language, code, line number)`` of every fenced block not marked ``<!-- no-test -->``."""
    blocks, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        language, start = match.group(1).lower(), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        if "<!-- no-test -->" not in previous:
            blocks.append((language, "\n".join(body), start + 1))
    return blocks


def commands(code: str) -> list[list[str]]:
    """The ``fimvar`` commands of a shell block, as argument lists for :func:`main`."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip().removeprefix("$ ").strip()
        for part in re.split(r"&&|;", line):
            words = shlex.split(part, comments=True)
            if words and words[0] == "fimvar":
                out.append(small(words[1:]))
    return out


def small(argv: list[str]) -> list[str]:
    if argv and argv[0] in ("analyze", "demo") and not {"--inputs", "-N"} & set(argv):
        argv = argv + ["--inputs", "16"]
    if argv and argv[0] in ("analyze", "demo") and "--no-figures" not in argv:
        argv = argv + ["--no-figures"]  # the figures are tested in test_report.py
    if argv and argv[0] == "demo" and "--epochs" not in argv:
        argv = argv + ["--epochs", "20"]
    if argv and argv[0] == "reproduce" and "--quick" not in argv and "--help" not in argv:
        argv = argv + ["--quick"]
    return argv


@pytest.mark.parametrize("document", DOCUMENTS)
def test_examples_run(document, tmp_path, monkeypatch, capsys):
    path = ROOT / document
    if not path.exists():
        pytest.skip(f"{document} does not exist")
    blocks = examples(path.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for language, code, line in blocks:
        if language == "python":
            exec(compile(code, f"{document}:{line}", "exec"), namespace)  # noqa: S102
            ran += 1
        elif language in ("bash", "sh", "shell", "console"):
            for argv in commands(code):
                status = main(argv)
                err = capsys.readouterr().err
                assert status == 0, f"{document}:{line}: fimvar {' '.join(argv)} exited {status}\n{err}"
                ran += 1
    assert ran or not blocks
    assert os.getcwd() == str(tmp_path)


def test_ci_runs_the_readme_test_command():
    """.ci/run runs the README's test command verbatim, and the command is self-contained: it
    makes and activates its virtual environment before installing anything."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for language, code, _ in examples(readme) if language == "bash"
                   for line in code.splitlines() if "pytest" in line)
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert command.strip() in ci
    steps = [step.strip() for step in command.split("&&")]
    assert steps[0].startswith("python3 -m venv .venv") and steps[1] == ". .venv/bin/activate"
    assert steps.index(". .venv/bin/activate") < min(i for i, s in enumerate(steps) if s.startswith("pip"))
