from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablate.data import make_synthetic

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip that says why (the data is not part of the project)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real-data tests need ../shared/data beside the project")
    return path


# the trainer's CPU setting (ablate.train.seed_everything), for tests that drive models directly
torch.use_deterministic_algorithms(True, warn_only=True)


@pytest.fixture(scope="session")
def tiny():
    """A small synthetic dataset: fast enough for per-model tests."""
    return make_synthetic(n_users=120, n_items=90, interactions_per_user=10, text_dim=24, image_dim=40, seed=3)
