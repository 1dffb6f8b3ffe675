"""`sherman plan`: the planning lab (`sherman.rl.planning`, arXiv 2509.22613): SFT vs policy gradient vs Q-learning on
path-finding over an Erdős–Rényi DAG or Blocksworld. An SFT checkpoint, then one arm on one task; metrics are printed
and logged to OUT/metrics.jsonl every --eval-every steps.

Only the options live here (no torch at import), so `--help` and flag errors only parse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sherman.core.config import check, parse
from sherman.core.errors import ShermanError


@dataclass
class PlanArgs:
    task: Literal["er", "blocksworld"] = "er"
    """'er' (Erdős–Rényi DAG) or 'blocksworld'."""
    arm: Literal["sft", "pg", "q-outcome", "q-process"] = "pg"
    """'sft' (continual SFT), 'pg' (policy gradient, see --kl), 'q-outcome' or 'q-process' (Q-learning)."""
    kl: float = 0.0
    """KL(pi || pi_sft) coefficient of the pg arm."""
    nodes: int = 100
    """Nodes of the ER graph."""
    edge_prob: float = 0.1
    """Edge probability of the ER graph."""
    blocks: int = 4
    """Blocks of the Blocksworld task."""
    paths_per_pair: int = 5
    """SFT paths per train pair."""
    sft_steps: int = 600
    """Steps of the SFT checkpoint the arm starts from."""
    steps: int = 300
    """Steps of the arm."""
    eval_every: int = 50
    """Evaluation interval."""
    seed: int = 0
    """Seed of graph, split, init and rollouts."""
    out: str = "runs/plan"
    """Output directory (metrics.jsonl)."""

    def __post_init__(self) -> None:
        check(self.kl >= 0, "kl", f"must be >= 0, got {self.kl}")
        for name in ("sft_steps", "steps", "eval_every", "nodes", "blocks", "paths_per_pair"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(0 < self.edge_prob <= 1, "edge_prob", f"must be in (0, 1], got {self.edge_prob}")


def main(argv: list[str]) -> int:
    """`sherman plan`: SFT checkpoint then one arm on one task; prints and logs metrics every eval_every steps."""
    args = parse(PlanArgs, argv, prog="sherman plan", description=__doc__)
    from sherman.core.common import MetricLogger
    from sherman.rl.planning import (
        ArmConfig,
        EvalConfig,
        Evaluator,
        planning_model,
        pretrain_sft,
        run_continual_sft,
        run_pg,
        run_q_learning,
    )
    from sherman.tasks.blocksworld import blocksworld_graph
    from sherman.tasks.graphs import DataConfig, GraphConfig, erdos_renyi_dag, make_planning_data

    try:
        if args.task == "er":
            g = erdos_renyi_dag(GraphConfig(n_nodes=args.nodes, edge_prob=args.edge_prob, seed=args.seed))
            data = make_planning_data(g, DataConfig(paths_per_pair=args.paths_per_pair, seed=args.seed))
        else:
            data = make_planning_data(blocksworld_graph(args.blocks), DataConfig(paths_per_pair=args.paths_per_pair, path_mode="shortest", seed=args.seed))
    except ValueError as e:
        raise ShermanError(str(e)) from e
    print(f"{args.task}: {data.graph.n_nodes} nodes, {data.graph.n_edges} edges, {len(data.train_pairs)} train / {len(data.test_pairs)} test pairs")
    base = planning_model(data.vocab_size, seed=args.seed)
    sft = pretrain_sft(base, data, args.sft_steps, seed=args.seed)
    print(f"SFT {args.sft_steps} steps: loss {sft[-1]['loss/train']:.3f}")
    cfg = ArmConfig(steps=args.steps, eval_every=args.eval_every, seed=args.seed)
    ev = Evaluator(data, EvalConfig(), max_len=cfg.max_len, seed=args.seed)
    model = copy.deepcopy(base)
    if args.arm == "sft":
        hist = run_continual_sft(model, data, cfg, ev)
    elif args.arm == "pg":
        hist = run_pg(model, base, data, cfg, args.kl, ev)
    else:
        hist = run_q_learning(model, data, cfg, args.arm.split("-")[1], ev)
    logger = MetricLogger(Path(args.out) / "metrics.jsonl", echo=True)
    for row in hist:
        logger.log(row["step"], {k: v for k, v in row.items() if k != "step"})
    return 0
