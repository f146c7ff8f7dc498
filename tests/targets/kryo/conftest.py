"""Fixtures of the kryo tests: an isolated compile cache and each vector ISA the host runs."""

import pytest

pytest.importorskip("llvmlite")

from qir.targets.kryo.host import available_isas  # noqa: E402

# AVX2 code runs on AVX-512 hosts too, so both are covered where the host allows.
ISAS = [i for i in available_isas() if i != "sse"] or ["sse"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QIR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "qir-cache"))


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    monkeypatch.setenv("QIR_KRYO_ISA", request.param)
    return request.param
