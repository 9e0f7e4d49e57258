"""Tests of shoal.images (a package, so its conftest is `images.conftest` and does not shadow
the top-level `conftest` that other test directories import from)."""
