"""The wheels the GPU check needs on a machine without network (`make gpu-wheels`), and a rehearsal of it here.

    python benchmarks/gpu_wheels.py gather wheels    # download / build them into wheels/ (git-ignored)
    python benchmarks/gpu_wheels.py check wheels     # install them offline beside a copy of the GPU machine's
                                                     # packages, then run the check's imports and --tiny

The GPU machine (docs/performance.md) has Python 3.12 with DEVICE's packages (and what they need: numpy,
pillow, pyyaml ...). Everything else this project imports travels as wheels: pyproject.toml's dependencies
that are not DEVICE's, with their own dependencies, and pytest for the CUDA tests; those that exist only as
source (antlr4-python3-runtime, Hydra's parser runtime) are built into wheels here. filelock, tabulate and
tqdm are DEVICE's but travel too, so that an older copy there (SoftFileLease needs filelock >= 3.30) is
replaced in the check's environment. All of them are pure Python (py3-none-any) but pyyaml, fetched for
CPython 3.12 on manylinux x86_64 (and for this interpreter, for the rehearsal).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib  # Python >= 3.11 (the GPU machine has 3.12)
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ("torch", "torchvision", "timm", "pandas", "scipy", "scikit-learn", "matplotlib", "tabulate", "filelock",
          "tqdm")  # what the GPU machine has (its description); numpy, pillow, pyyaml come with them
TRAVEL = ("filelock", "tabulate", "tqdm", "pyyaml")  # DEVICE's (or their dependency) too: wheels in case of old copies
SOURCE_ONLY = ("antlr4-python3-runtime==4.9.3",)  # omegaconf 2.3 pins antlr4 4.9.*, published as an sdist only
NO_DEPS = ("zuko",)  # its dependencies (torch, numpy) are DEVICE's: fetched alone, not with a second torch
TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--platform",
          "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64"]


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirements() -> list[str]:
    """What the check installs: pyproject's dependencies but DEVICE's big ones, plus pytest."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    keep = [r for r in project["dependencies"]
            if canonical(Requirement(r).name) not in set(map(canonical, DEVICE)) - set(TRAVEL)
            and canonical(Requirement(r).name) not in ("numpy", "pillow")]
    tests = [r for r in project["optional-dependencies"]["test"] if canonical(Requirement(r).name) == "pytest"]
    return keep + tests


def pip(*args: str) -> None:
    print("+ pip " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def gather(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    (folder / "requirements.txt").write_text("\n".join(reqs) + "\n")
    pip("wheel", "--no-deps", "-q", "-w", str(folder), *SOURCE_ONLY)
    with_deps = [r for r in reqs if canonical(Requirement(r).name) not in NO_DEPS]
    alone = [r for r in reqs if canonical(Requirement(r).name) in NO_DEPS]
    common = ["download", "-q", "-d", str(folder), "--only-binary=:all:", "--find-links", str(folder)]
    pip(*common, *TARGET, *with_deps)
    pip(*common, *TARGET, "--no-deps", *alone)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != "3.12":  # the rehearsal runs on this interpreter: its build of the one binary wheel
        pip(*common, "--no-deps", "pyyaml>=6")
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    print(f"{folder}: {len(wheels)} wheels, {size / 2**20:.1f} MiB: {', '.join(wheels)}")


def closure(names) -> list[md.Distribution]:
    """The installed distributions `names` need, themselves included, following the extras they ask for
    (torch's `cuda-toolkit[cublas, ...]`); markers evaluated here."""
    seen, todo, out = {}, [(n, ()) for n in names], []
    while todo:
        name, extras = todo.pop()
        name = canonical(name)
        if name in seen and set(extras) <= seen[name]:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        if name not in seen:
            out.append(dist)
        seen[name] = seen.get(name, set()) | set(extras)
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *extras)):
                todo.append((r.name, tuple(r.extras)))
    return out


def device_site(folder: Path) -> None:
    """A site folder with links to this environment's copies of DEVICE's packages and what they need."""
    for dist in closure(DEVICE):
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if not f.parts[0].startswith("..")}:
            if (base / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(base / top)


def check(folder: Path) -> None:
    """The GPU machine's command rehearsed: a fresh venv whose only packages are links to DEVICE's (a .pth),
    then benchmarks/gpu_check.sh in it with --tiny: the wheels installed with --no-index, the CUDA tests
    (skipped without a GPU: their imports and collection are what is checked), gpu.py; then the package's
    imports. The machine's Python is 3.12, this one may differ: only pyyaml's wheel depends on it."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "device").mkdir()
        device_site(tmp / "device")
        subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(tmp / "venv")], check=True)
        py = tmp / "venv" / "bin" / "python"
        site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        (Path(site) / "device.pth").write_text(str(tmp / "device") + "\n")
        alone = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL",
                                                                  "PIP_EXTRA_INDEX_URL")}
        alone["PIP_CONFIG_FILE"] = os.devnull  # the wheels and nothing else: no find-links of this machine's
        # a 3.12 venv has pip alone; an older one also has its own old setuptools, which would hide DEVICE's
        subprocess.run([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=False, env=alone)
        imports = ("import bench.cli, bench.job, bench.methods.flow, bench.sweep.status, hydra, "
                   "hydra_plugins.hydra_submitit_launcher, submitit, zuko, pytest")
        env = alone | {"PYTHON": str(py), "VENV": "", "OUT": str(tmp / "out"), "LIMIT_S": "400", "OMP_NUM_THREADS": "1"}
        # the GPU machine's command itself, but its venv: install, CUDA tests (skipped here), gpu.py --tiny
        subprocess.run(["sh", "benchmarks/gpu_check.sh", "--tiny", "--workers", "0", "--config-workers", "0"],
                       check=True, env=env, cwd=ROOT)
        subprocess.run([py, "-c", imports], check=True, env=env | {"PYTHONPATH": str(ROOT)}, cwd=ROOT)
        # its other way: a venv that cannot see DEVICE's packages (python3 itself a venv's), so the wheels go
        # into a folder on PYTHONPATH; one section of gpu.py
        fallback = env | {"VENV": str(tmp / "venv2"), "SITE": str(tmp / "site"), "OUT": str(tmp / "out2")}
        subprocess.run(["sh", "benchmarks/gpu_check.sh", "--tiny", "--only", "probe"], check=True, env=fallback,
                       cwd=ROOT)
        if "(.gpu-venv" in (tmp / "out2" / "install.txt").read_text() or not (tmp / "site" / "hydra").is_dir():
            raise SystemExit("the rehearsal of the --target install did not install into its folder")
        report = json.loads((tmp / "out" / "gpu.json").read_text())
        if report["errors"] or "skipped" not in (tmp / "out" / "cuda-tests.txt").read_text():
            raise SystemExit(f"the rehearsal failed: {report['errors'] or 'the CUDA tests did not run'}")
    print(f"{folder}: installed offline beside the GPU machine's packages; benchmarks/gpu_check.sh --tiny ran")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["gather", "check", "requirements"])
    p.add_argument("folder", type=Path, nargs="?", default=ROOT / "wheels")
    args = p.parse_args()
    if args.action == "requirements":
        print("\n".join(requirements()))
    else:
        {"gather": gather, "check": check}[args.action](args.folder)


if __name__ == "__main__":
    main()
