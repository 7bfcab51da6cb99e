"""The CLI's cost views over a real stack: `usage` keeps tenant charge and provider cost apart,
`admin prices` lists every entry with its standing, `admin margin` exports the month."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from imagegate.cli.account import cmd_usage
from imagegate.cli.admin import cmd_admin
from imagegate.cli.args import parse
from imagegate.cli.connection import Connection
from imagegate.cli.generate import build_request
from imagegate.emulators.base import Fault
from imagegate.router.v1 import router_pb2
from services.metering.catalog import load_catalog
from tests.cost.stack import cost_stack


@pytest.mark.timeout(90)
async def test_usage_prices_and_margin_show_charge_and_cost_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with cost_stack(tmp_path, f"sqlite:///{tmp_path / 'm.db'}") as stack:
        # fal's result URL expires (fal bills the job), Together then delivers.
        stack.emulators["fal"].faults.set(Fault("expired_url", count=1))
        resp = await stack.router.GenerateImage(
            router_pb2.GenerateImageRequest(
                request_id="cli-1",
                prompt="a lighthouse",
                model="flux-schnell",
                allowed_providers=["fal", "together"],
                width=1024,
                height=768,
            ),
            metadata=stack.auth,
            timeout=30,
        )
        assert resp.provider == "together" and resp.cost_micros == 2_700
        monkeypatch.setenv("IMAGEGATE_API_KEY", stack.api_key)
        monkeypatch.setenv("IMAGEGATE_ADMIN_TOKEN", "admin-cost")
        conn = Connection(
            router_addr=stack.addresses["router"],
            quota_addr=stack.addresses["quota"],
            metering_addr=stack.addresses["metering"],
            data_dir=tmp_path,
        )
        capsys.readouterr()
        assert await cmd_usage(parse(["usage", "--format", "csv"]), conn) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert [(r["request_id"], r["provider"]) for r in rows] == [("cli-1", "together")]
        # The tenant pays Together's 1 MP; the gateway also pays fal's billed job.
        assert rows[0]["tenant_charge_usd"] == "0.002700"
        assert rows[0]["provider_cost_usd"] == "0.005700"
        assert rows[0]["failed_attempt_cost_usd"] == "0.003000"
        assert await cmd_usage(parse(["usage"]), conn) == 0
        text = capsys.readouterr().out
        assert "tenant charge $0.0027" in text and "provider cost $0.0057" in text

        assert await cmd_admin(parse(["admin", "prices", "--format", "json"]), conn) == 0
        prices = json.loads(capsys.readouterr().out)["prices"]
        # The listing marks exactly the entries the catalog marks confirmed, and no others.
        confirmed = {p.id for p in load_catalog().prices if p.confirmed}
        assert confirmed and {p["id"] for p in prices if p.get("confirmed")} == confirmed
        assert all(p["effective_from"] and p["source"] for p in prices)
        assert await cmd_admin(parse(["admin", "prices"]), conn) == 0
        listing = capsys.readouterr().out
        assert "UNCONFIRMED" in listing and "current" in listing

        month = rows[0]["time"][:7]
        assert (
            await cmd_admin(parse(["admin", "margin", "--month", month, "--format", "csv"]), conn)
            == 0
        )
        margin = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        total = margin[-1]
        assert total["plan"] == "ALL" and total["images"] == "1"
        assert total["revenue_usd"] == "99.000000"  # one business tenant
        assert total["provider_cost_usd"] == "0.005700"
        assert total["failed_attempt_cost_usd"] == "0.003000"
        assert total["gross_margin_usd"] == "98.994300"
        assert total["cost_by_provider"] == "fal=0.003000 together=0.002700"


def test_generate_quality_flag_sets_the_request_and_refuses_unknown_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert build_request(parse(["estimate", "x", "--quality", "high"])).quality == "high"
    assert build_request(parse(["estimate", "x"])).quality == ""
    with pytest.raises(SystemExit) as info:
        parse(["estimate", "x", "--quality", "ultra"])
    assert info.value.code == 2 and "--quality" in capsys.readouterr().err
