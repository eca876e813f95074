"""Session fixtures of the adapter tests (builders live in ``_builders.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapt._builders import Tiny, build_tiny, write_fake_zoo
from weightspace.collection import Collection
from weightspace.compress import compress


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("adapt-tiny"))


@pytest.fixture(scope="session")
def fake_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_zoo(tmp_path_factory.mktemp("fake-zoo") / "zoo")


@pytest.fixture(scope="session")
def fake_zoo_archive(fake_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(leave-'reverse'-out archive, archive of every model) of the fake zoo."""
    root = tmp_path_factory.mktemp("fake-zoo-archives")
    models = sorted((fake_zoo / "models").glob("*.safetensors"))
    held = [p for p in models if "reverse" not in p.name]
    base = fake_zoo / "base.safetensors"
    compress(Collection.from_paths(held, base=base, private=["head.*"]), root / "lto.wsz", n_components=4)
    compress(Collection.from_paths(models, base=base, private=["head.*"]), root / "all.wsz", n_components=4)
    return root / "lto.wsz", root / "all.wsz"
