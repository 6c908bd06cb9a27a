"""docs/python.md runs: its ```python blocks are executed in order, in one fresh interpreter, in
an empty directory (a block may use what earlier blocks defined). A block preceded by a
``<!-- no-test -->`` line is skipped. A failure names the line of the page."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "python.md"
NO_TEST = "<!-- no-test -->"

# Runs each block compiled under the page's name with the page's line numbers, so a traceback
# points at docs/python.md:LINE.
DRIVER = """\
import json, sys
blocks = json.load(open(sys.argv[1]))
ns = {"__name__": "__main__"}
for first_line, code in blocks:
    print(f"--- docs/python.md:{first_line}", flush=True)
    exec(compile("\\n" * (first_line - 1) + code, "docs/python.md", "exec"), ns)
print("--- all blocks ran")
"""


def python_blocks(text: str) -> tuple[list[tuple[int, str]], int]:
    """``([(first code line, code)], skipped)`` for the ```python fences of ``text``."""
    lines = text.splitlines()
    blocks, skipped, i = [], 0, 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            j = start
            while lines[j].strip() != "```":
                j += 1
            prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            if prev == NO_TEST:
                skipped += 1
            else:
                blocks.append((start + 1, "\n".join(lines[start:j]) + "\n"))
            i = j
        i += 1
    return blocks, skipped


def test_python_blocks_are_found():
    blocks, skipped = python_blocks(PAGE.read_text())
    assert len(blocks) >= 8 and skipped <= 1
    # every fence is closed and no python block hides under another language tag
    assert len(re.findall(r"^```", PAGE.read_text(), flags=re.M)) % 2 == 0
    assert not re.search(r"^```(py|python3)\s*$", PAGE.read_text(), flags=re.M)


def test_docs_python_blocks_run_in_order(tmp_path):
    blocks, _ = python_blocks(PAGE.read_text())
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "blocks.json")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.rstrip().endswith("--- all blocks ran")
