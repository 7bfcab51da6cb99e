"""The `imagegate` argument parser: every flag typed and range-checked by `flags`."""

from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn

from imagegate.cli import flags
from imagegate.cli.account import cmd_models, cmd_providers, cmd_quota, cmd_styles, cmd_usage
from imagegate.cli.admin import cmd_admin
from imagegate.cli.enhancement import add_enhance_flags
from imagegate.cli.generate import FORMATS, PREFERENCES, cmd_estimate, cmd_generate
from imagegate.cli.inputs import add_input_args
from imagegate.cli.keys import add_key_parsers
from imagegate.pricing import QUALITIES

# A value such as -5x512, -1 or -inf: argparse would take it for an unknown option.
_DASH_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", type=flags.text(flags.MAX_PROMPT), help="what to draw")
    p.add_argument(
        "--model", type=flags.text(flags.MAX_ID), help="model alias (`imagegate models`)"
    )
    p.add_argument("--preference", choices=sorted(PREFERENCES), default="balanced")
    p.add_argument(
        "--size",
        type=flags.size,
        metavar="WxH",
        help=f"e.g. 512x512; each side {flags.MIN_SIDE}-{flags.MAX_SIDE}",
    )
    p.add_argument(
        "--n",
        type=flags.int_range(1, flags.MAX_IMAGES),
        default=1,
        help=f"number of images, 1-{flags.MAX_IMAGES}",
    )
    p.add_argument("--seed", type=flags.int_range(0, flags.INT64_MAX), help=f"0-{flags.INT64_MAX}")
    p.add_argument("--steps", type=flags.int_range(1, flags.MAX_STEPS), help=f"1-{flags.MAX_STEPS}")
    p.add_argument(
        "--guidance", type=flags.guidance, help=f"guidance scale, 0-{flags.MAX_GUIDANCE:g}"
    )
    p.add_argument("--format", choices=sorted(FORMATS), default="png")
    p.add_argument(
        "--style", type=flags.text(flags.MAX_ID), help="style preset (`imagegate styles`)"
    )
    add_enhance_flags(p)
    p.add_argument(
        "--negative", type=flags.text(flags.MAX_NEGATIVE, required=False), help="negative prompt"
    )
    p.add_argument(
        "--max-cost", type=flags.max_cost, metavar="USD", help="cost ceiling in USD; 0 = none"
    )
    p.add_argument(
        "--provider",
        action="append",
        type=flags.text(flags.MAX_ID),
        help="only this provider (repeatable)",
    )
    p.add_argument(
        "--block",
        action="append",
        type=flags.text(flags.MAX_ID),
        help="never this provider (repeatable)",
    )
    p.add_argument(
        "--quality",
        choices=list(QUALITIES),
        help="quality for models that have one (GPT image); it sets the price",
    )
    p.add_argument("--allow-degradation", action="store_true")
    p.add_argument(
        "--request-id",
        type=flags.text(flags.MAX_REQUEST_ID, exact=True),
        help="idempotency key (default: a new UUID)",
    )
    add_input_args(p)


def _add_admin(sub: argparse._SubParsersAction[Parser]) -> None:
    a = sub.add_parser("admin", help="tenants, plans and keys (needs the admin token)")
    asub = a.add_subparsers(dest="admin_action", required=True)
    ident = flags.text(flags.MAX_ID, exact=True)
    tc = asub.add_parser("tenant-create")
    tc.add_argument("name", type=flags.text(flags.MAX_NAME, exact=True))
    tc.add_argument("--plan", type=ident, default="free", help="free, pro, business or enterprise")
    tc.add_argument("--request-id", type=ident)
    asub.add_parser("tenant-list")
    sp = asub.add_parser("set-plan")
    sp.add_argument("tenant_id", type=ident)
    sp.add_argument("plan", type=ident)
    asub.add_parser("plans")
    kc = asub.add_parser("key-create")
    kc.add_argument("tenant_id", type=ident)
    kc.add_argument("--label", type=flags.text(flags.MAX_NAME, required=False))
    add_key_parsers(asub, ident)
    pr = asub.add_parser("prices", help="the price catalog: current and past entries")
    pr.add_argument("--format", choices=["table", "csv", "json"], default="table")
    mg = asub.add_parser("margin", help="a month's revenue, provider cost and gross margin")
    mg.add_argument("--month", type=flags.month, help="YYYY-MM (default: this month, UTC)")
    mg.add_argument("--format", choices=["table", "csv", "json"], default="table")
    a.set_defaults(func=cmd_admin)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = Parser(prog="imagegate", description="imagegate client")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images")
    _add_generation_args(g)
    g.add_argument(
        "-o",
        "--output",
        required=True,
        type=flags.text(4096),
        help="output file (-1, -2… added for --n>1)",
    )
    g.add_argument(
        "--timeout", type=flags.timeout, default=120.0, help="deadline in seconds (default 120)"
    )
    g.add_argument("--json", action="store_true", help="print the response as JSON")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g.set_defaults(func=cmd_generate)
    e = sub.add_parser("estimate", help="price a request without running it")
    _add_generation_args(e)
    e.set_defaults(func=cmd_estimate)
    sub.add_parser("models", help="list model aliases").set_defaults(func=cmd_models)
    sub.add_parser("styles", help="list style presets").set_defaults(func=cmd_styles)
    u = sub.add_parser("usage", help="your usage for a month")
    u.add_argument("--month", type=flags.month, help="YYYY-MM (default: this month, UTC)")
    u.add_argument("--format", choices=["table", "csv", "json"], default="table")
    u.add_argument(
        "--limit",
        type=flags.int_range(1, flags.MAX_LIMIT),
        default=50,
        help="most records to show (default 50)",
    )
    u.set_defaults(func=cmd_usage)
    q = sub.add_parser("quota", help="your plan and what is left this month")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quota)
    sub.add_parser("providers", help="provider health and breakers").set_defaults(
        func=cmd_providers
    )
    _add_admin(sub)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses `argv` (default: the command line); exits 2 with one line on a bad flag."""
    args = list(sys.argv[1:] if argv is None else argv)
    # `--size -5x512` becomes `--size=-5x512`, so its type check explains what is wrong.
    joined: list[str] = []
    for i, token in enumerate(args):
        if token == "--":
            joined.extend(args[i:])
            break
        previous = joined[-1] if joined else ""
        if previous.startswith("--") and "=" not in previous and _DASH_VALUE.match(token):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return build_parser().parse_args(joined)
