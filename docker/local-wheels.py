"""Print the pinned requirements that local wheel folders satisfy for this Python, one
``name==version`` a line, so the image build installs those from the folders (no download)
and takes only the rest from the package index.

    python3 local-wheels.py requirements.txt DIR [DIR ...] > local.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename


def pins(requirements: Path) -> dict[str, str]:
    out = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[canonicalize_name(name)] = version.strip()
    return out


def local(pinned: dict[str, str], folders: list[Path]) -> list[str]:
    supported = set(sys_tags())
    found = set()
    for folder in folders:
        for wheel in folder.glob("*.whl"):
            try:
                name, version, _, tags = parse_wheel_filename(wheel.name)
            except InvalidWheelFilename:
                continue
            if pinned.get(name) == str(version) and tags & supported:
                found.add(name)
    return [f"{name}=={pinned[name]}" for name in sorted(found)]


if __name__ == "__main__":
    print("\n".join(local(pins(Path(sys.argv[1])), [Path(p) for p in sys.argv[2:]])))
