"""SQLAlchemy 2.0 models of the Quota schema (times are integer microseconds since the epoch)."""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the Quota tables."""


class Tenant(Base):
    """A customer account on a plan."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    plan: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    create_us: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key: public prefix for lookup, HMAC-SHA-256 of the whole secret, never the secret."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100))
    create_us: Mapped[int] = mapped_column(BigInteger)
    revoke_us: Mapped[int | None] = mapped_column(BigInteger)
    last_used_us: Mapped[int | None] = mapped_column(BigInteger)


class QuotaPeriod(Base):
    """A tenant's counters for one UTC calendar month; the row every reservation updates."""

    __tablename__ = "quota_periods"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    used_images: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_images: Mapped[int] = mapped_column(BigInteger, default=0)
    used_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    used_cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class Reservation(Base):
    """Units held under a lease; resolves once: committed, released or expired."""

    __tablename__ = "reservations"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", name="uq_reservations_tenant_request"),
        Index("ix_reservations_state_expire", "state", "expire_us"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    request_id: Mapped[str] = mapped_column(String(255))
    period: Mapped[str] = mapped_column(String(7))
    images: Mapped[int] = mapped_column(BigInteger)
    pixels: Mapped[int] = mapped_column(BigInteger)
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(Integer)
    create_us: Mapped[int] = mapped_column(BigInteger)
    expire_us: Mapped[int] = mapped_column(BigInteger)
    settle_us: Mapped[int | None] = mapped_column(BigInteger)
    charged_images: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    charged_cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
