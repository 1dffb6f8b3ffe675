"""A deterministic scripted expert: a text-in / text-out policy for every agent role (tests and the reference arm).

It reads only what the prompt shows (the task, observations, passages, proposals) and writes what an LLM agent
would: tool calls, facts, insights, fork/join plans, proposals and fixes. Its rules are the knowledge base's rules
of thumb (`kb/downlink.md#choosing-a-configuration`), so the arms differ only in the pipeline's structure: how many
candidates are proposed, whether retrieval informs them, whether evaluation feeds back.
"""

from __future__ import annotations

import json
import re

from sherman.think.backends import ScriptedBackend

CHARS_PER_TOKEN = 4
"""The scripted backend streams 4-character pieces: each counts as one token (about a BPE token of English)."""


def _features(text: str) -> dict | None:
    for m in re.finditer(r"\{[^{}]*\"mean_snr_db\"[^{}]*\}", text):
        try:
            return json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
    return None


def rule_precoders(f: dict) -> list[str]:
    """Precoders in order of preference for the scenario's SNR and load (the knowledge base's rules of thumb)."""
    if f["mean_snr_db"] < 5:
        return ["mrt", "rzf"]
    if f["antennas"] < 1.5 * f["users"]:
        return ["rzf", "zf"] if f["antennas"] >= f["users"] else ["rzf", "mrt"]
    if f["mean_snr_db"] > 20:
        return ["zf", "rzf"]
    return ["rzf", "zf"]


def rule_powers(f: dict) -> list[str]:
    """Power policies in order of preference: fairness first when the weakest user's SNR makes the target bind."""
    if f["min_rate"] > 0 and f["min_snr_db"] < 10 * f["min_rate"]:
        return ["max_min", "water_filling"]
    return ["water_filling", "max_min"]


def _prop(precoder: str, power: str) -> str:
    return json.dumps({"precoder": precoder, "power": power})


def _react(prompt: str) -> str:
    obs = re.findall(r"Observation: (.*)", prompt)
    persp = re.search(r"Perspective: (\w+)", prompt)
    f = next((_features(o) for o in obs if _features(o)), None)
    if f is None:
        return '<tool>{"name": "describe_scenario", "args": {}}</tool>'
    evals = [json.loads(o) for o in obs if o.startswith("{") and '"score"' in o]
    pre, pw = rule_precoders(f), rule_powers(f)
    if not evals:
        power = {"fairness": "max_min", "robustness": "equal"}.get(persp.group(1) if persp else "", "water_filling")
        precoder = pre[1] if persp and persp.group(1) == "robustness" else pre[0]
        return f'<tool>{{"name": "evaluate", "args": {_prop(precoder, power)}}}</tool>'
    last = evals[-1]
    if not last["feasible"] and last["power"] != "max_min":
        return f'<tool>{{"name": "evaluate", "args": {_prop(last["precoder"], "max_min")}}}</tool>'
    best = max(evals, key=lambda e: e["score"])
    del pw
    return f"<answer>{best['precoder']} with {best['power']} power: sum rate {best['sum_rate']} bit/s/Hz, minimum rate {best['min_rate']}</answer>"


def _condense(prompt: str) -> str:
    keep = []
    for line in re.findall(r"\[[^\]]+\] (.*)", prompt):
        for s in re.split(r"(?<=\.) ", line):
            if re.search(r"\b(best|optimum|optimal|prefer|use it|safe default|degrades|approaches|binds)\b", s, re.I):
                keep.append(s.strip())
    return " ".join(keep[:6]) or "no relevant facts"


def _infer(prompt: str) -> str:
    f = _features(prompt)
    if f is None:
        return "insufficient features"
    return f"precoders={','.join(rule_precoders(f))} powers={','.join(rule_powers(f))}"


def _organizer(prompt: str) -> str:
    persp = re.search(r"Perspectives: (.*)", prompt).group(1).split(", ")
    cands = re.search(r"precoders=(\S+) powers=(\S+)", prompt)
    hint = f" precoders={cands.group(1)} powers={cands.group(2)}" if cands else ""
    forks = re.findall(r"<FORK-(\d+)>", prompt)
    joined = re.findall(r"</JOIN-(\d+)>", prompt)
    if not forks:
        return "".join(f"<FORK-{i + 1}>{p};{hint}</FORK-{i + 1}>" for i, p in enumerate(persp)) + "<JOIN-1>"
    if len(joined) < len(forks):
        return f"<JOIN-{len(joined) + 1}>"
    takeaways = re.findall(r"<JOIN-\d+>(.*?)</JOIN-\d+>", prompt, re.S)
    return f"<ANSWER>{' '.join(takeaways)}</ANSWER>"


def _planner(prompt: str) -> str:
    m = re.search(r"Planner perspective: (\w+);(?: precoders=(\S+) powers=(\S+))?", prompt)
    persp = m.group(1) if m else "throughput"
    pre = (m.group(2) or "rzf,zf").split(",") if m else ["rzf", "zf"]
    pw = (m.group(3) or "water_filling,max_min").split(",") if m else ["water_filling", "max_min"]
    pick = {"throughput": (pre[0], "water_filling"), "fairness": (pre[0], "max_min"), "robustness": (pre[-1], pw[0])}[persp]
    return f"From the {persp} perspective: <RETURN>{_prop(*pick)}</RETURN>"


def _reflect(prompt: str) -> str:
    hist = json.loads(re.search(r"Evaluations: (\[.*\])", prompt).group(1))
    tried = {(h["precoder"], h["power"]) for h in hist}
    best = max(hist, key=lambda h: h["score"])
    if best["violations"] > 0:
        order = [(best["precoder"], "max_min"), ("rzf", "max_min"), ("mrt", "max_min")]
    else:
        other = {"zf": "rzf", "rzf": "zf", "mrt": "rzf"}[best["precoder"]]
        order = [(other, best["power"]), (best["precoder"], "equal"), (best["precoder"], "water_filling")]
    for c in order:
        if c not in tried:
            return _prop(*c)
    return "NONE"


def _refine(prompt: str) -> str:
    m = re.search(r"Recalled: (.*)", prompt)
    rec = json.loads(m.group(1)) if m else None
    return json.dumps(rec["config"]) if rec else "NONE"


def expert_script(prompt: str) -> str:
    """Dispatch on the role the prompt asks for."""
    if prompt.startswith("You configure"):
        return _react(prompt)
    if prompt.startswith("Condense"):
        return _condense(prompt)
    if prompt.startswith("From the facts"):
        return _infer(prompt)
    if prompt.startswith("Coordinate planners"):
        return _organizer(prompt)
    if prompt.startswith("Propose one configuration"):
        return _planner(prompt)
    if prompt.startswith("Reflect"):
        return _reflect(prompt)
    if prompt.startswith("Long-term memory"):
        return _refine(prompt)
    return "<answer>unknown role</answer>"


def expert_backend() -> ScriptedBackend:
    return ScriptedBackend(expert_script, chunk=CHARS_PER_TOKEN)
