"""Router-side settlement (quota commit or release, usage record) through a durable outbox."""

from __future__ import annotations

from imagegate.settlement.parts import Settlement
from imagegate.settlement.settler import Settler

__all__ = ["Settlement", "Settler"]
