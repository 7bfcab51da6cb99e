"""Provider image bytes: real size measured, truncation caught, conversion to the asked format."""

from __future__ import annotations

import pytest

from imagegate.grpckit import reasons
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.images import normalize_image, sniff_format
from imagegate.providerkit.types import OutputFormat
from services.local.render import render

FORMATS = [OutputFormat.PNG, OutputFormat.JPEG, OutputFormat.WEBP]


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_image_is_measured_and_passed_through(fmt):
    data = render("chest", 160, 96, 3, fmt)
    image = normalize_image(data, fmt)
    assert (image.width, image.height, image.format) == (160, 96, fmt)
    assert image.data == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_image_is_a_bad_response(fmt):
    data = render("chest", 160, 96, 3, fmt)
    with pytest.raises(ProviderError) as info:
        normalize_image(data[: len(data) // 2], fmt)
    assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE


@pytest.mark.parametrize(("given", "wanted"), [(a, b) for a in FORMATS for b in FORMATS if a != b])
def test_mislabelled_or_other_format_is_converted(given, wanted):
    image = normalize_image(render("chest", 64, 48, 1, given), wanted)
    assert sniff_format(image.data) is wanted
    assert (image.width, image.height) == (64, 48)


def test_bytes_that_are_not_an_image_are_a_bad_response():
    with pytest.raises(ProviderError) as info:
        normalize_image(b"<html>gateway timeout</html>", OutputFormat.PNG)
    assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE
