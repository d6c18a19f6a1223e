#!/usr/bin/env python3
"""Vendor three.js for `neurok serve`'s playground: `npm pack` the pinned release, check the tarball
against the pinned integrity, and copy its single-file ES module build (license header kept) and its
LICENSE into platform/neurok/serve/vendor/, which the server inlines into the page.

    python3 scripts/build_three.py        (`make three`; `make setup` and `make test` run it when needed)

The output is git-ignored: 0.7 MB of minified code that the npm package reproduces byte for byte.
0.170.0 is the last release with one self-contained minified module (r171 split it into three.core.js
plus three.module.js importing it, and later releases ship no minified build); the playground only
needs WebGLRenderer, BufferGeometry, lights, materials and Raycaster, which it has.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.170.0"
INTEGRITY = "sha512-FQK+LEpYc0fBD+J8g6oSEyyNzjp+Q7Ks1C568WWaoMRLW+TkNNWmenWeGgJjV105Gd+p/2ql1ZcjYvNiPZBhuQ=="
OUT = Path(__file__).resolve().parents[1] / "platform" / "neurok" / "serve" / "vendor"
FILES = {"package/build/three.module.min.js": "three.module.min.js", "package/LICENSE": "three.LICENSE"}


def pack(dest: Path) -> Path:
    """The release's npm tarball in `dest`, after checking its integrity against the pin."""
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("build_three: npm not found; install Node.js with npm (Debian: apt-get install npm)")
    done = subprocess.run(
        [npm, "pack", f"three@{VERSION}", "--json", "--pack-destination", str(dest)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        sys.exit(f"build_three: npm pack three@{VERSION} failed:\n{done.stderr.strip()}")
    packed = json.loads(done.stdout)[0]
    if packed["integrity"] != INTEGRITY:
        sys.exit(f"build_three: three@{VERSION} has integrity {packed['integrity']}, pinned {INTEGRITY}")
    return dest / packed["filename"]


def extract(tarball: Path) -> None:
    """The build and its license into OUT, each written whole before it replaces the old one."""
    OUT.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for member, name in FILES.items():
            data = tar.extractfile(member).read()
            partial = OUT / f".{name}.partial"
            partial.write_bytes(data)
            partial.replace(OUT / name)
            print(f"build_three: {OUT / name} ({len(data) / 1e3:.0f} kB, three@{VERSION})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="neurok-three-") as tmp:
        extract(pack(Path(tmp)))


if __name__ == "__main__":
    main()
