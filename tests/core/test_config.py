"""The dataclass -> CLI generator (`sherman.core.config`): flags, types, defaults, one-line errors naming the flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from sherman.core.config import Append, ConfigError, Positional, build_parser, check, check_types, field_docs, parse
from sherman.core.errors import ShermanError


@dataclass
class Inner:
    batch_size: int = 16
    """Sequences per step."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass
class Args:
    ckpt: Positional[str]
    """A checkpoint."""
    n: int = 3
    """How many."""
    name: str | None = None
    """Optional name."""
    mode: Literal["a", "b"] = "a"
    """Mode."""
    flag: bool = False
    """A switch."""
    prompt: Append[list[str]] = field(default_factory=list)
    """Repeatable."""
    voices: list[str] = field(default_factory=list)
    """Several after one flag."""
    train: Inner = field(default_factory=Inner)
    """Inner options."""


def test_flags_types_defaults():
    a = parse(Args, ["ck", "--n", "5", "--name", "x", "--mode", "b", "--flag", "--prompt", "p", "--prompt", "q",
                     "--voices", "v1", "v2", "--train.batch-size", "4", "--train.betas", "0.8", "0.9"], prog="t")  # fmt: skip
    assert a == Args("ck", 5, "x", "b", True, ["p", "q"], ["v1", "v2"], Inner(4, (0.8, 0.9)))
    d = parse(Args, ["ck", "--name", "None", "--no-flag"], prog="t")
    assert d == Args("ck") and d.train == Inner() and d.name is None


def test_default_instance_and_flatten_and_exclude():
    a = parse(Args, ["ck", "--batch-size", "2"], prog="t", default=Args("ignored", n=9, train=Inner(batch_size=7)), flatten=("train",))
    assert a.n == 9 and a.train.batch_size == 2
    b = parse(Args, ["ck"], prog="t", exclude=("train.batch_size",))
    assert b.train.batch_size == 16
    with pytest.raises(ShermanError, match="unrecognized arguments: --train.batch-size"):
        parse(Args, ["ck", "--train.batch-size", "2"], prog="t", exclude=("train.batch_size",))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ck", "--n", "x"], "argument --n: invalid int value: 'x'"),
        (["ck", "--mode", "c"], "argument --mode: invalid choice"),
        (["ck", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: CKPT"),
        (["ck", "--train.batch-size", "0"], "--train.batch-size: must be >= 1, got 0"),
    ],
)
def test_errors_are_one_line_and_name_the_flag(argv, message):
    with pytest.raises(ShermanError) as e:
        parse(Args, argv, prog="t")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_help_lists_docstrings_and_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        parse(Args, ["--help"], prog="t")
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("How many. (default: 3)", "--mode {a,b}", "--train.batch-size INT", "Sequences per step. (default: 16)", "--threads INT"):
        assert text in " ".join(out.split()), text
    assert field_docs(Inner) == {"batch_size": "Sequences per step.", "betas": "AdamW betas."}


def test_threads_flag_is_applied():
    import torch

    before = torch.get_num_threads()
    try:
        parse(Args, ["ck", "--threads", "2"], prog="t")
        assert torch.get_num_threads() == 2
        parse(Args, ["ck"], prog="t")
        assert torch.get_num_threads() == 1  # DEFAULT_THREADS
        with pytest.raises(ShermanError, match="--threads: must be >= 1"):
            parse(Args, ["ck", "--threads", "0"], prog="t")
    finally:
        torch.set_num_threads(before)


def test_check_types_names_the_field():
    from sherman.core.model import ModelConfig

    with pytest.raises(ConfigError, match="dim: expected an integer, got str 'x'") as e:
        ModelConfig(dim="x")  # type: ignore[arg-type]
    assert e.value.field == "dim" and isinstance(e.value, ValueError)
    with pytest.raises(ConfigError, match="n_heads: 3 does not divide dim 128"):
        ModelConfig(n_heads=3)
    check_types(Inner())  # well-typed: no error
    with pytest.raises(ConfigError, match="betas"):
        check_types(Inner(betas=(0.9,)))  # type: ignore[arg-type]


def test_every_command_parser_builds():
    """Each subcommand's options dataclass turns into a parser (catches an unsupported field type early)."""
    from sherman.attention.cli import SeerTrainArgs
    from sherman.core.convert_cli import ConvertArgs
    from sherman.core.generate_cli import GenerateArgs
    from sherman.core.train_cli import TrainArgs
    from sherman.data.cli import COMMANDS as DATA
    from sherman.experiments.runner import ReproduceArgs
    from sherman.rl.cli import RLArgs
    from sherman.rl.plan_cli import PlanArgs
    from sherman.serve.cli import ServeArgs
    from sherman.speech.tts_cli import TTSArgs
    from sherman.think.cli import ThinkArgs

    for cls in (SeerTrainArgs, GenerateArgs, ConvertArgs, TrainArgs, ReproduceArgs, RLArgs, PlanArgs, ServeArgs, TTSArgs, ThinkArgs,
                *(c for c, _ in DATA.values())):  # fmt: skip
        ap, leaves = build_parser(cls, prog="x")
        assert leaves and ap.format_help()


def test_attn_choices_are_the_backends():
    import typing

    from sherman.core.attention import BACKENDS
    from sherman.core.generate_cli import GenerateArgs

    hint = typing.get_type_hints(GenerateArgs)["attn"]
    assert set(typing.get_args(hint)) == set(BACKENDS)
