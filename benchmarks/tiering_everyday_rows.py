"""Write `tierline/tiering/data/everyday-train.jsonl`: short chat-style training prompts.

    python benchmarks/tiering_everyday_rows.py > tierline/tiering/data/everyday-train.jsonl

Why: the corpus's tier-1 rows are long templated NLP prompts (T0) and MMLU questions, so a
short question as people type it ("What is 2+2?", "convert 5 km to miles") looks like nothing
in tier 1 and drifts to tier 2. These rows are written here, by us: quick facts, arithmetic,
conversions, definitions, spelling, how-to one-liners and small rewrites for tier 1, each
template filled from short word lists, in the casings and punctuation people use. So that
"short" does not come to mean "tier 1", the same file holds short hard questions written by
hand (tier 3: open problems, proofs, hard puzzles and designs stated in a line or two) and
short substantial ones (tier 2: real code, multi-step estimates, careful writing).

Deterministic: the same script writes the same bytes. No public dataset is used.
"""

from __future__ import annotations

import hashlib
import json
import sys

SOURCE = "tierline/everyday:train"

COUNTRIES = [
    "France",
    "Japan",
    "Kenya",
    "Canada",
    "Peru",
    "Norway",
    "Egypt",
    "Vietnam",
    "Chile",
    "Poland",
    "Morocco",
    "Thailand",
    "Portugal",
    "Ghana",
    "Iceland",
    "Mexico",
    "Turkey",
    "India",
]
UNITS = [
    ("km", "miles"),
    ("miles", "km"),
    ("kg", "pounds"),
    ("pounds", "kg"),
    ("liters", "gallons"),
    ("cups", "ml"),
    ("inches", "cm"),
    ("feet", "meters"),
    ("ounces", "grams"),
    ("celsius", "fahrenheit"),
    ("fahrenheit", "celsius"),
    ("hours", "minutes"),
]
WORDS = [
    "serendipity",
    "ubiquitous",
    "photosynthesis",
    "inflation",
    "mortgage",
    "latency",
    "metaphor",
    "osmosis",
    "equity",
    "bandwidth",
    "empathy",
    "catalyst",
    "algorithm",
    "placebo",
    "tariff",
    "firewall",
    "irony",
    "compound interest",
]
ACRONYMS = ["NASA", "CEO", "PDF", "GPS", "HTML", "ASAP", "FAQ", "DIY", "ETA", "USB", "SQL", "HR"]
LANGS = ["Spanish", "French", "German", "Italian", "Portuguese", "Japanese"]
PHRASES = [
    "thank you very much",
    "where is the train station",
    "I'm running late",
    "see you tomorrow",
    "how much does this cost",
    "happy birthday",
    "the meeting is cancelled",
]
TASKS = [
    "reset my router",
    "clear my browser cache",
    "unfreeze an app on my iphone",
    "boil rice without a rice cooker",
    "remove a coffee stain from a shirt",
    "change the default printer on windows",
    "mute a group chat on whatsapp",
    "make a pdf smaller",
    "set an out of office reply in outlook",
    "hard boil an egg",
]
MISSPELT = [
    "I recieved the package tommorow",
    "their going to the libary",
    "definately a good oportunity",
    "please seperate the invoices",
    "the goverment anounced it",
    "we should of known",
]

ARITH = "{a}+{b}", "{a} + {b}", "{a}*{b}", "{a} x {b}", "{a} - {b}", "{a}/{b}"


def _pick(seq: list[str] | tuple[str, ...], *salt: object) -> str:
    h = int(hashlib.sha1(repr(salt).encode()).hexdigest(), 16)
    return seq[h % len(seq)]


def tier1() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for i in range(60):
        a, b = 2 + (i * 7) % 23, 1 + (i * 5) % 11
        expr = _pick(ARITH, "op", i).format(a=a, b=b)
        form = _pick(
            [
                "What is {e}?",
                "what's {e}",
                "{e}=?",
                "Quick: {e}",
                "whats {e}?",
                "Can you tell me what {e} is?",
                "{e}",
                "How much is {e}?",
            ],
            "form",
            i,
        )
        rows.append((form.format(e=expr), "simple_math_qa"))
    for i, country in enumerate(COUNTRIES):
        form = _pick(
            [
                "What's the capital of {c}?",
                "capital of {c}",
                "What currency does {c} use?",
                "what language do they speak in {c}",
                "Which continent is {c} in?",
                "What is the population of {c}, roughly?",
            ],
            "c",
            i,
        )
        rows.append((form.format(c=country), "open_qa"))
    for i, (u1, u2) in enumerate(UNITS):
        for n in (3, 12, 40):
            form = _pick(
                [
                    "Convert {n} {u1} to {u2}.",
                    "convert {n} {u1} to {u2}",
                    "How many {u2} is {n} {u1}?",
                    "{n} {u1} in {u2}?",
                ],
                "u",
                i,
                n,
            )
            rows.append((form.format(n=n, u1=u1, u2=u2), "simple_math_qa"))
    for i, word in enumerate(WORDS):
        form = _pick(
            [
                "What does '{w}' mean?",
                "define {w}",
                "Define {w} in one sentence.",
                "What is {w}? Keep it short.",
                "explain {w} simply",
            ],
            "w",
            i,
        )
        rows.append((form.format(w=word), "open_qa"))
    for i, acro in enumerate(ACRONYMS):
        form = _pick(["What does {a} stand for?", "what does {a} mean", "{a} stands for?"], "a", i)
        rows.append((form.format(a=acro), "open_qa"))
    for i, phrase in enumerate(PHRASES):
        for lang in (LANGS[i % len(LANGS)], LANGS[(i + 3) % len(LANGS)]):
            form = _pick(
                ["Translate '{p}' to {l}.", "how do you say {p} in {l}", "{l} for '{p}'?"],
                "t",
                i,
                lang,
            )
            rows.append((form.format(p=phrase, l=lang), "translation"))
    for i, task in enumerate(TASKS):
        form = _pick(
            [
                "How do I {t}?",
                "how to {t}",
                "What's the quickest way to {t}?",
                "can you tell me how to {t}",
            ],
            "h",
            i,
        )
        rows.append((form.format(t=task), "open_qa"))
    for i, text in enumerate(MISSPELT):
        form = _pick(["Fix the spelling: {s}", "correct this: '{s}'", "Proofread: {s}"], "s", i)
        rows.append((form.format(s=text), "rewrite"))
    return rows


