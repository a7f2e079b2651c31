import os

import pytest

os.environ.setdefault("WSSS_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One synthetic-dataset cache for the whole test session."""
    path = tmp_path_factory.mktemp("wsss-cache")
    os.environ["WSSS_CACHE"] = str(path)
    return path
