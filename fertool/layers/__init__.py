"""Reusable building blocks of the networks (layers know nothing of recipes)."""

from .lhc import LHC

__all__ = ["LHC"]
