"""A bounded schemathesis run over /openapi.json: no 5xx, no response that breaks the schema."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from helpers import InProcessController


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessController]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    with InProcessController(data_dir) as running:
        # Something to find, so generated names sometimes hit real objects.
        client = running.client()
        client.create("namespaces", {"metadata": {"name": "team-a"}})
        client.create(
            "virtualmachines", {"metadata": {"name": "vm-1"}, "spec": {"image": "x:1"}}, "team-a"
        )
        client.create(
            "vmconfigs",
            {"metadata": {"name": "small"}, "spec": {"image": "x:1", "cpu": 1}},
            "team-a",
        )
        client.create("serviceaccounts", {"metadata": {"name": "ci"}}, "team-a")
        yield running


MAX_EXAMPLES = 12


def test_api_never_fails_or_breaks_its_schema(controller: InProcessController) -> None:
    """Every operation, fuzzed from its schema; pytest's plugin is not used, so the run is bounded
    and independent of pytest versions."""
    api = schemathesis.openapi.from_url(controller.url + "/openapi.json")
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        @given(case=operation.as_strategy())
        def exercise(case: schemathesis.Case) -> None:
            if case.query:
                # A watch streams until the client leaves; its behaviour has its own tests.
                case.query.pop("watch", None)
            case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
                timeout=30,
            )

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as error:
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    assert operations > 40
    assert not failures, "\n\n".join(failures)
