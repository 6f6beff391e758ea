"""The report's page in a real headless browser (Chromium): every image loads and the plots are visible."""
from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from ablate.report import Options, build_report

from .report_rows import row

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(tmp_path):
    if BROWSER is None:
        print("skipped: no Chromium on PATH (Debian: apt-get install -y chromium)")
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium)")

    def run(*args):
        profile = tmp_path / "profile"
        done = subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout
    return run


def saturated_share(path) -> float:
    """Share of clearly coloured pixels (channel spread > 0.3): plots have many, text and tables almost none."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))[..., :3].astype(float)
    if pixels.max() > 1:
        pixels /= 255
    return float(((pixels.max(axis=2) - pixels.min(axis=2)) > 0.3).mean())


def small_report(path):
    rows = []
    for seed, (b, t, i) in enumerate([(0.10, 0.098, 0.06), (0.12, 0.119, 0.07), (0.11, 0.108, 0.066)]):
        for model, scale in (("FREEDOM", 1.0), ("VBPR", 0.9)):
            rows.append(row(model=model, seed=seed, value=b * scale))
            rows.append(row(model=model, condition="text_only", fill="noise", seed=seed, value=t * scale))
            rows.append(row(model=model, condition="image_only", fill="noise", seed=seed, value=i * scale))
    return build_report(pd.DataFrame(rows), path, Options(metrics=("recall@20", "ndcg@10")))


def test_page_opens_with_every_plot_loaded_and_visible(tmp_path, browser):
    written = small_report(tmp_path / "report")
    url = (tmp_path / "report" / "index.html").resolve().as_uri()
    dom = browser("--virtual-time-budget=5000", "--dump-dom", url)
    images = len(written["plots"])
    assert images >= 4
    assert f'data-images="{images}"' in dom and f'data-images-loaded="{images}"' in dom, dom[:500]
    shot = tmp_path / "shot.png"
    browser("--window-size=1300,1600", f"--screenshot={shot}", url)
    with_plots = saturated_share(shot)
    # the same page with its images' files gone: the browser shows no plot
    for plot in written["plots"]:
        plot.unlink()
    browser("--window-size=1300,1600", f"--screenshot={tmp_path / 'bare.png'}", url)
    without = saturated_share(tmp_path / "bare.png")
    print(f"coloured pixels: {with_plots:.3f} with plots, {without:.3f} without")
    assert with_plots > 0.03 and with_plots > 5 * max(without, 1e-3)
