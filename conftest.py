"""Doctest namespace: the public API and torch, as a user would import them."""

import pytest
import torch

import cuvis_dsl


@pytest.fixture(autouse=True)
def _public_names(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    for name in cuvis_dsl.__all__:
        doctest_namespace[name] = getattr(cuvis_dsl, name)
