"""`generate --image/--strength/--mask/--reference`: files become request bytes; bad ones exit 2."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from imagegate.cli.args import parse
from imagegate.cli.generate import build_request
from imagegate.cli.main import run


def _png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def test_input_flags_put_file_bytes_in_the_request(tmp_path: Path) -> None:
    image, mask, ref = _png(tmp_path / "i.png"), _png(tmp_path / "m.png"), _png(tmp_path / "r.png")
    args = parse(
        ["generate", "x", "-o", "o.png", "--image", str(image), "--strength", "0.6",
         "--mask", str(mask), "--reference", str(ref), "--reference", str(ref)]
    )  # fmt: skip
    req = build_request(args)
    assert req.image == image.read_bytes() and req.mask == mask.read_bytes()
    assert req.strength == pytest.approx(0.6)
    assert list(req.reference_images) == [ref.read_bytes()] * 2
    assert not req.mask_from_alpha


def test_without_input_flags_the_request_is_text_to_image(tmp_path: Path) -> None:
    req = build_request(parse(["generate", "x", "-o", "o.png"]))
    assert not req.image and not req.mask and not req.reference_images
    assert not req.HasField("strength")


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--strength", "1.5"], "--strength"),
        (["--strength", "nan"], "--strength"),
        (["--image", "/no/such/file.png"], "--image"),
        (["--image", "NOT_AN_IMAGE"], "--image"),
        (["--mask", "NOT_AN_IMAGE"], "--mask"),
        (["--reference", "NOT_AN_IMAGE"], "--reference"),
    ],
)
def test_bad_input_flags_exit_2_naming_the_flag(
    extra: list[str], flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("hello")
    argv = [
        "generate",
        "x",
        "-o",
        "o.png",
        *[str(text) if a == "NOT_AN_IMAGE" else a for a in extra],
    ]
    with pytest.raises(SystemExit) as exited:
        run(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"argument {flag}" in err and len(err.strip().splitlines()) == 1


def test_a_file_above_the_input_limit_exits_2_before_any_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEGATE_MAX_INPUT_IMAGE_BYTES", "2048")
    big = tmp_path / "big.png"
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(buf, format="PNG")
    big.write_bytes(buf.getvalue() + b"\0" * 4096)
    with pytest.raises(SystemExit) as exited:
        run(["generate", "x", "-o", "o.png", "--image", str(big)])
    assert exited.value.code == 2
    assert "argument --image" in capsys.readouterr().err
