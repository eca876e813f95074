"""Dask: a LocalCluster gives the archives and reports of a single-threaded run; a worker killed mid-run fails
the command clearly and leaves no partial archive; without dask installed the message names the extra."""

from __future__ import annotations

import builtins
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from backends.test_parallel import _numbers, assert_same_archive
from weightspace.analyze import analyze
from weightspace.backends import RunOptions, open_executor
from weightspace.collection import Collection
from weightspace.compress import compress
from weightspace.errors import BackendError, DependencyError
from weightspace.io import open_source

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

# A source whose reads of one tensor kill the process reading it, unless it is the test process itself: a unit
# task on a worker then dies mid-run. Written to a file so that the spawned workers can import it.
_KILLER = textwrap.dedent(
    """
    import os, signal
    from weightspace.io._sources import SafetensorsSource

    class KillingSource(SafetensorsSource):
        def __init__(self, path, key):
            super().__init__(path)
            self.key, self.owner = key, os.getpid()

        def read(self, key, rows=None):
            if key == self.key and os.getpid() != self.owner:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().read(key, rows)
    """
)


@pytest.fixture(scope="module")
def inproc_client() -> Iterator[object]:
    """A LocalCluster of 2 single-threaded in-process workers: the Dask code path without spawning processes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def process_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A LocalCluster of 2 worker processes (everything pickled, as across machines); they can import the killer."""
    helper = tmp_path_factory.mktemp("killer")
    (helper / "ws_killer.py").write_text(_KILLER)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(helper), old) if p)
    sys.path.insert(0, str(helper))
    try:
        # No retries: the first worker death fails the run (Dask's default retries a task on 3 more workers).
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
            cluster = distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = distributed.Client(cluster)
        yield client
        client.close()
        cluster.close()
    finally:
        sys.path.remove(str(helper))
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _same_archives_and_reports(client: object, models_dir: Path, tmp_path: Path) -> None:
    compress([models_dir], tmp_path / "one.wsz", n_components=3, threads=1)
    compress([models_dir], tmp_path / "dask.wsz", n_components=3, client=client)
    assert_same_archive(tmp_path / "one.wsz", tmp_path / "dask.wsz")
    hosvd = {"method": "hosvd", "n_components": (3, 2)}
    compress([models_dir], tmp_path / "h1.wsz", threads=1, **hosvd)
    compress([models_dir], tmp_path / "hd.wsz", client=client, **hosvd)
    assert_same_archive(tmp_path / "h1.wsz", tmp_path / "hd.wsz")
    one = analyze([models_dir], n_null=2, threads=1)
    dsk = analyze([models_dir], n_null=2, client=client)
    assert one.verdicts == dsk.verdicts
    a, b = _numbers(one.to_dict()), _numbers(dsk.to_dict())
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-10, rtol=1e-10, equal_nan=True)


def test_dask_gives_the_single_threaded_archives_and_reports(
    inproc_client: object, models_dir: Path, tmp_path: Path
) -> None:
    _same_archives_and_reports(inproc_client, models_dir, tmp_path)


@pytest.mark.slow
def test_worker_processes_give_the_single_threaded_archives_and_reports(
    process_client: object, models_dir: Path, tmp_path: Path
) -> None:
    _same_archives_and_reports(process_client, models_dir, tmp_path)


@pytest.mark.slow
def test_a_killed_worker_fails_clearly_and_writes_nothing(
    process_client: object, models_dir: Path, tmp_path: Path
) -> None:
    from ws_killer import KillingSource  # type: ignore[import-not-found]

    paths = sorted(models_dir.glob("*.safetensors"))
    good = tmp_path / "a.wsz"
    compress(paths, good, n_components=3, threads=1)
    before = {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    sources = [open_source(p) for p in paths]
    sources[3] = KillingSource(paths[3], "c.weight")
    with pytest.raises(
        BackendError, match=r"a Dask worker died while running unit 'c\.weight' .*Nothing was written"
    ):
        compress(Collection(sources), good, n_components=3, client=process_client)
    assert {p.name: p.read_bytes() for p in good.rglob("*") if p.is_file()} == before
    with pytest.raises(BackendError, match="worker died"):
        compress(Collection(sources), tmp_path / "new.wsz", n_components=3, client=process_client)
    assert not (tmp_path / "new.wsz").exists()
    assert not [p.name for p in tmp_path.iterdir() if ".wstmp-" in p.name]  # no temporary sibling left behind
    process_client.wait_for_workers(2, timeout=60)  # type: ignore[attr-defined]


def test_missing_dask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_dask(name: str, *args: object, **kwargs: object) -> object:
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(DependencyError, match=r"pip install 'weightspace\[dask\]'"):
        open_executor(RunOptions(scheduler="local:2"))
