"""`imagegate admin`: tenants, plans and API keys on the Quota service."""

from __future__ import annotations

import argparse
import uuid

from imagegate.cli.connection import Connection
from imagegate.cli.costs import COST_ACTIONS, cmd_admin_costs
from imagegate.cli.keys import KEY_ACTIONS, cmd_keys
from imagegate.cli.output import table, usd
from imagegate.grpckit.channel import create_channel
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc


async def cmd_admin(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate admin ...`: tenants, plans and keys on Quota, with the admin token."""
    if args.admin_action in COST_ACTIONS:
        return await cmd_admin_costs(args, conn)
    meta = conn.admin_metadata()
    async with create_channel(conn.quota_addr, credentials=conn.credentials()) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        action = args.admin_action
        if action == "tenant-create":
            t = (
                await stub.CreateTenant(
                    quota_pb2.CreateTenantRequest(
                        request_id=args.request_id or str(uuid.uuid4()),
                        name=args.name,
                        plan=args.plan,
                    ),
                    metadata=meta,
                    timeout=10,
                )
            ).tenant
            print(f"tenant {t.name} id {t.id} plan {t.plan}")
        elif action == "tenant-list":
            resp = await stub.ListTenants(quota_pb2.ListTenantsRequest(), metadata=meta, timeout=10)
            print(table(["id", "name", "plan"], [[t.id, t.name, t.plan] for t in resp.tenants]))
        elif action == "set-plan":
            t = (
                await stub.SetTenantPlan(
                    quota_pb2.SetTenantPlanRequest(tenant_id=args.tenant_id, plan=args.plan),
                    metadata=meta,
                    timeout=10,
                )
            ).tenant
            print(f"tenant {t.name} now on plan {t.plan}")
        elif action == "plans":
            resp = await stub.ListPlans(quota_pb2.ListPlansRequest(), timeout=10)
            print(
                table(
                    ["plan", "images/month", "tiers", "price"],
                    [
                        [
                            p.id,
                            p.monthly_images or "unlimited",
                            ",".join(p.allowed_tiers) or "all",
                            usd(p.price_micros),
                        ]
                        for p in resp.plans
                    ],
                )
            )
        elif action == "key-create":
            k = await stub.CreateApiKey(
                quota_pb2.CreateApiKeyRequest(tenant_id=args.tenant_id, label=args.label or ""),
                metadata=meta,
                timeout=10,
            )
            print(f"key id {k.key_id}")
            print(f"api key (shown once): {k.api_key}")
        elif action in KEY_ACTIONS:
            return await cmd_keys(args, stub, meta)
    return 0
