"""Every Python code block of the README and the docs runs as written.

Each block is a complete program: it is written to a file of its own and run with this Python in a
fresh directory, as a user would paste it. A block whose imports name a library that is not installed
here (torchvision, timm in the main environment) is skipped with the missing module named; the
environment with the real model libraries runs it.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
IMPORT = re.compile(r"^(?:from|import) ([\w.]+)", re.M)


def snippets() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(BLOCK.finditer(text)):
            line = text[: match.start()].count("\n") + 1
            found.append((f"{page.relative_to(ROOT)}:{line}#{number}", match.group(1)))
    return found


SNIPPETS = snippets()


def test_the_pages_have_snippets():
    assert len(SNIPPETS) >= 15  # a parser that finds nothing would make the tests below vacuous


@pytest.mark.slow
@pytest.mark.parametrize("where, code", SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_snippet_runs_as_written(where, code, tmp_path):
    missing = sorted({name.split(".")[0] for name in IMPORT.findall(code)} - {"lightning_infomem"})
    missing = [name for name in missing if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    script = tmp_path / "snippet.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-4000:]}"
