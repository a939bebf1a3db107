"""ament_flake8 over the package, the launch files and the tests (ament's own configuration)."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [REPO / 'vla_ros', REPO / 'launch', REPO / 'test', REPO / 'setup.py']


@pytest.mark.flake8
@pytest.mark.process  # flake8 forks its workers
@pytest.mark.linter
def test_flake8():
    main_with_errors = pytest.importorskip('ament_flake8.main').main_with_errors
    rc, errors = main_with_errors(argv=[str(p) for p in PATHS if p.exists()])
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
