"""Thesis-VFI model package: ``ThesisModel`` and ``build_model``; pure tensor ops live in ``model.ops``."""

from .thesis import InterpolationOutput, ThesisModel, build_model, count_parameters

__all__ = ["ThesisModel", "InterpolationOutput", "build_model", "count_parameters"]
