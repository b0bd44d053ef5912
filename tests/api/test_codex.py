"""Codex CLI (npm `@openai/codex`, installed by .ci/run into target/codex) with its default
configuration against `gptoss serve` on scripted completions: one turn in which the model
writes a preamble, calls Codex's shell tool (`exec_command`), reads its output and answers.

Skips only when the codex binary is absent (GPTOSS_CODEX names another one);
GPTOSS_REQUIRE_CODEX=1 (set by .ci/run) turns that skip into a failure."""

import json
import os
import pathlib
import subprocess

import pytest

from conftest import Server

ROOT = pathlib.Path(__file__).resolve().parents[2]
CODEX = os.environ.get("GPTOSS_CODEX", str(ROOT / "target/codex/node_modules/.bin/codex"))

SCRIPTS = [
    {"when": "", "output": "<|channel|>final<|message|>I was not asked to do anything.<|return|>"},
    {"when": "Please run echo hello", "output":
        "<|channel|>analysis<|message|>The user wants the command run. Use exec_command.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Running the command now.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.exec_command <|constrain|>json<|message|>"
        "{\"cmd\": \"echo hello | tee codex-ran.txt\"}<|call|>"},
    # The turn that holds the command's output (Codex sends it back as function_call_output).
    {"when": "<|start|>functions.exec_command to=assistant", "output":
        "<|channel|>analysis<|message|>The command printed hello.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>The command printed: hello<|return|>"},
]


def codex_binary():
    if os.path.exists(CODEX) and os.access(CODEX, os.X_OK):
        return CODEX
    if os.environ.get("GPTOSS_REQUIRE_CODEX") == "1":
        pytest.fail(f"codex is required here (GPTOSS_REQUIRE_CODEX=1) but {CODEX} is absent")
    pytest.skip(f"codex CLI not installed at {CODEX} (.ci/run installs @openai/codex there)")


def test_codex_exec_runs_a_shell_command_and_answers(tmp_path):
    codex = codex_binary()
    script = tmp_path / "scripts.json"
    script.write_text(json.dumps({"scripts": SCRIPTS}))
    server = Server(["--script", str(script), "--served-model-name", "gpt-oss-20b"], "codex")
    work = tmp_path / "work"
    work.mkdir()
    try:
        version = subprocess.run([codex, "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
        env = {**os.environ, "CODEX_HOME": str(tmp_path / "codex-home"), "OPENAI_API_KEY": "none",
               "NO_COLOR": "1", "RUST_LOG": "error"}
        os.makedirs(env["CODEX_HOME"])
        run = subprocess.run(
            [codex, "exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox",
             "--cd", str(work),
             "-c", f"model_providers.gptoss.base_url={server.url}/v1",
             "-c", "model_providers.gptoss.name=gptoss",
             "-c", "model_providers.gptoss.wire_api=responses",
             "-c", "model_provider=gptoss", "-c", "model=gpt-oss-20b",
             "Please run echo hello"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
        report = f"{version}\nexit {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}\nserver:\n{server.logs()}"
        assert run.returncode == 0, report
        # It ran the command the model called for...
        assert (work / "codex-ran.txt").read_text().strip() == "hello", report
        assert "echo hello | tee codex-ran.txt" in run.stderr, report
        # ...showed the preamble, and printed the final answer (the last message, on stdout).
        assert "Running the command now." in run.stderr, report
        assert run.stdout.strip().endswith("The command printed: hello"), report
        # Every request to /v1/responses answered (two: the call, then the answer); the default
        # web_search tool left out.
        logs = server.logs()
        assert logs.count(" responses 200 ") >= 2, report
        assert " responses 4" not in logs and " responses 5" not in logs, report
        assert "left out of the prompt: web_search" in logs, report
    finally:
        server.stop()
