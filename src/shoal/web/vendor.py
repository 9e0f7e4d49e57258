"""Copies the web UI's third-party browser files from npm into the package.

The front-end packages are pinned in ``web/package.json`` and ``web/package-lock.json`` and come
from npm only; none of their code is kept in git. ``install_vendor`` runs ``npm ci`` when
``web/node_modules`` is missing or older than the lock file, then copies only what the browser
loads into ``src/shoal/web/static/vendor/`` (served as ``/ui/vendor/``):

- ``novnc/core/rfb.js``: native ES module, ``export default class RFB``; its relative imports
  stay inside ``novnc/core/`` and ``novnc/vendor/pako/``.
- ``xterm/xterm.js`` and ``xterm/xterm.css``: UMD build, a classic script that sets the globals
  ``Terminal`` and friends (xterm 5 ships no ES module build).
- ``xterm-addon-fit/addon-fit.js``: UMD build, a classic script that sets ``FitAddon``
  (use ``new FitAddon.FitAddon()``).

Run it as ``python -m shoal.web.vendor``; ``setup.py`` runs it before a wheel is built. It imports
nothing but the standard library, so ``setup.py`` can load it by path.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# src/shoal/web/vendor.py -> the checkout's root, where web/package.json lives
DEFAULT_WEB_DIR = _HERE.parents[2] / "web"
DEFAULT_DEST = _HERE / "static" / "vendor"

# (package in node_modules, directory under dest, {path in package: path under that directory})
# A path ending in "/" is a tree copied whole.
_COPIES: tuple[tuple[str, str, dict[str, str]], ...] = (
    (
        "@novnc/novnc",
        "novnc",
        {
            "core/": "core/",
            "vendor/pako/": "vendor/pako/",
            "LICENSE.txt": "LICENSE.txt",
            "AUTHORS": "AUTHORS",
            "docs/LICENSE.MPL-2.0": "docs/LICENSE.MPL-2.0",
            "docs/LICENSE.BSD-2-Clause": "docs/LICENSE.BSD-2-Clause",
            "docs/LICENSE.BSD-3-Clause": "docs/LICENSE.BSD-3-Clause",
            "docs/LICENSE.OFL-1.1": "docs/LICENSE.OFL-1.1",
        },
    ),
    (
        "@xterm/xterm",
        "xterm",
        {"lib/xterm.js": "xterm.js", "css/xterm.css": "xterm.css", "LICENSE": "LICENSE"},
    ),
    (
        "@xterm/addon-fit",
        "xterm-addon-fit",
        {"lib/addon-fit.js": "addon-fit.js", "LICENSE": "LICENSE"},
    ),
)

# Files npm writes into node_modules on every install: its age is the install's age.
_INSTALL_STAMP = Path("node_modules") / ".package-lock.json"


def _needs_npm_ci(web_dir: Path) -> bool:
    stamp = web_dir / _INSTALL_STAMP
    if not stamp.is_file():
        return True
    return stamp.stat().st_mtime < (web_dir / "package-lock.json").stat().st_mtime


def _npm_ci(web_dir: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (make web-deps installs it with apt)")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=web_dir, check=True)


def install_vendor(web_dir: Path = DEFAULT_WEB_DIR, dest: Path = DEFAULT_DEST) -> None:
    """Install ``web_dir``'s locked npm packages if needed and copy the browser's files to
    ``dest``, replacing whatever was there."""
    if not (web_dir / "package-lock.json").is_file():
        raise FileNotFoundError(f"{web_dir / 'package-lock.json'} not found")
    if _needs_npm_ci(web_dir):
        _npm_ci(web_dir)
    staging = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for package, subdir, paths in _COPIES:
        src_root = web_dir / "node_modules" / package
        for src_rel, dst_rel in paths.items():
            src, dst = src_root / src_rel, staging / subdir / dst_rel
            if src_rel.endswith("/"):
                shutil.copytree(src, dst)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shoal.web.vendor",
        description="Copy the web UI's npm packages into static/vendor/.",
    )
    parser.add_argument("--web-dir", type=Path, default=DEFAULT_WEB_DIR)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    try:
        install_vendor(args.web_dir, args.dest)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"shoal.web.vendor: {e}", file=sys.stderr)
        return 1
    print(f"vendor files in {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
