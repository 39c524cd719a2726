"""RULER's variable tracking (vt), made by evalkit: a chain of 4 hops of variable
assignments (VAR ABCDE = 12345, VAR FGHIJ = VAR ABCDE , ...) hidden among lines of the
noise haystack; the model names the 5 variables that hold the value
(scripts/data/synthetic/variable_tracking.py, synthetic.yaml: num_chains 1, num_hops 4).

As RULER makes it: one in-context example first, a chain of 3-letter variables and the
value 12345 in noise lines up to 500 tokens (counted without the chat template), written
with the task template, its answer prefix and its answer, then given new random names and
a new value for each sample (randomize_icl); the sample's chain at random lines, the task
template, RULER's answer prefix, 30 tokens to generate, string_match_all.

evalkit's own (see niah): the haystack is fitted in words to the sample's exact length; the
example is made once per seed (RULER: once per length); every draw is the sample's.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

from evalkit.tasks.base import (
    Plan,
    TaskDef,
    found_marks,
    last_match,
    register_task,
    sample_rng,
)
from evalkit.tasks.fitting import Curve
from evalkit.tasks.ruler import suite
from evalkit.tasks.ruler.haystacks import fit_prompt, line_units, lines_counts, noise_lines
from evalkit.tasks.ruler.niah import score
from evalkit.tasks.ruler.protocol import NOISE, VT_ANSWER_PREFIX, VT_TEMPLATE
from evalkit.types import EvalkitError, MetricDef, Sample

NUM_CHAINS, NUM_HOPS = 1, 4
VT_BUDGET = 30
ICL_TOKENS = 500  # RULER's example: max_seq_length 500, nothing to generate
ICL_VALUE = "12345"


@dataclass(frozen=True)
class VtParams:
    whole_units: bool = field(
        default=False, metadata={"help": "end the noise haystack at a whole line, as RULER "
                                         "does (prompts then fall up to a line short)"})


@dataclass(frozen=True)
class Chains:
    names: list[list[str]]  # each chain's variables, first to last
    lines: list[list[str]]  # each chain's assignments, in order


def chains(rng: random.Random, icl: bool = False) -> Chains:
    """RULER's generate_chains: names of 5 letters (3 in the example), the first assigned a
    value (12345 in the example), each next one the one before (a trailing space included,
    as RULER writes it)."""
    k = 3 if icl else 5
    hops = min(10, NUM_HOPS) if icl else NUM_HOPS
    # distinct names: RULER keeps a name drawn twice, which leaves a chain short and fails
    # the draw, and its sample loop draws again; a repeat is skipped here instead, which
    # makes the chains RULER's retries end with
    names: list[str] = []
    while len(names) < NUM_CHAINS * (hops + 1):
        name = "".join(rng.choices(string.ascii_uppercase, k=k))
        if name not in names:
            names.append(name)
    out_names, out_lines = [], []
    for i in range(0, len(names), hops + 1):
        these = names[i:i + hops + 1]
        out_names.append(these)
        value = ICL_VALUE if icl else str(rng.randint(10000, 99998))  # np.randint(1e4, 99999)
        chain = [f"VAR {these[0]} = {value}"]
        chain += [f"VAR {these[j + 1]} = VAR {these[j]} " for j in range(hops)]
        out_lines.append(chain)
    return Chains(out_names, out_lines)


def context(lines: list[str], found: Chains, seed: str) -> str:
    """RULER's noise branch: each chain's lines at random lines, in order."""
    rng = random.Random(f"{seed}/{len(lines)}")
    sentences = list(lines)
    for chain in found.lines:
        positions = sorted(rng.sample(range(len(sentences)), len(chain)))
        for j, at in enumerate(positions):
            sentences.insert(at + j, chain[j])
    return "\n".join(sentences).replace(". \n", ".\n")


def task_text(ctx: str, value: str) -> str:
    return VT_TEMPLATE.replace("{context}", ctx).replace("{query}", value)


def icl_example(plan: Plan) -> str:
    """RULER's in-context example: its chain in as many noise lines as keep the example,
    task template and answer prefix included, within 500 text tokens (no chat template,
    no BOS); then its answer."""
    seed = f"vt/icl/{plan.seed}"
    found = chains(random.Random(seed), icl=True)
    prefix = VT_ANSWER_PREFIX.replace("{num_v}", str(NUM_HOPS + 1)).replace("{query}",
                                                                             ICL_VALUE)
    count = plan.count or plan.measure

    def build(n: int) -> str:
        return task_text(context([NOISE] * n, found, seed), ICL_VALUE) + prefix

    special = count("")  # RULER counts text tokens alone: what a count adds (a BOS) is extra
    fit = plan.fitter.fit("vt/icl", build, Curve(lambda n: plan.fitter.estimator(build(n))),
                          ICL_TOKENS + special, lo=NUM_HOPS + 1, hi=ICL_TOKENS,
                          what="noise lines", measure=count)
    return fit.prompt + " " + " ".join(found.names[0]) + "\n"


def randomize_icl(example: str, rng: random.Random) -> str:
    """RULER's randomize_icl: the example's answer names renamed (every occurrence), its
    value replaced."""
    for name in example.strip().split()[-NUM_HOPS - 1:]:
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase,
                                                            k=len(name))))
    return example.replace(ICL_VALUE, str(rng.randint(10000, 99998)))


def generate(params: VtParams, plan: Plan) -> Iterator[Sample]:
    if not plan.lengths:
        raise EvalkitError("vt needs lengths: pass --lengths, e.g. 4k,8k,16k")
    example = icl_example(plan)
    lines = noise_lines(params.whole_units)
    for target in plan.lengths:
        budget = target - plan.max_new_tokens
        for i in range(plan.samples):
            sid = f"vt/{target}/{plan.seed}/{i}"
            if not plan.wants(sid):
                continue
            rng = sample_rng(sid)
            found = chains(rng)
            shot = randomize_icl(example, rng)
            value = found.lines[0][0].split("=")[-1].strip()
            prefix = VT_ANSWER_PREFIX.replace("{num_v}", str(NUM_HOPS + 1)).replace(
                "{query}", value)

            def build(k: int, found: Chains = found, shot: str = shot, value: str = value,
                      sid: str = sid) -> str:
                ctx = context(lines.lines(k * lines.step()), found, sid)
                return shot + "\n" + task_text(ctx, value)

            step = lines.step()
            lo = -(-(NUM_HOPS + 1) * lines.words_per_line // step)
            noise = plan.fitter.unit_counts("noise", lambda: line_units(noise_lines()))
            fit = fit_prompt(plan, "vt", build, prefix, budget, lo=lo,
                             hi=max(lo, budget // step + 1), what="haystack words",
                             haystack=lines_counts(lines, noise, plan.fitter.estimator))
            meta: dict[str, object] = {"haystack_type": "noise", "value": value,
                                       "haystack_words": fit.size * step}
            if params.whole_units:
                meta["whole_units"] = True
            yield Sample(id=sid, task="vt", prompt=fit.prompt, targets=tuple(found.names[0]),
                         target_tokens=target, input_tokens=fit.tokens, template=plan.template,
                         max_new_tokens=plan.max_new_tokens, meta=meta, answer_prefix=prefix)


def marks(sample: Sample) -> list[tuple[str, str]]:
    """The chain's assignments (its variables are the answers) and the question."""
    return found_marks(
        sample, question=last_match(r"Question: Find all variables[^\n]*", sample.prompt),
        patterns=[r"VAR " + re.escape(name) + r" = (?:VAR )?\w+" for name in sample.targets])


VT = register_task(TaskDef(
    name="vt",
    description="RULER's vt: name the 5 variables a chain of assignments hidden in noise "
                "gives one value",
    params_type=VtParams, default_template="chat", max_new_tokens=VT_BUDGET,
    generate=generate, score=score, kind="generate",
    metrics=(MetricDef("string_match_all", "continuous", description="the share of the 5 "
                       "variables found in the output (RULER's string_match_all)"),),
    budget_in_length=True, summarize=suite.rows, marks=marks,
    details=("lengths count the prompt and the 30 tokens to generate (RULER's "
             "max_seq_length); the prompt is fitted to the rest exactly",)))
