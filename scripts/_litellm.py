"""The LiteLLM proxy as a peer in scripts/bench_proxy.py (case `l`, with --litellm).

LiteLLM is not a routecar dependency: it is installed on first use into its own
virtualenv, `.bench/litellm-venv` (PyPI, `litellm[proxy]`), and run with a
config whose one model points at the benchmark's loopback upstream, one worker,
no database, no callbacks, the bundled model-cost map (no network at start).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench" / "litellm-venv"
MODEL = "gpt-4o-mini"  # the model bench_proxy's requests name


def litellm_bin() -> Path:
    return VENV / "bin" / "litellm"


def ensure_installed(log: Path) -> Path:
    """`litellm` from .bench/litellm-venv, installing it there first if needed (a few minutes)."""
    exe = litellm_bin()
    if exe.exists():
        return exe
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=out, stderr=out)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
                        "litellm[proxy]"], check=True, stdout=out, stderr=out, timeout=1800)
    if not exe.exists():
        raise RuntimeError(f"litellm[proxy] installed but {exe} is missing (see {log})")
    return exe


def write_config(upstream: str, out: Path) -> str:
    """Write a LiteLLM proxy config routing MODEL to the loopback upstream (OpenAI-compatible);
    return its master key (LiteLLM refuses to start without one; requests carry it)."""
    key = "sk-" + secrets.token_hex(32)
    out.write_text(f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{MODEL}
      api_base: {upstream}/v1
      api_key: sk-bench-not-a-key
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
  json_logs: false
general_settings:
  master_key: {key}
  disable_spend_logs: true
  disable_reset_budget: true
""")
    return key


def command(exe: Path, config: Path, port: int) -> list[str]:
    return [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]


def environment() -> dict[str, str]:
    """No network at start (bundled cost map), no telemetry, quiet logs."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env
