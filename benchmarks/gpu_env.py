"""Make mmtok, its plugins and their dependencies importable on a GPU node that has only its own
PyTorch and no package index (the setup step of ``benchmarks/gpu_check.sh``).

    python3 -I benchmarks/gpu_env.py --python python3 --root . --site .gpu_site \\
        --wheels .gpu_wheels --env-file OUT/env.sh

What it does, each part only when the probe (a child ``--python`` importing what the GPU check
needs) says it is needed:

1. mmtok not importable: the repository root and every ``plugins/*/src`` go on ``PYTHONPATH`` (the
   project is not pip-installed there).
2. A distribution of mmtok or of a plugin that ``importlib.metadata`` does not find: a minimal
   ``NAME-VERSION.dist-info`` (``METADATA`` + ``entry_points.txt``, read from that
   ``pyproject.toml``) is written into ``--site``. mmtok finds its plugins through the ``mmtok``
   entry-point group, which lives in such metadata: with ``PYTHONPATH`` alone no plugin would load.
   Nothing is built or copied: the code stays in the checkout, no setuptools, no network.
3. Imports still failing and a wheel folder present: ``pip install --no-index --no-deps --target
   SITE`` of the wheels whose distribution is missing; if imports still fail, also of those whose
   installed version differs from the wheel's (e.g. a too old typing-extensions).

``--env-file`` receives the ``export PYTHONPATH=...`` lines to source. Exit status 0 when every
probed import and every plugin loads, else 1 (the probe's report says what is missing). Standard
library only (run it with ``-I``: it must work before anything is installed).
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

#: what the GPU check imports: the package, the training and encoding paths, the device tests'
#: modules (and their conftest's hypothesis) and the benchmarks' plugin modules
MODULES = [
    "numpy", "mmtok", "mmtok.train", "mmtok.encode", "mmtok.testing", "vector_quantize_pytorch", "pytest",
    "hypothesis", "yaml", "tqdm", "safetensors", "pywt",
    "mmtok_plugin_tabular", "mmtok_plugin_ct", "mmtok_plugin_ct.model.encoder", "mmtok_plugin_nir",
    "mmtok_plugin_nir.model.spectralfm", "mmtok_plugin_nir.datasets", "mmtok_plugin_nir.preprocessing",
    "mmtok_plugin_hsi", "mmtok_plugin_hsi.model", "mmtok_plugin_medimg", "mmtok_plugin_medimg.model",
]
#: plugins that must load through the entry points (astro's optional astropy is imported lazily)
PLUGINS = ["astro", "ct", "hsi", "medimg", "nir", "tabular"]

PROBE = r"""
import importlib, importlib.metadata as md, json, sys
mods, dists = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"imports": {}, "dists": {}, "plugins": {}, "python": sys.version.split()[0]}
for m in mods:
    try:
        importlib.import_module(m)
        out["imports"][m] = None
    except BaseException as err:  # noqa: BLE001 - report, never stop
        out["imports"][m] = f"{type(err).__name__}: {err}"
for d in dists:
    try:
        out["dists"][d] = md.version(d)
    except md.PackageNotFoundError:
        out["dists"][d] = None
try:
    from mmtok.plugins import get_plugin_manager
    for p in get_plugin_manager().plugins:
        out["plugins"][p.name] = p.errors
except BaseException as err:  # noqa: BLE001
    out["plugins"]["?"] = [f"{type(err).__name__}: {err}"]
print("PROBE " + json.dumps(out))
"""


def norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_dist(path: Path) -> tuple[str, str]:
    """(normalised name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return norm(name), version


def read_project(pyproject: Path) -> dict:
    """name, version and the ``mmtok`` entry points of a pyproject.toml."""
    text = pyproject.read_text()
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # 3.10: the three things needed, by pattern
        project = re.search(r"^\[project\]\s*$(.*?)^\[", text + "\n[", re.M | re.S).group(1)
        eps = re.search(r"^\[project\.entry-points\.mmtok\]\s*$(.*?)^\[", text + "\n[", re.M | re.S)
        field = lambda key: re.search(rf'^{key}\s*=\s*"([^"]+)"', project, re.M).group(1)  # noqa: E731
        points = dict(re.findall(r'^(\w[\w-]*)\s*=\s*"([^"]+)"', eps.group(1), re.M)) if eps else {}
        return {"name": field("name"), "version": field("version"), "entry_points": points}
    data = tomllib.loads(text)["project"]
    return {"name": data["name"], "version": data["version"],
            "entry_points": data.get("entry-points", {}).get("mmtok", {})}


def write_dist_info(site: Path, project: dict) -> Path:
    """A dist-info folder that makes ``importlib.metadata`` see ``project`` and its entry points."""
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
                                   "Summary: metadata only (benchmarks/gpu_env.py); the code is in the checkout\n")
    if project["entry_points"]:
        lines = "".join(f"{k} = {v}\n" for k, v in sorted(project["entry_points"].items()))
        (info / "entry_points.txt").write_text("[mmtok]\n" + lines)
    (info / "INSTALLER").write_text("gpu_env\n")
    return info


