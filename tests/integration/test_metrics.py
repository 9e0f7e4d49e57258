"""What the controller tells about its own requests: the Prometheus histogram per route, and the
Server-Timing header on every answer."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import InProcessController


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    with InProcessController(Path(tmp_path_factory.mktemp("metrics"))) as running:
        yield running


def test_answers_carry_the_servers_time(controller: InProcessController) -> None:
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    for path in ("/apis/shoal.dev/v1/namespaces/default", "/apis/shoal.dev/v1/namespaces/nope"):
        response = httpx.get(controller.url + path, headers=headers)
        name, _, duration = response.headers["server-timing"].partition(";dur=")
        assert name == "app"
        assert float(duration) >= 0


def test_metrics_count_requests_by_route_and_code(controller: InProcessController) -> None:
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    for _ in range(3):
        httpx.get(controller.url + "/apis/shoal.dev/v1/nodes/absent", headers=headers)
    assert httpx.get(controller.url + "/metrics").status_code == 401
    text = httpx.get(controller.url + "/metrics", headers=headers).text
    route = 'method="GET",route="/apis/shoal.dev/v1/nodes/{name}"'
    assert f'shoal_http_requests_total{{{route},code="404"}} 3' in text
    assert f"shoal_http_request_duration_seconds_count{{{route}}} 3" in text
    assert f'shoal_http_request_duration_seconds_bucket{{{route},le="+Inf"}} 3' in text
    assert 'shoal_objects{kind="Namespace"}' in text
