"""evalkit's RULER against lm-eval's RULER port, on the same tokenizer and lengths.

For each task both can make offline here (lm-eval's essay haystack and QA sets are
downloads: niah_single_2/3, niah_multikey_1, niah_multivalue, niah_multiquery, qa_1 and
qa_2 are compared on their template text only), at each length, with Gemma 3 270M's own
tokenizer (llama.cpp's) and no chat template (lm-eval's default):

- the task text around the haystack, byte for byte: each prompt with its haystack, keys,
  values and variable names replaced by placeholders, and the answer prefix (lm-eval's
  gen_prefix, which it strips of its leading space);
- the same scores from the same outputs: outputs made from each side's answers (all,
  some, none, in other cases, with control characters) scored by evalkit's scorer and by
  lm-eval's process_results, on both sides' samples;
- how long the prompts are (tokens short of the length less the budget) and how fast each
  side builds them (samples/s; lm-eval through evalkit's catalogue, which stops at --docs).

    python bench/ruler_peer.py [--lengths 4k,16k] [--docs 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
import time

from evalkit.types import Response

LM_EVAL = {"niah_single_1": "niah_single_1", "niah_multikey_2": "niah_multikey_2",
           "niah_multikey_3": "niah_multikey_3", "vt": "ruler_vt", "cwe": "ruler_cwe",
           "fwe": "ruler_fwe"}
# where lm-eval's port is not RULER's own code (NVIDIA/RULER at c3f5e3b), which evalkit follows
KNOWN = {
    "vt": "lm-eval's port predates RULER's 'fix VT' (26ed7ba, May 2025): its chain and noise "
          "lines are joined by spaces, RULER's by newlines; and its answer prefix keeps "
          "'assgined'",
    "cwe": "lm-eval's port leaves RULER's few-shot example out of the prompt (it keeps it "
           "in a field of its own, input_example, that no template reads)",
}


def skeleton(task: str, text: str) -> str:
    """The task text with what is drawn at random replaced by placeholders."""
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    if task.startswith("niah"):
        text = re.sub(uuid, "{uuid}", text)
        text = re.sub(r"\b[a-z]+(?:-[a-z]+)+\b", "{word}", text)
        text = re.sub(r"\b\d{7}\b", "{number}", text)
        lines = text.split("\n")
        return "\n".join([lines[0], "{haystack}", lines[-1]])
    if task == "vt":  # the example's and the task's instruction and question lines
        text = re.sub(r"\b[A-Z]{3}\b|\b[A-Z]{5}\b", "{var}", text)
        text = re.sub(r"\b\d{5}\b", "{value}", text).replace("assgined", "assigned")
        return "\n".join(x for x in text.split("\n") if x.startswith(("Memorize", "Question:")))
    if task == "cwe":
        return re.sub(r"(?:\d+\. \S+ ?)+", "{list} ", text)
    if task == "fwe":
        return re.sub(r"coded words\. .*\nQuestion", "coded words. {text}\nQuestion", text,
                      flags=re.S)
    raise ValueError(task)


def outputs(answers: list[str], rng: random.Random) -> list[str]:
    some = rng.sample(answers, max(1, len(answers) // 2))
    return [" " + ", ".join(answers), " " + ", ".join(some), " I do not know.", "",
            "\n" + " ".join(a.upper() for a in answers) + "\x07",
            " " + ", ".join(answers[:1]) + " and more"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4k,16k")
    parser.add_argument("--docs", type=int, default=5)
    args = parser.parse_args()

    from evalkit.backends import make_backend
    from evalkit.prompts.templates import PromptMeasure, make_template
    from evalkit.tasks import get_task, make_params
    from evalkit.tasks.base import Plan, WholeRun
    from evalkit.tasks.lm_eval import catalogue as lt
    from evalkit.tasks.ruler import protocol

    lengths = tuple(int(x[:-1]) * 1024 if x.lower().endswith("k") else int(x)
                    for x in args.lengths.split(","))
    counter = make_backend("llamacpp", "gemma3-270m", {}).tokenizer()
    raw = make_template("raw")
    rng = random.Random(0)
    start = time.monotonic()
    from lm_eval.tasks.ruler import common_utils

    print(f"lm-eval's RULER imported in {time.monotonic() - start:.1f} s")
    print(f"{'task':<16} {'length':>6} {'text':>5} {'prefix':>6} {'scores':>6} "
          f"{'short (evalkit / lm-eval)':>26} {'samples/s (evalkit / lm-eval)':>30}")
    for ours_name, theirs_name in LM_EVAL.items():
        task = get_task(ours_name)
        assert task.generate is not None
        for length in lengths:
            budget = length - task.max_new_tokens
            plan = Plan(task=ours_name, lengths=(length,), samples=args.docs, seed=0,
                        template="raw", max_new_tokens=task.max_new_tokens,
                        measure=PromptMeasure(raw, counter),
                        count=lambda t: len(counter.encode(t)))
            start = time.monotonic()
            ours = list(task.generate(make_params(task, {}), plan))
            ours_s = time.monotonic() - start
            run = WholeRun(params=lt.Params(), lengths=(length,), limit=args.docs,
                           counter=counter)
            (unit,) = lt.units(theirs_name, run, resolve=True)
            start = time.monotonic()
            theirs = list(lt.build(unit, run).task.eval_docs)[:args.docs]
            theirs_s = time.monotonic() - start

            texts = {skeleton(ours_name, s.prompt) for s in ours}
            their_texts = {skeleton(ours_name, d["input"]) for d in theirs}
            same_text = texts == their_texts and len(texts) == 1
            prefixes = {skeleton(ours_name, s.answer_prefix).strip().replace(
                "{haystack}\n", "") for s in ours}
            their_prefixes = {skeleton(ours_name, " " + d["gen_prefix"]).strip().replace(
                "{haystack}\n", "") for d in theirs}
            if ours_name == "vt":  # lm-eval keeps the misspelling RULER fixed
                their_prefixes = {p.replace("assgined", "assigned") for p in their_prefixes}
            same_prefix = prefixes == their_prefixes

            agree = 0
            total = 0
            for refs in [list(s.targets) for s in ours] + [list(d["outputs"]) for d in theirs]:
                for text in outputs(refs, rng):
                    doc = {"outputs": refs, "max_length": length}
                    want = common_utils.process_results(doc, [text])[str(length)]
                    got = task.score(dataclasses.replace(ours[0], targets=tuple(refs)),
                                     Response(text=text)).scores
                    total += 1
                    agree += abs(next(iter(got.values())) - want) < 1e-12
            short_ours = statistics.fmean(budget - s.input_tokens for s in ours)
            short_theirs = statistics.fmean(
                budget - len(counter.encode(d["input"] + " " + d["gen_prefix"]))
                for d in theirs)
            print(f"{ours_name:<16} {length:>6} {'same' if same_text else 'DIFF':>5} "
                  f"{'same' if same_prefix else 'DIFF':>6} {agree:>3}/{total:<3} "
                  f"{short_ours:>12.1f} / {short_theirs:<11.1f} "
                  f"{len(ours) / ours_s:>14.2f} / {len(theirs) / theirs_s:<12.2f}")
            if not same_text:
                if ours_name in KNOWN:
                    print(f"  known: {KNOWN[ours_name]}")
                else:
                    print("  evalkit:", sorted(texts)[:1])
                    print("  lm-eval:", sorted(their_texts)[:1])
            if not same_prefix:
                print("  evalkit:", prefixes, "\n  lm-eval:", their_prefixes)
    for name, template in (("niah", protocol.NIAH_TEMPLATE), ("qa", protocol.QA_TEMPLATE)):
        print(f"{name} template: RULER's, as tests/test_ruler.py compares with lm-eval's copy "
              f"({len(template)} characters)")


if __name__ == "__main__":
    main()
