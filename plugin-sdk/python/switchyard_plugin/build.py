"""Builds a Python plugin module into a WebAssembly component with componentize-py.

    python -m switchyard_plugin build path/to/plugin.py [-o plugin.wasm]

The entry module componentize-py sees is generated: it imports the plugin and exports the
contract's ``WitWorld`` through ``switchyard_plugin.component``. WASI is stubbed
(``--stub-wasi``): the component imports nothing but ``switchyard:plugin/host``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
#: The contract, shared with the gateway and the other SDKs (plugin-sdk/wit in the repository).
WIT = Path(os.environ.get("SWITCHYARD_WIT", PACKAGE.parent.parent / "wit"))


def componentize_py() -> str:
    """The componentize-py command of this Python environment (or on PATH)."""
    beside = Path(sys.executable).parent / "componentize-py"
    found = str(beside) if beside.exists() else shutil.which("componentize-py")
    if not found:
        raise SystemExit("componentize-py not found: pip install 'switchyard-plugin[build]'")
    return found


def build(plugin: Path, out: Path) -> None:
    """Builds ``plugin`` (a .py module) into the component ``out``."""
    plugin = plugin.resolve()
    if plugin.suffix != ".py" or not plugin.is_file():
        raise SystemExit(f"{plugin}: expected a Python module (.py)")
    if not (WIT / "plugin.wit").is_file():
        raise SystemExit(f"{WIT}: no plugin.wit (set SWITCHYARD_WIT to plugin-sdk/wit)")
    with tempfile.TemporaryDirectory(prefix="switchyard-plugin-py-") as work:
        # Only the SDK package goes in, not the environment it is installed in.
        shutil.copytree(PACKAGE, Path(work, "switchyard_plugin"), ignore=shutil.ignore_patterns("__pycache__", "testing.py"))
        Path(work, "switchyard_entry.py").write_text(
            "import importlib\n"
            "from switchyard_plugin.component import world\n"
            f"WitWorld = world(importlib.import_module({plugin.stem!r}))\n"
        )
        command = [
            componentize_py(), "-d", str(WIT), "-w", "plugin",
            "componentize", "switchyard_entry",
            "-p", work, "-p", str(plugin.parent),
            "--stub-wasi", "-o", str(out.resolve()),
        ]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
        if done.returncode != 0:
            raise SystemExit(f"componentize-py failed:\n{done.stderr or done.stdout}")


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m switchyard_plugin")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a plugin module into a component")
    b.add_argument("plugin", type=Path)
    b.add_argument("-o", "--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or args.plugin.with_suffix(".wasm")
    started = time.monotonic()
    build(args.plugin, out)
    size = out.stat().st_size / 1e6
    print(f"{out}: {size:.1f} MB in {time.monotonic() - started:.1f} s", file=sys.stderr)
