"""Root conftest: plugins every pytest process (xdist's controller too) must load."""

# The conformance report hooks must live in the controller process under xdist, which does not
# collect and so never loads tests/conformance/conftest.py: register them as a plugin here.
pytest_plugins = ["tests.conformance.report"]


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Caches (calibration tables, compiled kernels) go to a per-run folder, never the user's."""
    import os

    os.environ["QIR_CACHE_DIR"] = str(tmp_path_factory.mktemp("qir-cache"))
    yield
