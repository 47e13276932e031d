"""Test setup: gevent first (before anything imports ssl/socket), shared fixtures after."""
from gevent import monkey

monkey.patch_all()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo (reference captures and speech clips); skips when absent."""
    if not (SHARED / "captures").is_dir():
        pytest.skip("../shared is not present beside the repo")
    return SHARED
