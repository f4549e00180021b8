"""Which Python builds .venv (scripts/python_env.sh, run by make): a fresh Mac's python3 is 3.9.

Fake interpreters on a private PATH answer the script's questions as real ones would.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from scripts.harness import ROOT

SCRIPT = ROOT / "scripts" / "python_env.sh"
TOOLS = ("mkdir", "cp", "rm", "cat", "sh", "make", "dirname")  # what the script and make use


def fake_python(path: Path, version: str) -> Path:
    """Answers the version questions and `-m venv DIR` (a copy of itself as DIR/bin/python)."""
    new_enough = tuple(int(v) for v in version.split(".")[:2]) >= (3, 11)
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0\n'
        "fi\n"
        'case "$2" in\n'
        f"  *version_info*) exit {0 if new_enough else 1} ;;\n"
        f"  *python_version*) echo {version} ;;\n"
        "  *) exit 3 ;;\n"
        "esac\n"
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH with the basic tools and no Python at all."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (directory / tool).symlink_to(found)
    return directory


def run(bin_dir: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), *args],
        env={"PATH": str(bin_dir)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_prefers_a_new_python_over_an_old_python3(bin_dir: Path) -> None:
    fake_python(bin_dir / "python3", "3.9.6")
    newer = fake_python(bin_dir / "python3.12", "3.12.4")
    done = run(bin_dir, "find")
    assert done.returncode == 0 and done.stdout.strip() == str(newer)


def test_python3_is_used_when_it_is_new_enough(bin_dir: Path) -> None:
    python3 = fake_python(bin_dir / "python3", "3.13.1")
    assert run(bin_dir, "find").stdout.strip() == str(python3)


def test_none_found_says_what_to_install(bin_dir: Path) -> None:
    fake_python(bin_dir / "python3", "3.9.6")
    done = run(bin_dir, "find")
    assert done.returncode == 1 and done.stdout == ""
    assert "No Python 3.11 or newer found (python3 is 3.9.6)" in done.stderr
    assert "brew install python@3.12" in done.stderr and "python.org" in done.stderr


def test_an_explicit_python_that_is_too_old_stops(bin_dir: Path) -> None:
    old = fake_python(bin_dir / "python3.9", "3.9.6")
    fake_python(bin_dir / "python3.12", "3.12.4")
    done = run(bin_dir, "find", str(old))
    assert done.returncode == 1
    assert f"PYTHON={old} is Python 3.9.6; this project needs Python 3.11 or newer" in done.stderr
    missing = run(bin_dir, "find", "python3.10")
    assert missing.returncode == 1 and "cannot be run" in missing.stderr


def test_a_venv_left_by_an_old_python_is_rebuilt(bin_dir: Path, tmp_path: Path) -> None:
    fake_python(bin_dir / "python3.12", "3.12.4")
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    fake_python(venv / "bin" / "python", "3.9.6")
    done = run(bin_dir, "venv", str(venv))
    assert done.returncode == 0, done.stderr
    assert "was made by Python 3.9.6" in done.stderr and "rebuilding" in done.stderr
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        env={"PATH": str(bin_dir)},
    )
    assert version.stdout.strip() == "3.12.4"
    again = run(bin_dir, "venv", str(venv))  # a good one is kept, silently
    assert again.returncode == 0 and again.stderr == ""


def test_an_old_venv_is_kept_while_no_newer_python_can_rebuild_it(
    bin_dir: Path, tmp_path: Path
) -> None:
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True)
    fake_python(venv / "bin" / "python", "3.9.6")
    (venv / "kept").write_text("what was installed")
    done = run(bin_dir, "venv", str(venv))
    assert done.returncode == 1
    assert "it is kept until a newer Python is there" in done.stderr
    assert "No Python 3.11 or newer found" in done.stderr  # and what to install
    assert (venv / "kept").is_file() and (venv / "bin" / "python").is_file()


def test_make_stops_at_once_on_a_too_old_python(bin_dir: Path, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("Makefile", "pyproject.toml", "scripts/python_env.sh"):
        shutil.copy(ROOT / name, checkout / name)
    old = fake_python(bin_dir / "python3.9", "3.9.6")
    done = subprocess.run(
        ["make", "install", f"PYTHON={old}"],
        cwd=checkout,
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "is Python 3.9.6; this project needs Python 3.11 or newer" in done.stderr
    assert not (checkout / ".venv").exists()
