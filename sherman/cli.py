"""`sherman <command> ...`: maps subcommands to the modules that implement them; holds no logic.

Each entry of `COMMANDS` names `module:function`; the function takes the remaining argv (list of
str) and returns an exit code (or None for 0). Modules are imported only when their command runs, so
`sherman --help` stays fast and an optional dependency is needed only by the command that uses it.
Errors of type `ShermanError` (bad input, missing files, a bad flag or config value) print as one line
`sherman CMD: error: ...` and exit with status 2, without a traceback. Each command parses its options
with `sherman.core.config.parse` (generated from a dataclass), so every command has the same help style,
the same error style and `--threads`.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:function", one-line help)
    "train": ("sherman.core.train_cli:main", "train a model on a task or a text corpus (LM / SFT)"),
    "generate": ("sherman.core.generate_cli:main", "sample completions from a checkpoint"),
    "convert": ("sherman.core.convert_cli:main", "convert checkpoints between Hugging Face and Sherman formats"),
    "rl": ("sherman.rl.cli:main", "RL on a task: GRPO, Dr. GRPO, OPO, GSPO, GMPO, RSPO (--preset)"),
    "think": ("sherman.think.cli:main", "AsyncThink: answer a question with organizer-worker asynchronous thinking"),
    "serve": ("sherman.serve.cli:main", "OpenAI-compatible HTTP server over a Sherman checkpoint"),
    "seer": ("sherman.attention.cli:main", "SeerAttention-R: `seer train CKPT` distils block-sparse gates beside a checkpoint"),
    "plan": ("sherman.rl.plan_cli:main", "planning lab: SFT vs policy gradient vs Q-learning on graph path-finding / Blocksworld"),
    "data": ("sherman.data.cli:main", "DELT data scoring, selection and ordering of a JSONL corpus"),
    "tts": ("sherman.speech.tts_cli:main", "multi-speaker speech synthesis with VibeVoice (script + voice prompts -> WAV)"),
    "agent": ("sherman.agents.cli:main", "agentic 6G: tool-using agents configure a multi-user MISO downlink (`agent bench` scores every arm)"),
    "rpt": ("sherman.rl.rpt_cli:main", "RPT: reinforcement pre-training on a corpus (`rpt entropy|train|eval`)"),
    "reproduce": ("sherman.experiments.runner:main", "run paper reproductions and write runs/report/index.html"),
}


def usage() -> str:
    lines = ["usage: sherman <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "run `sherman <command> --help` for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sherman: error: unknown command {name!r}; commands: {', '.join(COMMANDS)} (see `sherman --help`)", file=sys.stderr)
        return 2
    from sherman.core.errors import ShermanError

    target = COMMANDS[name][0]
    module, func = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
        code = int(fn(rest) or 0)
    except ShermanError as e:
        print(f"sherman {name}: error: {one_line(str(e))}", file=sys.stderr)
        code = 2
    except SystemExit as e:  # `--help` (0), or a library that exits on its own
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if not isinstance(e.code, (int, type(None))):
            print(f"sherman {name}: error: {one_line(str(e.code))}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"sherman {name}: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # `sherman ... | head`: the reader left; nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if "torch" in sys.modules:
        from sherman.core.common import exit_distributed

        exit_distributed(code)  # under torchrun: leave without interpreter finalization (see its docstring)
    return code


def one_line(msg: str) -> str:
    """Collapse a message to one line (errors are one line on stderr)."""
    return " ".join(msg.split()) or "(no message)"


if __name__ == "__main__":
    sys.exit(main())
