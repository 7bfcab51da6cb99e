"""Entry point: `python -m services.diffusers` (needs the `diffusers` extra and local weights)."""

from __future__ import annotations

from imagegate.config import CommonSettings
from imagegate.providerkit.main import run_adapter
from services.diffusers.adapter import DiffusersAdapter
from services.diffusers.config import DiffusersSettings


def main() -> None:
    """Builds settings once, loads the weights, and serves until SIGTERM."""
    settings = DiffusersSettings()
    adapter = DiffusersAdapter(settings)
    # Loading before the server starts: a missing extra or a bad directory stops start-up.
    adapter.load()
    run_adapter(
        lambda _telemetry: adapter, address=settings.addr, common=CommonSettings(), name="diffusers"
    )


if __name__ == "__main__":
    main()
