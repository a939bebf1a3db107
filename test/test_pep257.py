"""ament_pep257 over the package, the launch files and the tests."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = [REPO / 'vla_ros', REPO / 'launch', REPO / 'test', REPO / 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    main = pytest.importorskip('ament_pep257.main').main
    rc = main(argv=[str(p) for p in PATHS if p.exists()])
    assert rc == 0, 'Found code style errors / warnings'
