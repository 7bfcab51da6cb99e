"""Starts the imagegate stack for a scenario (whatever services exist in the tree) plus a tenant."""

from __future__ import annotations

from dataclasses import dataclass

from bench.clients import create_tenant
from bench.context import Ctx, has_module
from bench.procs import Services, base_env, start_services_retrying


@dataclass
class BenchStack:
    """Running services and the unlimited tenant the bench calls the Router as."""

    services: Services
    """The processes."""
    api_key: str
    """API key of an enterprise (unlimited) tenant; "" without Quota."""
    tenant_id: str
    """That tenant's id."""

    @property
    def has_router(self) -> bool:
        """Whether the Router runs in this stack."""
        return "router" in self.services.procs

    async def stop(self) -> None:
        """Stops every process."""
        await self.services.stop()


def full_stack_available() -> bool:
    """Whether Router, Quota and Metering have landed (each has a __main__)."""
    return all(has_module(f"services.{s}.__main__") for s in ("router", "quota", "metering"))


async def start_stack(
    ctx: Ctx, name: str, *, extra: dict[str, str] | None = None, names: list[str] | None = None
) -> BenchStack:
    """Starts quota, metering, adapters and router (or only the local adapter if they are missing)."""
    env = base_env(
        ctx.data_dir(name),
        IMAGEGATE_ADMIN_TOKEN=ctx.admin_token,
        IMAGEGATE_LOCAL_LATENCY_MS="0",
        # The bench drives up to 1,024 in flight; the adapter's own limit must not shed them.
        IMAGEGATE_LOCAL_MAX_CONCURRENCY="4096",
        **(extra or {}),
    )
    if names is None and not full_stack_available():
        names = ["local"]
    services = await start_services_retrying(env, log_dir=ctx.logs / name, names=names)
    tenant_id = api_key = ""
    if "quota" in services.procs:
        tenant_id, api_key = await create_tenant(
            services.address("quota"), ctx.admin_token, f"bench-{name}", "enterprise"
        )
    return BenchStack(services, api_key, tenant_id)
