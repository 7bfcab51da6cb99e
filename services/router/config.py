"""Settings of the Router process (IMAGEGATE_ROUTER_* plus the shared downstream addresses)."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.grpckit.address import check_address
from imagegate.grpckit.errors import ImagegateError


class RouterSettings(BaseSettings):
    """Built once in `main()` (or by a test) and passed down; never read from globals."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGEGATE_ROUTER_", extra="ignore", frozen=True, populate_by_name=True
    )

    addr: str = Field("127.0.0.1:50051", description="Listen address.")
    adapters: str = Field(
        "local=127.0.0.1:50060", description='Adapters to dial, "name=host:port,name=host:port".'
    )
    catalog: Path | None = Field(None, description="Model catalog YAML; default: the bundled one.")
    quota_addr: str = Field(
        "127.0.0.1:50052",
        validation_alias=AliasChoices("IMAGEGATE_QUOTA_ADDR", "IMAGEGATE_ROUTER_QUOTA_ADDR"),
        description="Quota service address.",
    )
    metering_addr: str = Field(
        "127.0.0.1:50053",
        validation_alias=AliasChoices("IMAGEGATE_METERING_ADDR", "IMAGEGATE_ROUTER_METERING_ADDR"),
        description="Metering service address.",
    )
    enhancer_addr: str = Field(
        "",
        validation_alias=AliasChoices("IMAGEGATE_ENHANCER_ADDR", "IMAGEGATE_ROUTER_ENHANCER_ADDR"),
        description="PromptEnhancer address; empty: no enhancer (enhance requests answer with "
        "the original prompt and a notice).",
    )
    enhance_deadline_share: float = Field(
        0.15, ge=0, le=0.5, description="Most of the remaining deadline prompt enhancement may use."
    )
    enhance_max_seconds: float = Field(
        6.0, ge=0, description="Longest prompt enhancement, whatever the deadline."
    )
    enhance_min_seconds: float = Field(
        0.25, ge=0, description="Enhancement is skipped when its share would be shorter."
    )
    enhance_max_prompt_chars: int = Field(
        1000, ge=100, le=4000, description="Longest enhanced prompt asked for, in characters."
    )
    data_dir: Path = Field(
        Path(".imagegate"),
        validation_alias=AliasChoices("IMAGEGATE_DATA_DIR", "IMAGEGATE_ROUTER_DATA_DIR"),
        description="Where the settlement outbox lives.",
    )
    max_input_image_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        validation_alias=AliasChoices(
            "IMAGEGATE_MAX_INPUT_IMAGE_BYTES", "IMAGEGATE_ROUTER_MAX_INPUT_IMAGE_BYTES"
        ),
        description="Largest input image, mask or reference image accepted, in bytes (the gRPC "
        "message limit is 64 MiB on every hop, so 1 image + 1 mask + 4 references fit).",
    )
    max_reference_images: int = Field(4, description="Most reference images in one request.")
    default_deadline_seconds: float = Field(
        60.0, description="Budget of a request whose caller set no gRPC deadline."
    )
    settle_margin_seconds: float = Field(
        0.02,
        description="Time kept back from the deadline to settle: the reply waits only for the "
        "settlement's write-ahead to the local outbox (about a millisecond); delivery to Quota "
        "and Metering happens after the reply.",
    )
    min_attempt_seconds: float = Field(
        1.0, description="Time held back for the next candidate while an earlier one runs."
    )
    hedge: bool = Field(
        True,
        description="Start the next healthy candidate when the running attempt passes its "
        "model's usual p95 latency; the first success wins, the other is cancelled.",
    )
    hedge_min_delay_seconds: float = Field(
        0.05, description="Never hedge sooner than this after an attempt starts."
    )
    attempt_bound_multiplier: float = Field(
        4.0,
        description="With a follower to fail over to, an attempt may run at most this many "
        "times its model's observed p99 latency (and at least attempt_bound_floor_seconds).",
    )
    attempt_bound_floor_seconds: float = Field(
        2.0, description="The shortest attempt bound derived from observed latency."
    )
    attempt_timeout_seconds: float = Field(
        120.0, description="Longest single attempt unless the catalog sets a provider timeout."
    )
    dependency_timeout_seconds: float = Field(
        2.0, description="Longest Quota/Metering call outside ReserveQuota (auth, settle, prices)."
    )
    reserve_timeout_seconds: float = Field(
        30.0, description="Longest ReserveQuota wait (also bounded by the caller's deadline)."
    )
    batch_reserves: bool = Field(
        True,
        description="Reserves of requests that arrive while one is on its way to Quota go "
        "together as one BatchReserveQuota call (one round trip and one Quota transaction); "
        "false sends every reserve as its own ReserveQuota.",
    )
    settle_before_reply: bool = Field(
        False,
        description="Strict mode: the reply waits until Quota and Metering accepted the "
        "settlement (cost from Metering's ledger). Default: the settlement is written to the "
        "outbox, the reply goes out with the mirrored price, delivery follows in the background.",
    )
    read_your_writes_seconds: float = Field(
        2.0,
        description="GetQuota, GetUsageSummary, ListUsageRecords and idempotent replays first "
        "wait up to this long for the caller's tenant's settlements still being delivered.",
    )
    fail_open: bool = Field(
        False,
        description="When Quota is unreachable, serve keys it authenticated within "
        "auth_cache_seconds instead of refusing (usage is still recorded later).",
    )
    auth_cache_seconds: float = Field(
        300.0, description="How long a key authenticated by Quota may be served in fail-open."
    )
    idempotency_retention_seconds: float = Field(
        600.0, description="How long a finished result is kept for repeats of its request_id."
    )
    results: str = Field(
        "",
        description="Shared result store every replica reads and writes: a directory path or "
        "file:// URL (a volume all replicas mount), or s3://bucket/prefix?endpoint=URL. "
        "Default: <data_dir>/results (one machine).",
    )
    result_retention_seconds: float = Field(
        86_400.0, description="How long finished generations are kept for replay and GetGeneration."
    )
    replica_id: str = Field(
        "",
        description="This replica's name, unique and stable across its restarts (a StatefulSet "
        "pod name): it prefixes its quota claims, which it releases when it starts again. "
        "Default: host name plus a digest of the data directory.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Router processes sharing the listen port (SO_REUSEPORT, the documented "
        "exception); each is a replica with id <replica_id>-w<i>. 1: this process serves.",
    )
    worker_index: int | None = Field(
        None, ge=0, description="Set by the supervising process on each worker, not by people."
    )
    idempotency_max_entries: int = Field(10_000, description="Most results kept.")
    idempotency_max_bytes: int = Field(128 * 1024 * 1024, description="Most result bytes kept.")
    describe_interval_seconds: float = Field(
        15.0, description="How often DescribeProvider is refreshed for each adapter."
    )
    price_refresh_seconds: float = Field(
        60.0, description="How often Metering's price catalog is mirrored."
    )
    record_prompts: bool = Field(False, description="Record the prompt (truncated) on spans.")
    prompt_record_chars: int = Field(200, description="Prompt characters kept when recorded.")
    maximum_concurrent_rpcs: int | None = Field(
        4096, description="Calls beyond this get RESOURCE_EXHAUSTED at once (load shedding)."
    )
    failover_max_tokens: float = Field(
        100.0, description="Failover budget size (gRPC A6 retry throttling, Router-wide)."
    )
    failover_token_ratio: float = Field(
        0.5, description="Tokens a successful attempt returns to the failover budget."
    )
    quota_retry_attempts: int = Field(
        3, description="Attempts (A6, UNAVAILABLE only) for the idempotent Quota auth/reserve."
    )
    breaker_window: int = Field(20, description="Calls in the breaker's sliding window.")
    breaker_minimum_calls: int = Field(10, description="Calls needed before the rate rule applies.")
    breaker_failure_rate: float = Field(0.5, description="Failure rate that opens the breaker.")
    breaker_consecutive_failures: int = Field(5, description="Consecutive failures that open it.")
    breaker_slow_call_seconds: float = Field(
        60.0, description="A successful call slower than this counts as slow."
    )
    breaker_slow_call_rate: float = Field(0.8, description="Slow-call rate that opens it.")
    breaker_open_seconds: float = Field(5.0, description="First open wait.")
    breaker_max_open_seconds: float = Field(120.0, description="Cap of the growing open wait.")
    breaker_half_open_probes: int = Field(1, description="Probes admitted while half-open.")
    breaker_probe_max_seconds: float = Field(
        150.0, description="A probe running longer than this is presumed lost; its slot frees."
    )
    admin_token: str = Field(
        "",
        validation_alias=AliasChoices("IMAGEGATE_ADMIN_TOKEN", "IMAGEGATE_ROUTER_ADMIN_TOKEN"),
        description="Shows GetProviderStatus in full (tenants see the coarse state only).",
    )
    shutdown_grace_seconds: float = Field(
        5.0,
        validation_alias=AliasChoices(
            "IMAGEGATE_SHUTDOWN_GRACE_SECONDS", "IMAGEGATE_ROUTER_SHUTDOWN_GRACE_SECONDS"
        ),
        description="Drain time on SIGTERM.",
    )

    @field_validator("quota_addr", "metering_addr")
    @classmethod
    def _dialable(cls, value: str) -> str:
        # gRPC would dial port 99999 as 34463 without a word.
        try:
            return check_address(value, variable="address")
        except ImagegateError as err:
            raise ValueError(err.message) from None

    def adapter_targets(self) -> dict[str, str]:
        """Parses `adapters` into {provider: "host:port"}, in the order given."""
        out: dict[str, str] = {}
        for item in self.adapters.split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ValueError(
                    f"bad IMAGEGATE_ROUTER_ADAPTERS entry {item!r}: want name=host:port"
                )
            try:
                check_address(target, variable=f"IMAGEGATE_ROUTER_ADAPTERS {name.strip()}")
            except ImagegateError as err:
                raise ValueError(err.message) from None
            out[name.strip()] = target.strip()
        return out
