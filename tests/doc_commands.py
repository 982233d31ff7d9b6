"""The deployment docs' shell commands, as the tests run them.

Every ```bash block in the deployment docs (DOCS) is preceded by a marker comment that says who
runs it:

    <!-- doc-test: containers -->          tests/test_containers.py, in order, as root with podman
    <!-- doc-test: host -->                tests/test_deploy.py, on real SuperLink/SuperNode processes
    <!-- doc-test: host expect-fail -->    the same, and the block must exit non-zero
    <!-- doc-test: not run: <reason> -->   an example that needs what no test has (a real
                                           coordinator's name, a site's own data); the reason says it

A runner substitutes only the documented placeholders (PLACEHOLDERS: the trial folder) and runs
the blocks of one kind, in document order, as one terminal session would: each block in
``bash -e -o pipefail`` from the repository root, with the environment the previous block left.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = (REPO / "docker" / "README.md", REPO / "README.md", REPO / "docs" / "deploy.md")
# Of README.md only its deployment section counts (the rest is tested by tests/test_docs.py).
SECTIONS = {REPO / "README.md": "## Deploy at a site"}
TRIAL_DIR = "/srv/confide-trial"  # the placeholder the docs use for the trial's folder
MARKER = re.compile(r"<!-- doc-test: (?P<kind>[^>]*?) -->\s*$")
FENCE = re.compile(r"^\s*```(?P<lang>\S*)\s*$")
KINDS = ("containers", "host", "host expect-fail")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    kind: str  # one of KINDS, or "not run: <reason>", or "" (no marker)
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def bash_blocks(doc: Path) -> list[Block]:
    """Every ```bash block of ``doc`` with the marker on the line before its fence ("" if none)."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    first, last = 0, len(lines)
    if doc in SECTIONS:
        first = lines.index(SECTIONS[doc])
        last = next((j for j in range(first + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    out, i = [], first
    lines = lines[:last]
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), len(lines))
        indent = len(lines[i]) - len(lines[i].lstrip())
        if fence["lang"] == "bash":
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.search(prev)
            body = "\n".join(line[indent:] for line in lines[i + 1 : end])
            out.append(Block(doc, i + 1, marker["kind"].strip() if marker else "", body))
        i = end + 1
    return out


def blocks(kind: str) -> list[Block]:
    """The blocks of ``kind`` (a prefix: "host" also gives "host expect-fail"), in document order."""
    return [b for doc in DOCS for b in bash_blocks(doc) if b.kind.startswith(kind)]


def substitute(text: str, trial_dir: Path) -> str:
    return text.replace(TRIAL_DIR, str(trial_dir))


@dataclass
class Session:
    """Runs blocks one after another like one terminal: the environment carries over."""

    env: dict[str, str]
    trial_dir: Path
    log: list[str]

    def run(self, block: Block, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env_file = self.trial_dir.parent / f".doc-env-{os.getpid()}"
        script = substitute(block.text, self.trial_dir) + f"\nenv -0 > '{env_file}'\n"
        start = time.monotonic()
        res = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=REPO, env=self.env,
                             capture_output=True, text=True, timeout=timeout)  # fmt: skip
        self.log.append(f"$ [{block.where}, {time.monotonic() - start:.0f} s, exit {res.returncode}]\n"
                        f"{block.text}\n{res.stdout[-4000:]}{res.stderr[-4000:]}")  # fmt: skip
        if env_file.exists():
            pairs = [x.split("=", 1) for x in env_file.read_text().split("\0") if "=" in x]
            self.env = {k: v for k, v in pairs}
            env_file.unlink()
        return res

    def run_all(self, kind: str, timeout: float = 900) -> list[tuple[Block, subprocess.CompletedProcess[str]]]:
        """Run every block of ``kind``; stops at the first that does not end as its marker says."""
        done = []
        for block in blocks(kind):
            res = self.run(block, timeout)
            done.append((block, res))
            expect_fail = block.kind.endswith("expect-fail")
            if (res.returncode != 0) != expect_fail:
                raise AssertionError(
                    f"documented command at {block.where} exited {res.returncode}"
                    f"{' (expected a failure)' if expect_fail else ''}:\n" + "\n".join(self.log[-3:])
                )
        return done
