"""The README's two set-up commands are the ones CI and users run."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line][0].strip()
    assert ci_command in readme
    assert "bash .ci/install && .venv/bin/flexcli demo --out demo" in readme


def test_install_pins_the_known_good_torch_pair_but_pyproject_takes_a_range():
    assert "torch==2.14.1 torchvision==0.29.1" in (ROOT / ".ci" / "install").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.4,<3"' in pyproject and "torch==" not in pyproject
