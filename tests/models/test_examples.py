"""The Python examples run as a user would run them, and print what their docstrings promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_custom_backend_example_labels_in_a_ray_actor():
    out = run_example("custom_backend.py", "my parcel tracking number does not work")
    assert "label: shipping" in out
    assert "keyword-triage vrules-1 in actor" in out


def test_custom_model_actor_example_answers_and_refuses():
    out = run_example("custom_model_actor.py")
    capital, refused = out.strip().splitlines()
    assert "paris" in capital.lower()
    assert "refused" in refused
