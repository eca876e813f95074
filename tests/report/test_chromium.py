"""Render report.html in headless Chromium and check the screenshot is a real page, not a blank."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(report_dir: Path, tmp_path: Path) -> None:
    import numpy as np
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        (report_dir / "report.html").resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.exists(), proc.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    # a rendered page has text, tables and plots: many distinct colours and real contrast
    rgb = (pixels[..., :3] * 255).astype(np.uint32)  # (2000, 1280, 3)
    assert float(rgb.std()) > 10
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert len(np.unique(packed)) > 50
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


_PROBE = """<script>
window.addEventListener('load', () => {
  const out = [];
  document.querySelectorAll('.tbl').forEach(div => {
    div.scrollLeft = div.scrollWidth;
    const row = div.querySelectorAll('tr')[1];
    const box = div.getBoundingClientRect();
    out.push({
      overflows: div.scrollWidth > div.clientWidth + 1,
      scrolled: div.scrollLeft,
      firstLeft: Math.round(row.cells[0].getBoundingClientRect().left - box.left),
      secondLeft: Math.round(row.cells[1].getBoundingClientRect().left - box.left),
    });
  });
  document.body.setAttribute('data-probe', JSON.stringify(out));
});
</script></body>"""


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless check needs /usr/bin/chromium (apt-get install chromium)"
)
def test_wide_tables_scroll_with_the_first_column_in_view(report_dir: Path, tmp_path: Path) -> None:
    import html
    import json
    import re

    page = (report_dir / "report.html").read_text(encoding="utf-8").replace("</body>", _PROBE)
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page, encoding="utf-8")
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=700,1200",  # narrower than the tables: they must scroll, not be cut
        "--virtual-time-budget=3000",
        "--dump-dom",
        probe_page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, proc.stdout[-2000:]
    tables = json.loads(html.unescape(found.group(1)))
    assert len(tables) == 2  # by unit type, per unit
    for t in tables:
        assert t["overflows"], t  # at 700 px the tables are wider than their box
        assert t["scrolled"] > 0, t
        assert abs(t["firstLeft"]) <= 1, (
            t
        )  # (1 px: the box border) scrolled right, the first column stays at the left edge
        assert t["secondLeft"] < 0, t  # while the other columns moved out of view
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
