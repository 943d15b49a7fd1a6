"""README.md's examples run as written: every ```sh and ```python block is executed from the repository
root (sh with `bash -e`), except those preceded by `<!-- readme-test: skip REASON -->` (a cluster, the
test suite itself); `<!-- readme-test: exit N -->` says the block ends in a command that exits N.
Substitutions keep runs apart (several share this machine): `/tmp/qh` becomes a fresh temporary
directory, `.venv/bin/` this interpreter's bin directory, `127.0.0.1:8443` a free port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^\n]*?) -->\n)?^```(?P<lang>sh|python)\n(?P<body>.*?)^```",
                    re.S | re.M)


def blocks() -> list[tuple[str, str, str, str | None]]:
    """(id, language, code, skip reason) for every sh/python block, in README order."""
    text = (ROOT / "README.md").read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        mark = m.group("mark")
        if mark is not None:
            assert re.fullmatch(r"skip .{5,}|exit \d+", mark), f"README line {line}: 'skip <reason>' or 'exit N'"
        out.append((f"line{line}-{m.group('lang')}", m.group("lang"), m.group("body"), mark))
    return out


BLOCKS = blocks()
# Never run from a test, marked or not: builds, clusters, registries, edits of the repository.
_UNSAFE = re.compile(r"^\s*(?:make|kubectl|docker|podman|buildah|kind|git|helm)\b|\bsed -i\b|\bkustomize edit\b", re.M)


def test_the_readme_has_runnable_examples() -> None:
    runnable = [b for b in BLOCKS if not (b[3] or "").startswith("skip ")]
    assert len(runnable) >= 5 and {b[1] for b in runnable} == {"sh", "python"}


@pytest.mark.parametrize(("lang", "code", "skip"), [b[1:] for b in BLOCKS], ids=[b[0] for b in BLOCKS])
def test_example_runs(lang: str, code: str, skip: str | None, tmp_path: Path) -> None:
    if skip and skip.startswith("skip "):
        pytest.skip(skip.removeprefix("skip "))
    unsafe = _UNSAFE.search(code)
    assert unsafe is None, f"an unmarked example runs {unsafe.group(0).strip()!r}: mark it '<!-- readme-test: skip ... -->'"
    expected = int(skip.removeprefix("exit ")) if skip else 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = code.replace("/tmp/qh", str(tmp_path)).replace(".venv/bin/", f"{BIN}/")
    code = code.replace("127.0.0.1:8443", f"127.0.0.1:{port}")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SGX_AESM_ADDR", None)
    cmd = ["bash", "-e", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == expected, f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
