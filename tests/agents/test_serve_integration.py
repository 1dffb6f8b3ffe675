"""The multi-agent pipeline against `sherman serve` on loopback: every stage goes through the OpenAI-compatible HTTP
API (an untrained tiny model, so the point is the plumbing: no stage crashes on whatever the model says)."""

import string

import httpx
import pytest
import torch

from sherman.agents.agents import AgentConfig, run_episode
from sherman.agents.knowledge import KnowledgeBase
from sherman.agents.memory import Memory
from sherman.agents.tools import CommEnv, Scenario
from sherman.core.checkpoint import save_checkpoint
from sherman.core.model import ModelConfig, Transformer
from sherman.core.tokenizer import CharTokenizer
from sherman.serve.app import ServeConfig, ServerThread, create_app, load_for_serving
from sherman.think.backends import OpenAIBackend
from sherman.think.train import SPECIALS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    alphabet = "".join(c for c in string.printable if c not in "\x0b\x0c\r")
    tok = CharTokenizer(alphabet, specials=SPECIALS)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=4096))
    save_checkpoint(d, model)
    tok.save(d)
    model, tok = load_for_serving(str(d))
    app = create_app(model, tok, ServeConfig(model_name="tiny", max_tokens_limit=64))
    with ServerThread(app) as s:
        yield s


def test_multi_agent_pipeline_over_sherman_serve(server):
    env = CommEnv(Scenario(users=4, antennas=8, power_dbm=20.0, min_rate=1.0, seed=1))
    calls = []
    backend = OpenAIBackend(server.url, "tiny", temperature=0.0)
    orig = backend.stream

    def counting(prompt, max_tokens):
        calls.append(prompt[:20])
        return orig(prompt, max_tokens)

    backend.stream = counting
    ep = run_episode("multi", backend, "4 users, 8 antennas, 20 dBm, min rate 1 bit/s/Hz", env, KnowledgeBase(), Memory(), AgentConfig(max_tokens=12, rounds=1))
    agents = {m.agent for m in ep.messages}
    assert {"retriever", "condenser", "inference", "planning-organizer"} <= agents
    # condenser, inference and the organizer at least went through HTTP
    assert any(c.startswith("Condense") for c in calls) and any(c.startswith("Coordinate") for c in calls)
    assert ep.tokens > 0 and ep.calls[0].name == "describe_scenario" and ep.calls[0].ok
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
