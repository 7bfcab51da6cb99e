"""`make run` as a new user meets it: a quiet start, a hint that carries a moved address, and a
CLI that finds the dev key from another directory."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from imagegate.devstack.services import free_port

ROOT = Path(__file__).resolve().parents[2]
_KEYS = ("FAL_KEY", "HF_TOKEN", "REPLICATE_API_TOKEN", "BFL_API_KEY", "OPENAI_API_KEY")


async def test_make_run_prints_a_usable_hint_and_the_cli_works_from_elsewhere(
    tmp_path: Path,
) -> None:
    router = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in (*_KEYS, "TOGETHER_API_KEY")}
    env.pop("IMAGEGATE_DATA_DIR", None)
    env.pop("IMAGEGATE_API_KEY", None)
    env.update(
        PYTHONPATH=f"{ROOT / 'libs'}{os.pathsep}{ROOT}",
        XDG_STATE_HOME=str(tmp_path / "state"),
        IMAGEGATE_ROUTER_ADDR=router,
        IMAGEGATE_DATA_DIR=str(tmp_path / "repo" / ".imagegate"),
        **{
            f"IMAGEGATE_{name}_ADDR": f"127.0.0.1:{free_port()}"
            for name in ("QUOTA", "METERING", "LOCAL")
        },
        **{
            f"IMAGEGATE_{name}_METRICS_ADDR": ""
            for name in ("ROUTER", "QUOTA", "METERING", "LOCAL")
        },
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegate.devstack",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not any("Ctrl-C stops everything" in line for line in lines):
                raw = await proc.stdout.readline()
                assert raw, "devstack exited early:\n" + "".join(lines)
                lines.append(raw.decode(errors="replace"))
        text = "".join(lines)
        assert f"export IMAGEGATE_ROUTER_ADDR={router}" in text
        # Start-up output is what a person needs: no migration chatter, no editable-install notice.
        assert "Context impl" not in text and "Will assume" not in text
        assert "Running upgrade" not in text and "editable" not in text.lower()
        recorded = tmp_path / "state" / "imagegate" / "data-dir"
        assert recorded.read_text().strip() == str(tmp_path / "repo" / ".imagegate")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        cli_env = {k: v for k, v in env.items() if k != "IMAGEGATE_DATA_DIR"}
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "imagegate.cli",
            "quota",
            "--json",
            cwd=elsewhere,
            env=cli_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cli.communicate(), timeout=60)
        assert cli.returncode == 0, err.decode()
        assert '"plan"' in out.decode() and '"dev"' in out.decode()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
