"""The peer's own virtual environment, bench/peer/.venv, made on first use (or by `make bench-peer-venv`).

quixstreams 3.28.1 pins pydantic <2.14 and confluent-kafka <2.13, so it cannot live in the project's
venv. This one gets the pinned bench/peer/requirements.txt, then enrollstream from this checkout in
editable mode without its dependencies (the domain the peer decides with needs only pydantic, which the
requirements bring at a version the domain accepts). A stamp holding the requirements' hash says it is
done; a changed requirements file makes it again.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REQUIREMENTS = HERE / "requirements.txt"
VENV = HERE / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-stamp"


def _wanted() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ready() -> bool:
    return PYTHON.exists() and STAMP.exists() and STAMP.read_text().strip() == _wanted()


def ensure(say: Callable[[str], None] = print) -> Path:
    """The peer venv's python, creating or refreshing the venv first if needed (a minute or two)."""
    if ready():
        return PYTHON
    say(f"peer: creating {VENV} (quixstreams and its pins, once)")
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True)
    # The domain must import here: fail now, not as a peer that dies at its first command.
    subprocess.run([str(PYTHON), "-c", "import enrollstream.domain, quixstreams"], check=True, cwd=str(REPO))
    STAMP.write_text(_wanted() + "\n")
    return PYTHON


if __name__ == "__main__":
    print(ensure())
