"""Root conftest: plugins every pytest process (xdist's controller too) must load."""

# The conformance report hooks must live in the controller process under xdist, which does not
# collect and so never loads tests/conformance/conftest.py: register them as a plugin here.
pytest_plugins = ["tests.conformance.report"]
