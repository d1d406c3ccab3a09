"""The API key: refused when empty, accepted in either header, compared in constant time."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sglbench.runtime.models.synthetic import make_random_checkpoint
from sglbench.runtime.runtime import Runtime
from sglbench.server.app import build_app, serve


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = make_random_checkpoint(tmp_path_factory.mktemp("auth"), family="llama", seed=3)
    with Runtime(str(path), device="cpu", max_total_tokens=1024) as runtime:
        yield runtime


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_key_is_refused_before_serving(rt, key):
    with pytest.raises(ValueError, match="api_key is empty"):
        build_app(rt, api_key=key)
    with pytest.raises(ValueError, match="api_key is empty"):
        serve(None, api_key=key)  # refused before any model loads or port opens


def test_the_key_is_taken_from_either_header_and_only_whole(rt):
    with TestClient(build_app(rt, api_key="s3cret")) as client:
        ok = [client.get("/get_model_info", headers=h).status_code
              for h in ({"Authorization": "Bearer s3cret"}, {"authorization": "bearer s3cret"}, {"X-API-Key": "s3cret"})]
        refused = [client.get("/get_model_info", headers=h).status_code
                   for h in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "Bearer s3cret2"},
                             {"Authorization": "s3cret"}, {"X-API-Key": ""})]
        assert client.get("/health").status_code == 200  # health checks stay open
    assert ok == [200, 200, 200] and refused == [401] * 5