class Env:
    def __init__(self, python: str, paths: list[str]):
        self.python, self.paths = python, paths

    def environ(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(self.paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        return env

    def probe(self, dists: list[str]) -> dict:
        res = subprocess.run([self.python, "-c", PROBE, json.dumps(MODULES), json.dumps(dists)],
                             env=self.environ(), capture_output=True, text=True, timeout=300)
        line = [s for s in res.stdout.splitlines() if s.startswith("PROBE ")]
        if not line:
            raise SystemExit(f"the probe of {self.python} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        return json.loads(line[-1][len("PROBE "):])


def failing(probe: dict) -> list[str]:
    bad = [f"import {m}: {e}" for m, e in probe["imports"].items() if e]
    bad += [f"plugin {p}: {'; '.join(e)}" for p, e in probe["plugins"].items() if e]
    bad += [f"plugin {p}: not found (no entry point)" for p in PLUGINS if p not in probe["plugins"]]
    return bad


def pip_install(python: str, site: Path, wheels: list[Path], env: dict) -> None:
    cmd = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, wheels)]
    print("$ " + shlex.join(cmd[:12]) + f" ... ({len(wheels)} wheels)", flush=True)
    subprocess.run(cmd, check=True, env=env)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default="python3", help="the interpreter the GPU check runs (default python3)")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--site", type=Path, help="where metadata and wheels go (default ROOT/.gpu_site)")
    p.add_argument("--wheels", type=Path, help="folder of wheels (default ROOT/.gpu_wheels)")
    p.add_argument("--env-file", type=Path, help="write the export lines to source here")
    args = p.parse_args(argv)
    root = args.root.resolve()
    site = (args.site or root / ".gpu_site").resolve()
    wheel_dir = (args.wheels or root / ".gpu_wheels").resolve()
    projects = [root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]
    infos = {norm(read_project(pp)["name"]): (pp, read_project(pp)) for pp in projects}
    wheels = {wheel_dist(w): w for w in sorted(wheel_dir.glob("*.whl"))} if wheel_dir.is_dir() else {}
    dists = sorted(set(infos) | {n for n, _ in wheels})
    report = {"site": str(site), "wheels": str(wheel_dir) if wheels else None, "actions": []}

    env = Env(args.python, [])
    probe = env.probe(dists)
    if probe["imports"].get("mmtok"):
        env.paths = [str(root)] + [str(pp.parent / "src") for pp, _ in infos.values() if (pp.parent / "src").is_dir()]
        report["actions"].append("PYTHONPATH += the checkout and plugins/*/src (mmtok is not installed)")
        probe = env.probe(dists)
    missing_meta = [n for n in infos if probe["dists"].get(n) is None]
    if missing_meta:
        for n in missing_meta:
            write_dist_info(site, infos[n][1])
        report["actions"].append(f"wrote entry-point metadata into {site} for {', '.join(missing_meta)}")
    if missing_meta or site.is_dir():
        env.paths.insert(0, str(site))
        probe = env.probe(dists)
    for attempt in ("missing", "other version"):
        if not failing(probe) or not wheels:
            break
        if attempt == "missing":
            pick = [w for (n, v), w in wheels.items() if probe["dists"].get(n) is None]
        else:
            pick = [w for (n, v), w in wheels.items() if probe["dists"].get(n) not in (None, v)]
        if not pick:
            continue
        if str(site) not in env.paths:
            env.paths.insert(0, str(site))
        pip_install(args.python, site, pick, env.environ())
        report["actions"].append(f"pip install --target {site} ({attempt}): "
                                 + ", ".join(f"{n}=={v}" for (n, v) in wheels if wheels[(n, v)] in pick))
        probe = env.probe(dists)

    bad = failing(probe)
    report.update({"pythonpath": env.paths, "python": probe["python"], "problems": bad,
                   "dists": probe["dists"], "plugins": {k: (v or "ok") for k, v in probe["plugins"].items()}})
    if args.env_file:
        lines = ["# written by benchmarks/gpu_env.py"]
        if env.paths:
            joined = os.pathsep.join(shlex.quote(x) for x in env.paths)
            lines.append(f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"')
        args.env_file.write_text("\n".join(lines) + "\n")
    print(json.dumps(report, indent=1))
    if bad and not wheels and not wheel_dir.is_dir():
        print(f"\n{wheel_dir} does not exist: fetch the wheels where pip works (bash benchmarks/gpu_wheels.sh) "
              "and carry them along", file=sys.stderr)
    for line in bad:
        print("PROBLEM " + line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
