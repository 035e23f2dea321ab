"""gpumask as a user gets it: a wheel built from the sources, installed into a fresh virtual
environment, run from outside the repository (`gpumask --version`, the demo). The new
environment sees this one's packages through a .pth file (torch, transformers...), so nothing
is downloaded; gpumask itself comes from the wheel only."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*command, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "gpumask", source / "gpumask", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-q", "-w", dist, source, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = dist.glob("gpumask-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    site = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    )
    # This environment's packages, as plain paths: its .pth files (the editable gpumask) are
    # not processed from there, so `import gpumask` can only find the installed wheel.
    Path(site.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_installs_and_runs_from_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"gpumask/py.typed", "gpumask/demo_data/tokenizer.json"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    venv = _fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel, cwd=tmp_path,
    )  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(python, "-c", "import gpumask; print(gpumask.__file__)", cwd=outside)
    assert Path(where.strip()).is_relative_to(venv)
    assert _run(venv / "bin" / "gpumask", "--version", cwd=outside) == "gpumask 0.1.0\n"
    demo = _run(python, "-m", "gpumask.demo", "--no-color", cwd=outside)
    assert "[[Yes: 27 °C and a 23 °C sea. Go for it.<|im_end|>]]" in demo
    assert "row 0 trains 'Hello!<|im_end|>'; row 1 trains nothing" in demo
