"""The package lives in platform/ without making `platform` a package that shadows the stdlib."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_platform_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_stdlib_platform_and_its_users_work_from_the_repo_root():
    code = (
        "import platform, torch, ray, mlflow, neurok; "
        "assert platform.system() and platform.python_version().startswith('3.11'); "
        "assert platform.__file__.endswith('platform.py'); print(neurok.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "platform/neurok/__init__.py" in out.stdout
