"""Session fixtures of the adapter tests (builders live in ``_builders.py``)."""

from __future__ import annotations

import pytest

from adapt._builders import Tiny, build_tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("adapt-tiny"))
