"""Package layout only; all metadata lives in pyproject.toml.

`data_engine/`, `eval/` and `recipes/` sit at the top of the repository (the architecture's layout) but install
as `mmgen.data_engine`, `mmgen.eval` and `mmgen.recipes`: no generic top-level `eval` module lands in site-packages.
"""

from setuptools import find_packages, setup

MAPPED = {"mmgen.data_engine": "data_engine", "mmgen.eval": "eval", "mmgen.recipes": "recipes"}

packages = find_packages(include=["mmgen", "mmgen.*"])
for target, folder in MAPPED.items():
    packages += [target + name[len(folder):] for name in find_packages(include=[folder, folder + ".*"])]

setup(
    packages=packages,
    package_dir={"mmgen": "mmgen", **MAPPED},
    package_data={"mmgen.data_engine": ["benchmarks/*.jsonl"], "mmgen.recipes": ["*/*.yaml"]},
)
