"""What `make fuzz` found, kept as regressions, plus a short derandomized run of every target."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import adapter_responses, router_validation
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2
from services.router.validation import normalize

# Same examples on every run; no example database (CI must not depend on an earlier run).
SHORT = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("field", ["model", "style"])
def test_an_overlong_model_or_style_is_refused_without_echoing_it(field: str):
    # Found by `make fuzz`: a 10 kB name came back in a 20 kB status, past the 8 KiB of
    # trailers a gRPC client accepts, so the caller saw a transport error instead of the reason.
    req = router_pb2.GenerateImageRequest(prompt="0", **{field: "y" * 10_000})
    with pytest.raises(ImagegateError) as err:
        normalize(req, router_validation.catalog())
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == reasons.INVALID_ARGUMENT
    assert [v.field for v in err.value.field_violations] == [field]
    assert len(err.value.to_status_proto().SerializeToString()) < 1024
    router_validation.check_request(req)


@pytest.mark.parametrize("request_id", ["a\x00b", "a\nb", "x" * 129, "é"])
def test_request_ids_outside_the_charset_keep_the_property(request_id: str):
    assert (
        router_validation.check_request(
            router_pb2.GenerateImageRequest(request_id=request_id, prompt="fox")
        )
        == reasons.INVALID_ARGUMENT
    )


@SHORT
@given(router_validation.requests())
def test_router_validation_refuses_cleanly_or_normalizes_safely(req):
    router_validation.check_request(req)


@SHORT
@given(st.binary(max_size=256))
def test_router_validation_holds_for_any_bytes_on_the_wire(data):
    router_validation.check_wire(data)


@pytest.mark.parametrize("name", sorted(adapter_responses.ADAPTERS))
def test_adapter_turns_any_provider_answer_into_a_result_or_a_provider_error(name: str):
    @settings(SHORT, max_examples=10)
    @given(adapter_responses.scripts(name))
    def run(pair):
        adapter_responses.check_adapter(name, *pair)

    run()


@pytest.mark.parametrize("name", sorted(adapter_responses.ADAPTERS))
def test_adapter_recorded_happy_path_succeeds_unmutated(name: str):
    # The fuzz base line: without a mutation the recorded answers make a success, so mutated
    # runs start from the deep parsing paths, not from the first error branch.
    request = adapter_responses.happy_request(adapter_responses.build(name))
    happy = adapter_responses.recorded(name, request)
    assert adapter_responses.check_adapter(name, request, happy) == "ok"


def test_together_answer_with_an_empty_data_list_is_a_bad_response():
    # Found by `make fuzz`: HTTP 200 with `"data": []` came back as a success with no image.
    adapter = adapter_responses.build("together")
    request = adapter_responses.happy_request(adapter)
    empty = adapter_responses.Answer(
        200,
        b'{"id": "tg-1", "model": "black-forest-labs/FLUX.1-schnell", "object": "list", "data": []}',
        "application/json",
        None,
    )
    assert adapter_responses.check_adapter("together", request, [empty]) == (
        reasons.PROVIDER_BAD_RESPONSE
    )
