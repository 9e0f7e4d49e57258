"""Fills src/shoal/web/static/vendor/ from npm before the package's files are collected.

Everything else is in pyproject.toml. shoal.web.vendor is loaded by path: during an isolated build
the shoal package is not importable, and the module needs only the standard library.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithVendor(build_py):
    def run(self) -> None:
        # An editable install serves src/ as it is: `make web-deps` fills its vendor/ there.
        # A build from an sdist has no web/ and ships the vendor/ files the sdist carries.
        if not getattr(self, "editable_mode", False) and (ROOT / "web" / "package.json").is_file():
            spec = importlib.util.spec_from_file_location(
                "_shoal_web_vendor", ROOT / "src" / "shoal" / "web" / "vendor.py"
            )
            assert spec is not None and spec.loader is not None
            vendor = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = vendor
            spec.loader.exec_module(vendor)
            vendor.install_vendor(
                ROOT / "web", ROOT / "src" / "shoal" / "web" / "static" / "vendor"
            )
            # data_files is computed once, on first use: collect it again with the new files
            self.__dict__.pop("data_files", None)
        super().run()


setup(cmdclass={"build_py": BuildPyWithVendor})
