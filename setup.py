"""Only the package list lives here (the rest is pyproject.toml): every package under addon/
is routecar.<name>, found rather than listed, plus the shipped policies."""

from setuptools import find_packages, setup

setup(packages=["routecar", *(f"routecar.{p}" for p in find_packages("addon")), "routecar.policies"])
