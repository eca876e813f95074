"""The README's Quick tour, its recipe and its Python section run verbatim.

The slow test runs them exactly as a user would, in a shell, on the quick ``mnist1d-cnn`` zoo the tour builds. The
fast test runs the same lines in-process on a zoo of the same layout with untrained models (built in milliseconds),
with ``adapt`` cut to a few steps: it catches a renamed option, a missing file or a wrong path in seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = Path(__file__).resolve().parents[1] / "src"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"^#{2,3} ", text[start + len(heading) :], flags=re.M)
    return text[start : start + len(heading) + (nxt.start() if nxt else len(text))]


def _block(section: str, lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", section, flags=re.S)
    assert found, f"no ```{lang} block"
    return found.group(1)


def readme_blocks() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    return {
        "tour": _block(_section(text, "## Quick tour"), "bash"),
        "recipe": _block(_section(text, "### Recipes"), "yaml"),
        "python": _block(_section(text, "### Python"), "python"),
    }


def _lines(block: str) -> list[str]:
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_readme_has_the_three_runnable_blocks() -> None:
    blocks = readme_blocks()
    tour = _lines(blocks["tour"])
    assert tour[0].startswith("weightspace zoo mnist1d-cnn -o zoos/cnn --quick")
    assert any(ln.startswith("weightspace adapt ") for ln in tour)
    assert "merge_method:" in blocks["recipe"]
    assert "import weightspace as ws" in blocks["python"]
    assert "../shared" not in README.read_text(encoding="utf-8")


def _in_process(line: str, capsys: pytest.CaptureFixture[str]) -> str:
    from weightspace.cli import main

    argv = shlex.split(line, comments=True)
    assert argv[0] == "weightspace", line
    expanded: list[str] = []
    for a in argv[1:]:  # the shell would expand these globs
        hits = sorted(str(p) for p in Path().glob(a)) if any(c in a for c in "*?[") else []
        expanded.extend(hits or [a])
    with pytest.raises(SystemExit) as info:
        main(expanded)
    out, err = capsys.readouterr()
    assert info.value.code == 0, f"{line}\n{err[-3000:]}"
    return out


def test_tour_recipe_and_python_run_in_process_on_a_fast_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    import weightspace.bench.adapt

    blocks = readme_blocks()
    monkeypatch.chdir(tmp_path)
    # One learning rate per family and one thread: the adapt line then takes ~2 s instead of ~30 s.
    for family, grid in list(weightspace.bench.adapt.LR_GRIDS.items()):
        monkeypatch.setitem(weightspace.bench.adapt.LR_GRIDS, family, grid[:1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run_fast_tour(blocks, tmp_path, capsys)
    finally:
        torch.set_num_threads(threads)


def _run_fast_tour(blocks: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench._cnn_zoo import write_fake_zoo

    for line in _lines(blocks["tour"]):
        if line.startswith("weightspace zoo "):
            write_fake_zoo(tmp_path / "zoos" / "cnn")  # same layout, untrained models: milliseconds, not a build
            continue
        if not line.startswith("weightspace "):
            subprocess.run(["bash", "-e", "-c", line], check=True, cwd=tmp_path)
            continue
        if line.startswith("weightspace adapt "):
            line = line.split("#")[0] + " --steps 2 --ks 1"
        if line.startswith("weightspace analyze "):
            line = line.split("#")[0] + " --no-plots --null-draws 1"
        _in_process(line, capsys)
    assert (tmp_path / "adapter" / "results.json").is_file()
    (tmp_path / "merge.yaml").write_text(blocks["recipe"], encoding="utf-8")
    _in_process("weightspace run merge.yaml", capsys)
    assert (tmp_path / "recipe-merged.safetensors").is_file()
    code = blocks["python"].replace('.save("report/")', '.save("report/", plots=False)')
    exec(compile(code, "README.md (Python)", "exec"), {"__name__": "readme"})
    assert (tmp_path / "cnn.wsz" / "manifest.json").is_file()


@pytest.mark.slow
def test_tour_recipe_and_python_run_verbatim_in_a_shell(tmp_path: Path) -> None:
    blocks = readme_blocks()
    shim = tmp_path / "bin"
    shim.mkdir()
    exe = shim / "weightspace"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m weightspace "$@"\n')
    exe.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    work = tmp_path / "work"
    work.mkdir()

    def sh(script: str) -> None:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{script}\n{proc.stderr[-4000:]}"

    sh(blocks["tour"])
    assert (work / "adapter" / "results.json").is_file()
    (work / "merge.yaml").write_text(blocks["recipe"], encoding="utf-8")
    sh("weightspace run merge.yaml")
    (work / "tour.py").write_text(blocks["python"], encoding="utf-8")
    sh(f'"{sys.executable}" tour.py')
