"""scripts/pick-python: the interpreter `make` builds .venv from (an optimised build first).

Each case runs the script with a PATH of fake interpreters only: shell scripts that answer the two
questions it asks (can you make a venv? were you configured with --enable-optimizations?).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pick-python"


def fake_python(path: Path, *, venv: bool = True, optimized: bool = False) -> Path:
    """An executable that exits 0 for the venv check if ``venv``, and for the build check if
    ``optimized``; anything else it is asked fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""#!/bin/sh
case "$2" in
  *ensurepip*) exit {0 if venv else 1} ;;
  *enable-optimizations*) exit {0 if optimized else 1} ;;
esac
exit 2
""")
    path.chmod(0o755)
    return path


def pick(tmp_path: Path, distro: Path | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": str(tmp_path / "bin"), "DISTRO_PYTHON": str(distro or tmp_path / "absent")}
    return subprocess.run(["/bin/sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("optimized", [True, False])
def test_an_optimised_python3_11_on_the_path_comes_before_the_distributions(tmp_path, optimized):
    on_path = fake_python(tmp_path / "bin" / "python3.11", optimized=optimized)
    distro = fake_python(tmp_path / "usr" / "python3.11")
    out = pick(tmp_path, distro)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(on_path if optimized else distro)


def test_a_distribution_python_that_cannot_make_a_venv_is_passed_over(tmp_path):
    on_path = fake_python(tmp_path / "bin" / "python3.11")
    distro = fake_python(tmp_path / "usr" / "python3.11", venv=False)
    assert pick(tmp_path, distro).stdout.strip() == str(on_path)


def test_python3_when_there_is_no_usable_python3_11(tmp_path):
    fake_python(tmp_path / "bin" / "python3.11", venv=False)
    python3 = fake_python(tmp_path / "bin" / "python3")
    assert pick(tmp_path, None).stdout.strip() == str(python3)


def test_none_found_is_an_error_that_says_what_to_install(tmp_path):
    (tmp_path / "bin").mkdir()
    out = pick(tmp_path, None)
    assert out.returncode == 1
    assert out.stdout == ""
    assert "python3.11-venv" in out.stderr
