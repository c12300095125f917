"""The end-to-end demo: every stage on the shapes world in one run directory, then a report (see `runner`)."""

from mmgen.demo.runner import run_demo

__all__ = ["run_demo"]
