"""Session fixtures of the harness tests: two fake zoos (builders in ``_merge_zoo.py`` and ``_cnn_zoo.py``).

* ``fake_zoo_dir`` / ``fake_zoo`` / ``fake_zoo_class``: a tiny MLP fine-tune zoo with its own evaluator
  (:class:`FakeZoo`), for the merge benchmark;
* ``fake_cnn_zoo`` / ``fake_cnn_zoo_archive``: a real ``mnist1d-cnn`` layout with untrained models (evaluated by
  the registered ``mnist1d-cnn`` zoo), for the adaptation benchmark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._cnn_zoo import write_fake_zoo
from bench._merge_zoo import FakeZoo, build_fake_zoo
from weightspace.collection import Collection
from weightspace.compress import compress


@pytest.fixture(scope="session")
def fake_zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_zoo(tmp_path_factory.mktemp("fakezoo"), FakeZoo())


@pytest.fixture
def fake_zoo() -> FakeZoo:
    return FakeZoo()


@pytest.fixture(scope="session")
def fake_zoo_class() -> type[FakeZoo]:
    return FakeZoo


@pytest.fixture(scope="session")
def fake_cnn_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_zoo(tmp_path_factory.mktemp("fake-zoo") / "zoo")


@pytest.fixture(scope="session")
def fake_cnn_zoo_archive(fake_cnn_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(leave-'reverse'-out archive, archive of every model) of the fake cnn zoo."""
    root = tmp_path_factory.mktemp("fake-zoo-archives")
    models = sorted((fake_cnn_zoo / "models").glob("*.safetensors"))
    held = [p for p in models if "reverse" not in p.name]
    base = fake_cnn_zoo / "base.safetensors"
    compress(Collection.from_paths(held, base=base, private=["head.*"]), root / "lto.wsz", n_components=4)
    compress(Collection.from_paths(models, base=base, private=["head.*"]), root / "all.wsz", n_components=4)
    return root / "lto.wsz", root / "all.wsz"
