"""Which processes make up the local stack, their addresses and their environment."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from imagegate.grpckit.address import check_address
from imagegate.grpckit.errors import ImagegateError
from imagegate.telemetry.setup import env_key
from imagegate.textproviders import KEY_VARS as TEXT_KEY_VARS


@dataclass(frozen=True)
class ServiceSpec:
    """One process of the stack."""

    name: str
    """Short name used as the log prefix, e.g. "router"."""
    module: str
    """Python module run with `python -m`."""
    addr_var: str
    """Variable holding its listen address."""
    default_port: int
    """Port used when the variable is not set."""
    health_service: str
    """gRPC health service name that reports SERVING once it is ready ("" = whole server)."""
    key_var: str = ""
    """For hosted adapters: the key variable that enables it (for self-hosted ones: the model
    directory or server URL)."""


CORE = (
    ServiceSpec("quota", "services.quota", "IMAGEGATE_QUOTA_ADDR", 50052, ""),
    ServiceSpec("metering", "services.metering", "IMAGEGATE_METERING_ADDR", 50053, ""),
    ServiceSpec("local", "services.local", "IMAGEGATE_LOCAL_ADDR", 50060, ""),
)
ADAPTERS = (
    ServiceSpec("fal", "services.fal", "IMAGEGATE_FAL_ADDR", 50061, "", "FAL_KEY"),
    ServiceSpec("huggingface", "services.huggingface", "IMAGEGATE_HF_ADDR", 50062, "", "HF_TOKEN"),
    ServiceSpec(
        "replicate",
        "services.replicate",
        "IMAGEGATE_REPLICATE_ADDR",
        50063,
        "",
        "REPLICATE_API_TOKEN",
    ),
    ServiceSpec("bfl", "services.bfl", "IMAGEGATE_BFL_ADDR", 50064, "", "BFL_API_KEY"),
    ServiceSpec("openai", "services.openai", "IMAGEGATE_OPENAI_ADDR", 50065, "", "OPENAI_API_KEY"),
    ServiceSpec(
        "together", "services.together", "IMAGEGATE_TOGETHER_ADDR", 50066, "", "TOGETHER_API_KEY"
    ),
)
# Started when any text provider key is set; the Router dials it at IMAGEGATE_ENHANCER_ADDR.
ENHANCER = ServiceSpec("enhancer", "services.enhancer", "IMAGEGATE_ENHANCER_ADDR", 50070, "")
# The team's own capacity: started when their weights directory or server URL is set.
SELF_HOSTED = (
    ServiceSpec(
        "diffusers",
        "services.diffusers",
        "IMAGEGATE_DIFFUSERS_ADDR",
        50067,
        "",
        "IMAGEGATE_DIFFUSERS_MODEL_PATH",
    ),
    ServiceSpec(
        "comfyui",
        "services.comfyui",
        "IMAGEGATE_COMFYUI_ADDR",
        50068,
        "",
        "IMAGEGATE_COMFYUI_BASE_URL",
    ),
)
ROUTER = ServiceSpec("router", "services.router", "IMAGEGATE_ROUTER_ADDR", 50051, "")


def free_port() -> int:
    """A port the kernel says is free now (tests use it to run stacks side by side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan_stack(
    env: Mapping[str, str], *, auto_ports: bool = False
) -> tuple[list[ServiceSpec], dict[str, str]]:
    """The processes to start (core, enabled adapters, router last) and their shared environment.

    Hosted adapters are started only when their key variable is set, self-hosted ones when their
    weights directory or server URL is; the local placeholder always is.
    The prompt enhancer is started when at least one text provider key (GROQ_API_KEY, ...) is set;
    without one the Router has no enhancer and answers enhance requests with the original prompt
    and a notice.
    Raises ValueError naming the variable when a listen address is not host:port.
    """
    out = dict(env)
    enabled = [a for a in (*SELF_HOSTED, *ADAPTERS) if env.get(a.key_var)]
    enhancer = [ENHANCER] if any(env.get(v) for v in TEXT_KEY_VARS) else []
    if not enhancer:
        # A stale address from the shell would make the Router dial an enhancer that is not there.
        out.pop(ENHANCER.addr_var, None)
    specs = [*CORE, *enabled, *enhancer, ROUTER]
    for spec in specs:
        metrics_var = f"IMAGEGATE_{env_key(spec.name)}_METRICS_ADDR"
        if auto_ports:
            out[spec.addr_var] = f"127.0.0.1:{free_port()}"
            # Side-by-side stacks (tests, benchmarks) must not fight over the fixed metrics ports.
            out[metrics_var] = f"127.0.0.1:{free_port()}"
        else:
            out.setdefault(spec.addr_var, f"127.0.0.1:{spec.default_port}")
            try:
                check_address(out[spec.addr_var], variable=spec.addr_var, allow_zero=True)
            except ImagegateError as err:
                raise ValueError(err.message) from None
    # A fresh internal-call secret per run, never a fixed default (docs/security.md).
    if not out.get("IMAGEGATE_SERVICE_TOKEN"):
        out["IMAGEGATE_SERVICE_TOKEN"] = "igsvc_" + secrets.token_urlsafe(32)
    out.setdefault(
        "IMAGEGATE_ROUTER_ADAPTERS",
        ",".join(f"{s.name}={out[s.addr_var]}" for s in specs if s in (CORE[2], *enabled)),
    )
    return specs, out


def default_env() -> dict[str, str]:
    """This process's environment."""
    return dict(os.environ)
