"""SQLAlchemy 2.0 models of the Metering schema (times are integer microseconds since the epoch)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the Metering tables."""


class UsageRecordRow(Base):
    """One request in the ledger; (tenant_id, request_id) is the idempotency key."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", name="uq_usage_records_tenant_request"),
        Index("ix_usage_records_tenant_period_time", "tenant_id", "period", "occurred_us", "id"),
        Index("ix_usage_records_period_plan", "period", "plan"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(7))
    occurred_us: Mapped[int] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(255))
    provider: Mapped[str] = mapped_column(String(64))
    provider_model: Mapped[str] = mapped_column(String(255))
    outcome: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    pixels: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    tenant_charge_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    failed_cost_micros: Mapped[int] = mapped_column(BigInteger, server_default="0")
    plan: Mapped[str] = mapped_column(String(64), server_default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    record: Mapped[bytes] = mapped_column(LargeBinary)
    create_us: Mapped[int] = mapped_column(BigInteger)


class BilledAttemptRow(Base):
    """One attempt a provider may bill, priced when recorded."""

    __tablename__ = "usage_attempts"
    __table_args__ = (
        UniqueConstraint("record_id", "attempt_number", name="uq_usage_attempts_record_attempt"),
        Index("ix_usage_attempts_tenant_period", "tenant_id", "period"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id"))
    tenant_id: Mapped[str] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(7))
    attempt_number: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(64))
    provider_model: Mapped[str] = mapped_column(String(255))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    images: Mapped[int] = mapped_column(Integer)
    pixels: Mapped[int] = mapped_column(BigInteger)
    provider_seconds: Mapped[float] = mapped_column()
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    provider_job_id: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(String(500))
    price_id: Mapped[str] = mapped_column(String(300))
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    usage_reported: Mapped[bool] = mapped_column(Boolean, server_default=true())
    kind: Mapped[int] = mapped_column(Integer, server_default="0")
    """BillingLineKind: an image attempt (0, 1) or a prompt enhancement (2)."""
