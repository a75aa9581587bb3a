"""Prompt screening speed: the text matcher, and `Guard.check_prompt` end to end.

Matcher: a generated bank of 10,000 characters x 8 aliases; prompts/s on one core and the
p99 latency of `TextMatcher.find` over the shipped evasion and benign suites (goals: >= 20,000
prompts/s, p99 <= 1 ms), and the same prompts through the usual moderation word-list approach
— one compiled case-insensitive regex per alias — with the speed-up (goal >= 10x).

End to end: `Guard.check_prompt` on the demo bank with the tiny encoder on the CPU, the CLIP
text stage included as the default policy runs it ("unmatched"), always, and off: prompts/s
and p99 over short prompts, the same prompts 16 at a time through `check_prompts` (as the
service batches concurrent requests) (<= 77 tokens: the shipped suites and composed real-world prompts;
goals >= 500/s, p99 <= 20 ms), and one 10,000-character prompt (goal <= 50 ms), with the
matcher's share of the time.

    python benchmarks/bench_prompts.py [--characters 10000] [--baseline-prompts 200]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from guard.match.text import TextMatcher  # noqa: E402
from tests.prompt_suites import BENIGN, EVASION  # noqa: E402

SYLLABLES = ["ka", "ri", "to", "mu", "shi", "na", "ze", "bo", "ra", "lu", "vex", "qua", "dor", "mi", "pel",
             "ath", "gor", "nix", "sol", "tra", "vin", "yor", "zel", "kre", "oph", "ul", "mar", "ion", "eth"]
HAN = "龙凤虎狮鹰熊狼豹鹤龟星月云雷风火水山海光影剑魂灵神圣魔王侠客仙妖鬼童子娘姬"
KANA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロワン"


def generated_bank(n: int, seed: int = 0):
    rng = random.Random(seed)

    def word(k: int) -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(k))

    chars = []
    for i in range(n):
        base = word(rng.randint(2, 4))
        aliases = [base.capitalize(), f"{base} {word(2)}", word(3), f"{word(2)}-{word(2)}", word(4),
                   "".join(rng.choice(HAN) for _ in range(rng.randint(2, 4))),
                   "".join(rng.choice(KANA) for _ in range(rng.randint(3, 6))), f"{base}{rng.randint(1, 99)}"]
        keywords = [[word(2), word(3)], [word(2), word(2), word(3)]]
        chars.append((f"c{i}", aliases, [], keywords, 2, []))
    return chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--characters", type=int, default=10_000)
    parser.add_argument("--baseline-prompts", type=int, default=200)
    args = parser.parse_args()

    chars = generated_bank(args.characters)
    start = time.perf_counter()
    matcher = TextMatcher(chars)
    build_s = time.perf_counter() - start
    prompts = [p for p, _, _ in EVASION] + list(BENIGN)
    random.Random(1).shuffle(prompts)

    for p in prompts[:200]:  # warm caches (translate table, OpenCC)
        matcher.find(p)
    latencies = []
    for p in prompts:
        t = time.perf_counter()
        matcher.find(p)
        latencies.append(time.perf_counter() - t)
    total = sum(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    # Worst case for the per-word fuzzy cache: emptied before every prompt.
    cold = []
    for p in prompts:
        matcher._fuzzy_lookup.cache_clear()
        t = time.perf_counter()
        matcher.find(p)
        cold.append(time.perf_counter() - t)

    # The usual approach: every alias its own compiled regex, applied one after another.
    patterns = [re.compile(rf"(?<!\w){re.escape(a)}(?!\w)", re.IGNORECASE) for _, aliases, *_ in chars for a in aliases]
    sample = prompts[: args.baseline_prompts]
    t = time.perf_counter()
    for p in sample:
        for pattern in patterns:
            pattern.search(p)
    naive_per_prompt = (time.perf_counter() - t) / len(sample)
    ours_per_prompt = total / len(prompts)

    print(f"bank: {args.characters} characters x 8 aliases ({len(matcher.terms)} terms incl. pinyin and keywords), "
          f"built in {build_s:.1f} s; {len(prompts)} prompts (evasion + benign suites); one core")
    print(f"guard TextMatcher : {len(prompts) / total:10.0f} prompts/s   p99 {p99 * 1000:.3f} ms   "
          f"(goals >= 20,000/s, <= 1 ms)")
    print(f"  cache cold      : {len(prompts) / sum(cold):10.0f} prompts/s   "
          f"p99 {statistics.quantiles(cold, n=100)[98] * 1000:.3f} ms   (per-word fuzzy cache emptied per prompt)")
    print(f"naive regex list  : {1 / naive_per_prompt:10.1f} prompts/s   ({len(patterns)} patterns, "
          f"{len(sample)} prompts)")
    print(f"speed-up          : {naive_per_prompt / ours_per_prompt:10.0f}x  (goal >= 10x)")
    end_to_end(prompts)


def end_to_end(prompts: list[str]) -> None:
    from guard import Bank, Guard, Policy
    from tests.prompt_redteam import composed_benign

    root = os.path.join(os.path.dirname(__file__), "..")
    bank = Bank.load(os.path.join(root, "embeddings", "demo-bank.safetensors"))
    short = prompts[:1000] + composed_benign(1000)
    tokenizer = None
    long_prompt = ", ".join(f"a detailed painting of a quiet harbor number {i} at dawn" for i in range(200))[:10_000]
    print(f"end to end: Guard.check_prompt, demo bank, tiny encoder on the CPU; {len(short)} short prompts "
          f"(suites + composed), one {len(long_prompt):,}-character prompt")
    for mode in ("unmatched", "always", "off"):
        # the cost of a long prompt, not its refusal (the default policy stops at 4,000 characters)
        guard = Guard(bank, Policy.from_dict({"text": {"clip_text": mode, "max_prompt_chars": 20_000}}))
        guard.check_prompt("warm up the encoder")
        if tokenizer is None:
            tokenizer = guard.encoder.tokenizer
            short = [p for p in short if int((tokenizer([p])[0] != 0).sum()) <= 77]
        latencies = []
        for p in short:
            t = time.perf_counter()
            guard.check_prompt(p)
            latencies.append(time.perf_counter() - t)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            guard.check_prompt(long_prompt)
            runs.append(time.perf_counter() - t)
        t = time.perf_counter()
        for p in short:
            guard._text.find(p)
        matcher_share = (time.perf_counter() - t) / sum(latencies)
        print(f"  clip_text={mode:9s}: {len(short) / sum(latencies):7.0f} prompts/s   "
              f"p99 {statistics.quantiles(latencies, n=100)[98] * 1000:5.1f} ms   "
              f"10k chars {statistics.median(runs) * 1000:5.1f} ms   matcher {matcher_share:.0%} of the time "
              f"(goals >= 500/s, <= 20 ms, <= 50 ms)")
        if mode != "off":  # a server batching concurrent requests (guard serve does): one forward per batch
            t = time.perf_counter()
            for start in range(0, len(short), 16):
                guard.check_prompts(short[start:start + 16])
            batched = len(short) / (time.perf_counter() - t)
            print(f"    the same prompts 16 at a time (check_prompts): {batched:7.0f} prompts/s, "
                  f"{batched / (len(short) / sum(latencies)):.2f}x one at a time")


if __name__ == "__main__":
    main()