TIER2 = [
    "Write a Python function that merges overlapping intervals and add unit tests.",
    "Write a bash script that backs up a folder to S3 every night and keeps 7 copies.",
    "How many piano tuners are there in Chicago? Walk me through the estimate.",
    "Refactor this into async code: a loop that downloads 50 URLs one after another with requests.",
    "Write a 600-word cover letter for a data analyst role; I have 3 years in retail analytics.",
    "Explain the CAP theorem with an example of a system that picks each side.",
    "My SQL query with three joins is slow on 10M rows. What indexes should I try and why?",
    "Write a React hook that debounces a search input and cancels stale requests.",
    "Compare renting vs buying a flat over 10 years at 4% interest; show the numbers.",
    "Draft a careful reply to a customer threatening to cancel over a billing error.",
    "Write a regex that validates IPv4 addresses and explain each part.",
    "Plan a 5-day Japan itinerary for a family with a toddler on a moderate budget.",
    "Implement an LRU cache in Go with O(1) get and put.",
    "A train leaves at 9:40 going 80 km/h, another at 10:10 going 110 km/h on the same line. "
    "When does the second catch up?",
    "Rewrite this paragraph for a legal audience and keep every obligation intact.",
    "Write unit tests for a function that parses ISO 8601 durations.",
    "Explain why my Docker container exits immediately with code 0 and how to debug it.",
    "Summarise the trade-offs of Kafka vs RabbitMQ for an order pipeline.",
    "Write a short story (500 words) in second person about a lighthouse keeper.",
    "Design the database tables for a library app with loans, holds and fines.",
]

TIER3 = [
    "Is P equal to NP? Give your best argument either way.",
    "Prove that every planar graph is 4-colourable.",
    "Find all integer solutions of x^3 + y^3 = z^3 + 1 and prove you have them all.",
    "Prove or disprove: every even number greater than 2 is a sum of two primes.",
    "Design a consensus protocol that tolerates f Byzantine nodes with 2f+1 replicas.",
    "Give a polynomial-time algorithm for graph isomorphism or explain why none is known.",
    "What is the asymptotic number of self-avoiding walks of length n on the square lattice?",
    "Five people each tell one lie and one truth about who took the key; find who did, "
    "with every statement checked.",
    "Schedule 12 exams in 4 rooms over 3 days so no student has two the same day, given "
    "the conflict list below, or prove it impossible.",
    "Propose a research plan to measure whether LLM benchmarks leak into pretraining data.",
    "Derive the Navier-Stokes equations from first principles and state where they fail.",
    "Prove that the halting problem is undecidable, then extend the proof to Rice's theorem.",
    "Solve: find the minimum number of weighings to find one odd coin among 39, heavier or "
    "lighter unknown, and prove optimality.",
    "Construct a counterexample to the claim that every continuous function is differentiable "
    "almost everywhere, with proof.",
    "How would you detect a new class of side-channel attack in a CPU that no one has "
    "described yet? Design the study.",
    "Give a tight bound on the mixing time of the random transposition shuffle and prove it.",
    "Our budget, deadline and headcount constraints conflict; choose which to relax and "
    "prove the plan is optimal under the rest.",
    "Find the smallest n for which the Ramsey number R(5,5) bound can be improved, and argue why.",
    "Is there an algorithm faster than O(n^2) for 3SUM in the real RAM model? Explain the "
    "state of the art and prove a lower bound in a restricted model.",
    "A knights-and-knaves puzzle with 7 islanders and 9 statements: solve it and show no other "
    "assignment works.",
    "Formalise the Monty Hall problem with n doors and k reveals and prove the optimal policy.",
    "Prove that sqrt(2)+sqrt(3)+sqrt(5) is irrational.",
    "Design an experiment to tell whether a drug's effect is causal when treatment was not "
    "randomised and the confounders are unknown.",
    "Characterise all functions f: R -> R with f(x+y) = f(x)f(y) + f(xy), with proof.",
]


def main() -> int:
    rows = [(p, 1, c) for p, c in tier1()]
    rows += [(p, 2, "short_substantial") for p in TIER2]
    rows += [(p, 3, "short_hard") for p in TIER3]
    for n, (prompt, tier, category) in enumerate(rows):
        line = {
            "id": f"everyday-{n:03d}",
            "prompt": prompt,
            "tier": tier,
            "category": category,
            "source": SOURCE,
        }
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
