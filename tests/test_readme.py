"""Every shell block of README.md runs, at small sizes, or says why it does not.

A fenced ``bash`` block is preceded by one of two HTML comments (invisible on GitHub):

    <!-- test -->                          run the block as written
    <!-- test
    small: --phantoms 20 => --phantoms 1   ... with these replacements (each must occur)
    -->
    <!-- no-test: installs packages -->    not run, for the reason given

The blocks marked ``test`` run in README order, each with ``bash -euo pipefail``, in one
temporary folder outside the checkout (so later blocks see what earlier ones wrote, and
nothing relies on the repository being the working directory), with this interpreter's
``bin/`` first on PATH (``x2ct`` is the installed command), one CPU thread and no GPU.
A block without a marker fails the test: a new command must be tested or say why not.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(no-test|test)\b(.*?)-->\s*$", re.S)


def readme_blocks(text: str) -> list[dict]:
    """The shell blocks of a README: {"line", "code", "test" (bool), "small" [(old, new)],
    "reason"}; a block without a marker has test None."""
    blocks = []
    for m in FENCE.finditer(text):
        if m.group(1) not in ("bash", "sh", "shell", "console"):
            continue
        before = text[: m.start()].rstrip()
        # the comment right before the fence, if any
        marker = MARKER.match(before[before.rfind("<!--"):]) if before.endswith("-->") else None
        block = {"line": text.count("\n", 0, m.start()) + 1, "code": m.group(2), "test": None,
                 "small": [], "reason": ""}
        if marker is not None:
            kind, body = marker.group(1), marker.group(2)
            block["test"] = kind == "test"
            if kind == "no-test":
                block["reason"] = body.lstrip(":").strip()
            for line in body.strip().splitlines():
                line = line.strip()
                if line.startswith("small:"):
                    old, sep, new = line[len("small:"):].partition("=>")
                    if not sep:
                        raise ValueError(f"README line {block['line']}: 'small: OLD => NEW'")
                    block["small"].append((old.strip(), new.strip()))
        blocks.append(block)
    return blocks


def small_version(block: dict) -> str:
    code = block["code"]
    for old, new in block["small"]:
        if old not in code:
            raise AssertionError(
                f"README block at line {block['line']}: its marker replaces {old!r}, which the "
                "block no longer contains; update the marker")
        code = code.replace(old, new)
    return code


BLOCKS = readme_blocks(README.read_text())


def test_every_shell_block_is_marked():
    unmarked = [b["line"] for b in BLOCKS if b["test"] is None]
    assert not unmarked, (
        f"README.md shell blocks at lines {unmarked} have no <!-- test --> or "
        "<!-- no-test: reason --> marker before them")
    assert all(b["reason"] for b in BLOCKS if b["test"] is False), "a no-test without a reason"
    assert any(b["test"] for b in BLOCKS)


def test_the_parser_reads_markers_and_replacements():
    text = ("<!-- test\nsmall: --n 20 => --n 1\n-->\n```bash\nx --n 20\n```\n\n"
            "<!-- no-test: needs a GPU -->\n```bash\ny\n```\n```python\nz\n```\n```bash\nw\n```\n")
    a, b, c = readme_blocks(text)
    assert a["test"] and small_version(a) == "x --n 1\n"
    assert b["test"] is False and b["reason"] == "needs a GPU"
    assert c["test"] is None and c["code"] == "w\n"
    with pytest.raises(AssertionError, match="no longer contains"):
        small_version({**a, "code": "x --n 3\n"})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b["test"]],
                         ids=lambda b: f"line{b['line']}")
def test_readme_block_runs(block, workdir):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
        "PYTHONWARNINGS": "ignore",
        "TQDM_DISABLE": "1",
    }
    env.pop("X2CT_MODELS", None)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", small_version(block)], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (
        f"README block at line {block['line']} failed ({done.returncode}):\n"
        f"{small_version(block)}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n"
        f"{done.stderr[-3000:]}")
