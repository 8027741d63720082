"""Helpers shared by the core tests."""

import textwrap
from pathlib import Path


def fake_dist(root: Path, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """An installed distribution (dist-info + module) exposing ``module`` in group mmtok, as pip
    would leave it in a site directory; put ``root`` on sys.path / PYTHONPATH to install it."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text(f"[mmtok]\n{ep_name or module} = {module}\n")
