"""A bounded fuzz of what kubectl-shaped clients send to the discovery, Table and OpenAPI v3
routes: arbitrary Accept headers, includeObject values, selectors and paths. Never a 5xx; a
Table answer is a well-formed Table of as many rows as the list has items."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import InProcessController
from shoal.model.registry import KINDS

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    data_dir: Path = tmp_path_factory.mktemp("kubefuzz")
    with InProcessController(data_dir) as running:
        client = running.client()
        for i in range(3):
            client.create(
                "virtualmachines",
                {"metadata": {"name": f"vm-{i}", "labels": {"i": str(i)}},
                 "spec": {"image": "x:1"}},
                "default",
            )  # fmt: skip
        yield running


media_parts = st.sampled_from(
    [TABLE, AGGREGATED, "application/json", "*/*", "application/yaml",
     "application/json;as=Table;v=v1beta1;g=meta.k8s.io", "application/json;as=Table",
     "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList",
     "application/vnd.kubernetes.protobuf", "text/html;q=0.9", ";;;", "as=Table;v=v1"]
)  # fmt: skip
# What can be in a header value: visible ASCII and inner spaces.
header_text = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
accepts = st.lists(st.one_of(media_parts, header_text), max_size=4).map(",".join)
paths = st.sampled_from(
    ["/api", "/api/v1", "/apis", "/apis/shoal.dev", "/apis/shoal.dev/v1", "/version",
     "/openapi/v3", "/openapi/v3/apis/shoal.dev/v1", "/api/v1/events",
     "/api/v1/namespaces/default/events", "/apis/shoal.dev/v1/namespaces/default/virtualmachines/vm-1"]
    + [f"/apis/shoal.dev/v1/{info.plural}" for info in KINDS]
)  # fmt: skip
include = st.one_of(st.none(), st.sampled_from(["None", "Metadata", "Object"]), st.text(max_size=8))
selectors = st.one_of(st.none(), st.sampled_from(["i=1", "i in (0,2)", "!i", "i=", "=", "a b"]))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
@given(path=paths, accept=accepts, include_object=include, selector=selectors)
def test_discovery_and_tables_never_fail(
    controller: InProcessController,
    path: str,
    accept: str,
    include_object: str | None,
    selector: str | None,
) -> None:
    params = {
        key: value
        for key, value in (("includeObject", include_object), ("labelSelector", selector))
        if value is not None
    }
    headers = {"Authorization": f"Bearer {controller.admin_token}", "Accept": accept}
    answer = httpx.get(controller.url + path, params=params, headers=headers, timeout=30)
    assert answer.status_code < 500, (path, accept, params, answer.text[:500])
    if answer.status_code != 200:
        assert answer.json()["kind"] == "Status", (path, accept, params, answer.status_code)
        return
    body = answer.json()
    if answer.headers["content-type"].startswith(TABLE):
        assert body["kind"] == "Table"
        width = len(body["columnDefinitions"])
        assert all(len(row["cells"]) == width for row in body["rows"])
        plain = httpx.get(
            controller.url + path,
            params={k: v for k, v in params.items() if k != "includeObject"},
            headers={"Authorization": headers["Authorization"]},
            timeout=30,
        ).json()
        expected = len(plain["items"]) if "items" in plain else 1
        assert len(body["rows"]) == expected
    if answer.headers["content-type"] == AGGREGATED:
        assert body["kind"] == "APIGroupDiscoveryList"
