"""The abi3 wheel installs into a fresh virtual environment and imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_in_fresh_venv(tmp_path: Path) -> None:
    maturin = shutil.which("maturin", path=str(Path(sys.executable).parent))
    if maturin is None:
        pytest.skip("maturin is not installed in this environment")
    dist = tmp_path / "dist"
    # The release profile shares the build cache with `make develop`, so this is quick;
    # `make wheel` builds the same wheel with fat LTO (the dist profile).
    subprocess.run(
        [maturin, "build", "--release", "--out", str(dist), "--quiet"],
        cwd=ROOT,
        check=True,
    )
    (wheel,) = dist.glob("searchr1-*.whl")
    assert "-abi3-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        # The demo's RL settings ship with the package (configs/toy.yaml links to them).
        shipped = z.read("searchr1/toy/toy.yaml").decode()
    assert shipped == (ROOT / "configs" / "toy.yaml").read_text()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--quiet", "--no-deps", wheel], check=True)
    # numpy and click come from this environment; searchr1 must come from the wheel
    # (a path on PYTHONPATH does not run the .pth file of an editable install).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    code = (
        "import searchr1, searchr1._core as c; "
        "print(searchr1.__file__); print(c.__file__); "
        "print(searchr1.parse_action('<answer> ok </answer>').content)"
    )
    done = subprocess.run([py, "-c", code], env=env, capture_output=True, text=True, check=True)
    package, core, answer = done.stdout.split()
    assert Path(package).is_relative_to(env_dir)
    assert core.endswith(".abi3.so")
    assert answer == "ok"
    done = subprocess.run(
        [env_dir / "bin" / "searchr1", "--version"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
