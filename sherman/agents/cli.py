"""`sherman agent "4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz" [--arm multi] [--backend scripted|local|URL]`
prints the plan (every agent's messages), the tool calls, the evaluation and the answer.
`sherman agent bench [--scenarios 50] [--seed 0]` runs every arm on seeded scenarios against the oracle.
"""

from __future__ import annotations

import argparse
import json

from sherman.core.config import DEFAULT_THREADS, ArgumentParser, apply_threads  # one-line usage errors, --threads
from sherman.core.errors import ShermanError


def _backend_factory(a):
    if a.backend == "scripted":
        from sherman.agents.scripted import expert_backend

        return expert_backend
    if a.backend == "local":
        if not a.ckpt:
            raise ShermanError("--backend local needs --ckpt DIR")
        import torch

        from sherman.core.generate import SamplingParams
        from sherman.serve.app import load_for_serving
        from sherman.think.backends import LocalBackend

        model, tok = load_for_serving(a.ckpt)
        return lambda: LocalBackend(model, tok, SamplingParams(temperature=a.temperature), generator=torch.Generator().manual_seed(a.seed))
    if a.backend.startswith(("http://", "https://")):
        from sherman.think.backends import OpenAIBackend
        from sherman.think.cli import _first_model

        model = a.model or _first_model(a.backend, a.api_key)
        return lambda: OpenAIBackend(a.backend, model, api_key=a.api_key, temperature=a.temperature)
    raise ShermanError(f"--backend must be 'scripted', 'local' or an http(s) URL, got {a.backend!r}")


def _common(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backend", default="scripted", help="'scripted' (deterministic expert), 'local' (a Sherman checkpoint, --ckpt) or an OpenAI-compatible server URL (default: scripted)")
    ap.add_argument("--ckpt", default=None, help="checkpoint directory for --backend local")
    ap.add_argument("--model", default=None, help="model id on the server (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=None, help="API key for the server")
    ap.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of model backends (default: 0, greedy)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the channel draw / scenario set (default: 0)")
    ap.add_argument("--threads", type=int, default=None, help=f"torch CPU threads (default: {DEFAULT_THREADS})")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "bench":
        return bench(argv[1:])
    ap = ArgumentParser(prog="sherman agent", description="agentic 6G: configure a multi-user MISO downlink with tool-using agents")
    ap.add_argument("scenario", help="e.g. '4 users, 8 antennas, 30 dBm, min rate 1 bit/s/Hz' (optionally ', rician 6 dB'); or 'bench'")
    ap.add_argument("--arm", choices=("single", "multi", "parallel"), default="multi", help="agent arrangement (default: multi)")
    ap.add_argument("--memory", default=":memory:", help="SQLite file for short- and long-term memory (default: in memory)")
    ap.add_argument("--json", action="store_true", help="print the whole episode as JSON")
    _common(ap)
    a = ap.parse_args(argv)
    apply_threads(a.threads)
    from sherman.agents.agents import run_episode
    from sherman.agents.knowledge import KnowledgeBase
    from sherman.agents.memory import Memory
    from sherman.agents.tools import CommEnv, parse_scenario

    try:
        sc = parse_scenario(a.scenario, seed=a.seed)
    except ValueError as e:
        raise ShermanError(str(e)) from None
    env = CommEnv(sc)
    ep = run_episode(a.arm, _backend_factory(a)(), a.scenario, env, KnowledgeBase(), Memory(a.memory))
    if a.json:
        print(json.dumps(ep.to_dict(), indent=1))
        return 0
    print("== plan")
    for m in ep.messages:
        if m.role != "tool":
            print(f"[{m.agent} {m.role}] {m.text.strip()[:400]}")
    print("== tool calls")
    for c in ep.calls:
        print(f"  {c.name}({json.dumps(c.args, sort_keys=True, default=str)}) -> {c.text()[:300]}")
    oracle = env.oracle()
    print("== evaluation")
    if ep.best is None:
        print("  no configuration was evaluated")
    else:
        print(f"  {ep.best['precoder']} + {ep.best['power']}: sum rate {ep.best['sum_rate']} bit/s/Hz ({ep.best['sum_rate'] / oracle['sum_rate']:.1%} of the oracle "
              f"{oracle['precoder']} + {oracle['power']}), min rate {ep.best['min_rate']}, violations {ep.best['violations']}")
    print(f"  tokens {ep.tokens}, critical-path tokens {ep.critical_tokens:g}, wall {ep.wall_s:.2f} s (tools {ep.tool_s:.2f} s)")
    print(f"  guardrail: {'every number comes from a tool' if not ep.ungrounded else 'UNGROUNDED numbers ' + str(ep.ungrounded)}")
    print("== answer")
    print(ep.answer)
    return 0 if ep.best is not None and not ep.ungrounded else 1


def bench(argv: list[str]) -> int:
    ap = ArgumentParser(prog="sherman agent bench", description="every arm on seeded scenarios, scored against the WMMSE / exhaustive oracle")
    ap.add_argument("--scenarios", type=int, default=50, help="number of seeded scenarios (default: 50)")
    _common(ap)
    a = ap.parse_args(argv)
    apply_threads(a.threads)
    if a.scenarios < 1:
        raise ShermanError(f"--scenarios must be >= 1, got {a.scenarios}")
    from sherman.agents.agents import AgentConfig
    from sherman.experiments.agentic6g import ARMS, run_seed

    res = run_seed(a.scenarios, a.seed, AgentConfig(), _backend_factory(a))
    print(f"{res['feasible']} of {res['scenarios']} scenarios have a feasible oracle (seed {a.seed}, backend {a.backend})")
    print(f"{'arm':<10}{'success':>9}{'violations':>12}{'tool calls':>12}{'crit. tokens':>14}{'wall s':>9}")
    for arm in ARMS:
        r = res["arms"][arm]
        print(f"{arm:<10}{r['success']:>9.3f}{r['violations']:>12.2f}{r['tool_calls']:>12.1f}{r['critical_tokens']:>14.0f}{r['wall_s']:>9.3f}")
    return 0
