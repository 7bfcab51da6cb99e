"""How `imagegate generate` shows prompt enhancement: the flags and the lines it prints."""

from __future__ import annotations

import argparse

from imagegate.router.v1 import router_pb2


def add_enhance_flags(p: argparse.ArgumentParser) -> None:
    """--enhance / --no-enhance; neither takes the style's default."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--enhance",
        dest="enhance",
        action="store_const",
        const=True,
        default=None,
        help="rewrite the prompt through the prompt enhancer first (default: the style's)",
    )
    group.add_argument(
        "--no-enhance",
        dest="enhance",
        action="store_const",
        const=False,
        help="never rewrite the prompt, whatever the style's default",
    )


def nano_usd(nanos: int) -> str:
    """Nano-USD as dollars, with the digits a sub-micro-dollar rewrite needs."""
    return f"${nanos / 1_000_000_000:.9f}".rstrip("0").rstrip(".") if nanos else "$0"


def progress_line(e: router_pb2.PromptEnhancement) -> str:
    """The stream's progress line for the enhancement step."""
    if e.status == router_pb2.ENHANCEMENT_STATUS_APPLIED:
        how = "from cache" if e.cached else f"{e.usage.input_tokens}+{e.usage.output_tokens} tokens"
        return f"prompt enhanced by {e.provider} ({how})"
    return f"prompt enhancement skipped: {e.detail}"


def describe(result: router_pb2.GenerateImageResponse) -> list[str]:
    """Lines about the enhancement step and the prompt sent; none when it was not asked for."""
    if not result.HasField("enhancement"):
        return []
    e = result.enhancement
    if e.status != router_pb2.ENHANCEMENT_STATUS_APPLIED:
        status = router_pb2.EnhancementStatus.Name(e.status).removeprefix("ENHANCEMENT_STATUS_")
        return [f"prompt not enhanced ({status.lower()}: {e.detail}); sent: {result.sent_prompt}"]
    if e.cached:
        cost = "cached, no cost"
    else:
        tokens = f"{e.usage.input_tokens}+{e.usage.output_tokens} tokens"
        cost = f"{tokens}, {nano_usd(e.cost_nanos)}"
    lines = [
        f"enhanced prompt ({e.provider}/{e.provider_model}, {cost}):",
        f"  {result.sent_prompt}",
    ]
    if result.sent_negative_prompt:
        lines.append(f"  negative: {result.sent_negative_prompt}")
    return lines
