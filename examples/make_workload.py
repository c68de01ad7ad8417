"""Generate examples/workload.jsonl and examples/openai-batch.jsonl (deterministic).

    python examples/make_workload.py            # rewrites both files next to this script
    python examples/make_workload.py --check    # exit 1 if the committed files are stale

The workload imitates a day of production traffic at roughly the 70/25/5 tier mix from the
README: support tickets, reviews, invoices, e-mails and quick questions (tier 1), code, careful
writing and multi-step reasoning (tier 2), and proofs and research questions (tier 3). Every
job is built from a hand-written template and hand-written content; a seeded RNG only picks and
shuffles, so the output is byte-for-byte stable. The intended tier is not written into the
jobs: tiering is tierline's job (compare with `tierline classify workload.jsonl`).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEED = 9
COUNTS = {1: 210, 2: 75, 3: 15}  # 300 jobs, 70 / 25 / 5 %
BATCH_LINES = 24

Job = dict[str, Any]

# --- tier 1 content -----------------------------------------------------------------------------

CUSTOMERS = ["Dana", "Priya", "Marcus", "Li Wei", "Sofia", "Tom", "Aisha", "Jonas", "Mei", "Raúl"]

TICKETS = [
    (
        "a standing desk",
        "arrived with the left leg bent and a motor cable missing",
        "a replacement leg and cable rather than a full return",
    ),
    (
        "the Pro plan",
        "was charged twice this month (two identical $49 charges on the 3rd)",
        "a refund of the duplicate charge",
    ),
    (
        "a pair of trail running shoes",
        "has not arrived; tracking has said 'label created' for 9 days",
        "to know whether the parcel is lost",
    ),
    (
        "the mobile app",
        "logs me out every time I switch to another app on Android 14",
        "a fix or a workaround before my trip on Friday",
    ),
    (
        "a coffee grinder",
        "started making a grinding noise after two weeks and now stops mid-cycle",
        "a replacement under warranty",
    ),
    (
        "my account",
        "is locked after I changed my phone and lost the 2FA codes",
        "help getting back in without losing my saved projects",
    ),
    (
        "the annual subscription",
        "renewed automatically although I cancelled in the app in May",
        "the renewal reversed",
    ),
    (
        "a 27-inch monitor",
        "has a vertical line of dead pixels near the right edge",
        "an exchange, ideally shipped before the old one is returned",
    ),
    (
        "the CSV export",
        "drops every row after 10,000 when I export the orders report",
        "the full export, since month-end closing is tomorrow",
    ),
    ("a gift card", "shows a balance of $0 although it was never used", "the $75 balance restored"),
    (
        "the team workspace",
        "no longer lets admins invite new members ('seat limit reached')",
        "to understand why: we have 12 of 20 seats in use",
    ),
    (
        "a baby stroller",
        "was delivered to a neighbour's address two streets away",
        "the delivery record corrected and a note to the courier",
    ),
]

TICKET_PROMPTS = [
    ("summarize", "Summarize this support ticket in one sentence:\n\n{ticket}", 60),
    (
        "classify",
        "Classify this support ticket as one of: billing, shipping, technical, account, "
        "other. Answer with the label only.\n\n{ticket}",
        5,
    ),
    (None, "What does the customer want? Answer in at most 15 words.\n\n{ticket}", 30),
    ("triage", "Give this ticket a priority (low, normal, urgent) and one reason.\n\n{ticket}", 40),
]

PRODUCTS = [
    (
        "wireless headphones",
        "the noise cancelling is better than my old pair",
        "the ear cushions get hot after an hour",
    ),
    (
        "air fryer",
        "fries come out crisp in 12 minutes",
        "the basket coating started flaking in month two",
    ),
    (
        "hiking backpack",
        "the hip belt carries the weight well",
        "the side pockets are too shallow for a bottle",
    ),
    ("robot vacuum", "it maps the flat in one run", "it gets stuck on the bathroom mat every day"),
    (
        "e-reader",
        "the screen is sharp and the battery lasts weeks",
        "page turns lag with large PDFs",
    ),
    (
        "office chair",
        "my back pain is gone after a month",
        "assembly took over an hour with poor instructions",
    ),
    ("electric kettle", "it boils a litre in under three minutes", "the lid hinge feels flimsy"),
    ("running watch", "GPS locks in seconds", "the strap gave me a rash"),
    ("blender", "smoothies are completely smooth", "it is as loud as a leaf blower"),
    ("tent", "it stayed dry in a night of heavy rain", "the poles are heavy for backpacking"),
]

REVIEW_SHAPES = [
    "Love the {p}: {good}. Five stars.",
    "The {p} is fine I guess. {good}, but {bad}.",
    "Returned the {p}. {bad}, and support never answered.",
    "Two months with the {p}: {good}. Only complaint: {bad}.",
    "Do not buy this {p}. {bad}. Waste of money.",
]

REVIEW_PROMPTS = [
    (
        "classify",
        "Classify the sentiment of this review as positive, negative or neutral. "
        'Answer with one word.\n\n"{review}"',
        5,
        ["positive", "negative", "neutral"],
    ),
    (
        "summarize",
        "Summarize the customer review below in under 20 words.\n\nReview: {review}",
        40,
        None,
    ),
    (
        "extract",
        "List the product's pros and cons mentioned in this review as two short lists.\n\n{review}",
        80,
        None,
    ),
]

VENDORS = [
    (
        "Northwind Office Supply",
        "INV-2024-0{n}",
        [("A4 paper, 10 reams", 42.50), ("toner cartridge", 89.00)],
    ),
    (
        "Bright Cloud Hosting",
        "BC-{n}",
        [("VM hours (720 h)", 311.04), ("object storage, 2 TB", 46.00)],
    ),
    (
        "Acme Catering GmbH",
        "AC/{n}/24",
        [("lunch buffet, 25 people", 612.50), ("coffee service", 75.00)],
    ),
    (
        "Lopez & Daughters Plumbing",
        "{n}",
        [("emergency call-out", 150.00), ("valve replacement", 96.40)],
    ),
    ("Kestrel Legal LLP", "KL-{n}", [("contract review, 3.5 h", 1225.00)]),
    (
        "Pixel Print Shop",
        "PP{n}",
        [("flyers, 2,000 copies", 180.00), ("design fee", 120.00), ("delivery", 15.00)],
    ),
]

INVOICE_SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "invoice",
        "schema": {
            "type": "object",
            "properties": {
                "vendor": {"type": "string"},
                "invoice_number": {"type": "string"},
                "date": {"type": "string"},
                "total": {"type": "number"},
                "currency": {"type": "string"},
            },
            "required": ["vendor", "invoice_number", "total"],
        },
    },
}

EMAILS = [
    (
        "Re: Thursday sync",
        "Can we move Thursday's sync to 3pm? I have a dentist appointment at 10. "
        "If 3pm doesn't work, Friday morning is fine too.",
    ),
    (
        "Your invoice #7731 is overdue",
        "This is a reminder that invoice #7731 for $2,340.00 was due on "
        "the 15th. Please arrange payment or let us know if there is a problem.",
    ),
    (
        "Congratulations, you've won!",
        "Click here to claim your $1,000 gift card. Offer expires in 24 "
        "hours. Reply with your bank details to receive the prize.",
    ),
    (
        "Broken link on pricing page",
        "Hi, the 'Compare plans' link on your pricing page returns a 404. "
        "Thought you'd want to know. Cheers, Ben",
    ),
    (
        "Weekly digest: 5 articles you missed",
        "This week: serverless cost traps, a Postgres 17 upgrade "
        "story, and why your standups are too long.",
    ),
    (
        "Contract renewal",
        "Our contract ends on 30 June. Before we renew we'd like a call about the "
        "price increase you announced; could you propose two slots next week?",
    ),
    ("Lunch?", "Fancy lunch on Wednesday? The new ramen place on 5th opened last week."),
    (
        "Password reset request",
        "Someone requested a password reset for your account. If it wasn't "
        "you, ignore this e-mail; the link expires in one hour.",
    ),
]

EMAIL_PROMPTS = [
    (
        "classify",
        "Classify this e-mail as one of: meeting, invoice, spam, bug_report, newsletter, "
        "sales, personal, security. Answer with the label only.\n\nSubject: {subject}\n\n{body}",
        5,
    ),
    (
        "summarize",
        "Summarize this e-mail in one line for an inbox preview.\n\nSubject: {subject}\n\n{body}",
        30,
    ),
    (
        "extract",
        "Does this e-mail ask for a meeting? If yes, give the proposed day and time; if not, "
        "answer 'no'.\n\nSubject: {subject}\n\n{body}",
        20,
    ),
]

QUESTIONS = [
    "What is the capital of Australia?",
    "How many centimetres are in 3.5 feet?",
    "What does HTTP status code 404 mean?",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "What is the chemical symbol for potassium?",
    "Who wrote 'Pride and Prejudice'?",
    "What is the difference between a debit card and a credit card, in one sentence?",
    "How many days are there in a leap year?",
    "What does the acronym GDPR stand for?",
    "What is 15% of 240?",
    "Which planet is closest to the Sun?",
    "What is the boiling point of water at sea level in Kelvin?",
    "What time zone is Tokyo in, relative to UTC?",
    "Define 'invoice' in one sentence.",
    "What file extension do JSON Lines files usually have?",
    "What is the plural of 'cactus'?",
]

NOTES = [
    "- Q3 revenue came in 4% under plan, mostly due to delayed enterprise renewals.\n"
    "- Marketing shifts 20% of the events budget to paid search for Q4.\n"
    "- The mobile app launch moves from Oct 15 to Nov 2 because of store review.",
    "- The data warehouse migration is 80% done; the finance tables move next week.\n"
    "- On-call rotation changes to weekly handovers on Mondays.\n"
    "- Two open roles: a staff SRE and a data engineer.",
    "- Customer churn fell to 2.1% in September.\n"
    "- The support backlog is down from 340 to 95 tickets.\n"
    "- The pricing page A/B test ends Friday; results at the next meeting.",
]

# --- tier 2 content -----------------------------------------------------------------------------

CODE_TASKS = [
    "Write a Python function `merge_intervals(intervals)` that merges overlapping closed intervals "
    "and returns them sorted. Handle empty input and touching intervals ([1,2] and [2,3] merge). "
    "Include type hints, a docstring and three pytest tests.",
    "Write a SQL query over `orders(id, customer_id, created_at, total)` and `customers(id, "
    "country)` that returns, per country, the number of customers whose first order was in 2024 "
    "and their average first-order total. Explain how it handles customers with several orders "
    "on their first day.",
    "Refactor this function so it streams the file instead of reading it whole, and keeps the "
    "same output:\n\n```python\ndef count_errors(path):\n    lines = open(path).read().split('\\n')\n"
    "    return sum(1 for l in lines if 'ERROR' in l)\n```",
    "This Go handler leaks goroutines under load. Find the bug and fix it:\n\n```go\n"
    "func handler(w http.ResponseWriter, r *http.Request) {\n    ch := make(chan string)\n"
    '    go func() { ch <- slowLookup(r.URL.Query().Get("q")) }()\n    select {\n'
    "    case res := <-ch:\n        fmt.Fprint(w, res)\n    case <-time.After(2 * time.Second):\n"
    '        http.Error(w, "timeout", 504)\n    }\n}\n```',
    "Implement an LRU cache class in TypeScript with `get(key)` and `put(key, value)` in O(1), "
    "generic over key and value types, with a capacity set in the constructor.",
    "Write a Bash script that rotates the logs in /var/log/myapp: gzip files older than one day, "
    "delete archives older than 30 days, and never touch the file currently being written. It must "
    "be safe to run from cron twice at once.",
    "Write a Python asyncio function that fetches a list of URLs with at most 10 requests in flight, "
    "retries 5xx responses up to three times with exponential backoff, and returns results in the "
    "input order.",
    "Design the database schema (PostgreSQL DDL) for a room-booking system: rooms, bookings, "
    "recurring bookings and cancellations. Add a constraint that prevents double bookings.",
    "Write a Rust function that parses a `key=value;key2=value2` string into a HashMap, returning "
    "a descriptive error on malformed pairs instead of panicking. Include unit tests.",
    "Review this Python class for thread-safety problems and rewrite it:\n\n```python\n"
    "class Counter:\n    def __init__(self):\n        self.n = 0\n    def incr(self):\n"
    "        self.n = self.n + 1\n        return self.n\n```",
]

WRITING_TASKS = [
    "Write a 150-word apology e-mail to {name}, whose {item} {issue}. Acknowledge the problem "
    "without blaming the courier, offer {want}, and do not promise a delivery date we cannot keep.",
    "Rewrite the following paragraph for a non-technical executive audience, keeping every number "
    'and removing jargon:\n\n"Our p99 latency regressed 40% after the ORM upgrade because N+1 '
    'queries bypassed the connection pool, saturating the primary at 85% CPU during peak."',
    "Draft a product announcement (about 200 words) for the launch of {item} features aimed at "
    "small accounting firms. Warm but not salesy; one concrete customer example; end with a clear "
    "call to action.",
    "Write a performance review paragraph for an engineer who shipped the billing migration on "
    "time but struggled to delegate. Be specific, balanced and kind, and suggest one goal.",
    "Write a short, persuasive internal memo arguing for a four-day on-call rotation instead of "
    "seven, anticipating two objections from management and answering them.",
    "Turn these bullet points into a clear customer-facing incident report (what happened, impact, "
    "what we are changing):\n\n- 14:02 UTC deploy of config change\n- checkout errors for 23 "
    "minutes, ~4% of orders failed\n- rollback at 14:25\n- root cause: missing feature flag default",
]

REASONING_TASKS = [
    "A warehouse ships 1,200 orders a day. 18% need two boxes, the rest one. Boxes cost $0.80 and "
    "packing takes 90 seconds per box. Packers cost $24/hour. What is the daily packaging and "
    "labour cost, and how much would switching 40% of two-box orders to one larger $1.30 box "
    "save per month (30 days)? Show each step.",
    "Four people must cross a bridge at night with one torch; at most two cross at a time, at the "
    "slower one's pace. They take 1, 2, 5 and 10 minutes. What is the minimum total time? Explain "
    "why no faster schedule exists.",
    "Our SaaS has 2,000 customers paying $40/month with 3% monthly churn. A new onboarding flow "
    "would cost $30,000 and cut churn to 2.2%. How many months until it pays for itself? State "
    "your assumptions.",
    "Plan a meeting schedule: five teams each need a 1-hour slot with the CFO this week; the CFO "
    "is free Mon 9-12, Wed 13-17, Thu 9-11; team A cannot do mornings, team C only Wednesday, and "
    "teams B and D must not be back to back. Give a valid schedule and explain how you found it.",
    "A/B test: variant A converted 412 of 10,000 visitors, variant B 468 of 10,000. Is the "
    "difference statistically significant at the 5% level? Walk through the test you choose and "
    "what the result means for the decision.",
]

# --- tier 3 content -----------------------------------------------------------------------------

HARD_TASKS = [
    "Prove that there are infinitely many primes of the form 4k + 3.",
    "Let $f:\\mathbb{R}\\to\\mathbb{R}$ satisfy $f(x+y) = f(x) + f(y)$ for all $x, y$ and be "
    "continuous at one point. Prove that $f(x) = cx$ for some constant $c$.",
    "Prove that every finite group of order $p^2$, for a prime $p$, is abelian.",
    "Design an algorithm that, given $n$ points in the plane, finds the closest pair in "
    "$O(n \\log n)$ time, and prove both its correctness and its running time.",
    "Show that the halting problem for Turing machines is undecidable, then explain precisely why "
    "the same diagonal argument fails for machines with a fixed bound on their tape.",
    "Prove or disprove: for every integer $n \\ge 1$, $n^5 - n$ is divisible by 30.",
    "We observe that our distributed key-value store occasionally returns stale reads after a "
    "leader failover, despite quorum writes (N=5, W=3, R=3). Propose a formal model of the "
    "failure, identify which assumption of the quorum-intersection argument breaks, and design a "
    "protocol change with a proof sketch that it restores linearizability.",
    "Evaluate $\\int_0^\\infty \\frac{\\sin x}{x}\\,dx$ rigorously, justifying every interchange "
    "of limits.",
]

TIER3_SYSTEM = "You are a careful mathematician. Give complete, rigorous arguments."


# --- builders -----------------------------------------------------------------------------------


def ticket_job(rng: random.Random, n: int) -> Job:
    name = rng.choice(CUSTOMERS)
    item, issue, want = rng.choice(TICKETS)
    order = rng.randrange(10_000, 99_999)
    ticket = (
        f"Hi, this is {name} (order #{order}). My order of {item} {issue}. I'd like {want}. Thanks."
    )
    task, template, max_tokens = rng.choice(TICKET_PROMPTS)
    job: Job = {
        "id": f"tkt-{n:04d}",
        "prompt": template.format(ticket=ticket),
        "max_tokens": max_tokens,
    }
    if task:
        job["task"] = task
    job["metadata"] = {"queue": "helpdesk", "order": order}
    return job


def review_job(rng: random.Random, n: int) -> Job:
    product, good, bad = rng.choice(PRODUCTS)
    review = rng.choice(REVIEW_SHAPES).format(
        p=product, good=good.capitalize(), bad=bad.capitalize()
    )
    task, template, max_tokens, expect = rng.choice(REVIEW_PROMPTS)
    job: Job = {
        "id": f"rev-{n:04d}",
        "task": task,
        "prompt": template.format(review=review),
        "max_tokens": max_tokens,
    }
    if expect:
        job["expect"] = expect
    job["metadata"] = {"source": "storefront", "product": product}
    return job


def invoice_job(rng: random.Random, n: int) -> Job:
    vendor, number, items = rng.choice(VENDORS)
    inv = number.format(n=rng.randrange(100, 999))
    day = rng.randrange(1, 28)
    lines = "\n".join(f"  {desc:<30} {price:>10.2f}" for desc, price in items)
    total = sum(price for _, price in items)
    text = (
        f"{vendor}\nInvoice {inv}\nDate: 2024-{rng.randrange(1, 12):02d}-{day:02d}\n\n"
        f"{lines}\n  {'TOTAL (USD)':<30} {total:>10.2f}\n\nPayment due within 30 days."
    )
    return {
        "id": f"inv-{n:04d}",
        "task": "extract",
        "messages": [
            {"role": "system", "content": "Extract invoice fields. Reply with JSON only."},
            {"role": "user", "content": text},
        ],
        "response_format": INVOICE_SCHEMA,
        "max_tokens": 120,
        "metadata": {"source": "ap-inbox"},
    }


def email_job(rng: random.Random, n: int) -> Job:
    subject, body = rng.choice(EMAILS)
    task, template, max_tokens = rng.choice(EMAIL_PROMPTS)
    return {
        "id": f"mail-{n:04d}",
        "task": task,
        "max_tokens": max_tokens,
        "prompt": template.format(subject=subject, body=body),
    }


def question_job(rng: random.Random, n: int) -> Job:
    return {"id": f"qa-{n:04d}", "prompt": rng.choice(QUESTIONS), "max_tokens": 40}


def notes_job(rng: random.Random, n: int) -> Job:
    return {
        "id": f"notes-{n:04d}",
        "task": "summarize",
        "max_tokens": 80,
        "prompt": "TL;DR these meeting notes in two bullet points:\n\n" + rng.choice(NOTES),
    }


def code_job(rng: random.Random, n: int) -> Job:
    job: Job = {"id": f"code-{n:04d}", "prompt": rng.choice(CODE_TASKS), "max_tokens": 700}
    if rng.random() < 0.5:
        job["task"] = "code"
    return job


def writing_job(rng: random.Random, n: int) -> Job:
    item, issue, want = rng.choice(TICKETS)
    prompt = rng.choice(WRITING_TASKS).format(
        name=rng.choice(CUSTOMERS), item=item, issue=issue, want=want
    )
    return {
        "id": f"write-{n:04d}",
        "task": "writing",
        "prompt": prompt,
        "max_tokens": 400,
        "temperature": 0.7,
    }


def reasoning_job(rng: random.Random, n: int) -> Job:
    return {"id": f"reason-{n:04d}", "prompt": rng.choice(REASONING_TASKS), "max_tokens": 600}


def hard_job(rng: random.Random, n: int) -> Job:
    job: Job = {"id": f"hard-{n:04d}", "prompt": rng.choice(HARD_TASKS), "max_tokens": 1500}
    if rng.random() < 0.5:
        job["system"] = TIER3_SYSTEM
    return job


# Each tier's builders with their weights: the mix inside a tier.
BUILDERS: dict[int, list[tuple[Callable[[random.Random, int], Job], int]]] = {
    1: [
        (ticket_job, 30),
        (review_job, 25),
        (invoice_job, 15),
        (email_job, 15),
        (question_job, 10),
        (notes_job, 5),
    ],
    2: [(code_job, 45), (writing_job, 30), (reasoning_job, 25)],
    3: [(hard_job, 1)],
}


def workload(seed: int = SEED) -> list[Job]:
    """The jobs, in a stable shuffled order (a day's traffic arrives interleaved)."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for tier, count in COUNTS.items():
        builders = [b for b, _ in BUILDERS[tier]]
        weights = [w for _, w in BUILDERS[tier]]
        for _ in range(count):
            builder = rng.choices(builders, weights)[0]
            jobs.append(builder(rng, len(jobs) + 1))
    rng.shuffle(jobs)
    return jobs


def as_openai_batch(job: Job, model: str) -> Job:
    """One job as an OpenAI Batch API line (what a file made for /v1/batches looks like)."""
    messages = list(job.get("messages") or [{"role": "user", "content": job["prompt"]}])
    if job.get("system"):
        messages.insert(0, {"role": "system", "content": job["system"]})
    body: Job = {"model": model, "messages": messages, "max_tokens": job.get("max_tokens", 256)}
    if "response_format" in job:
        body["response_format"] = job["response_format"]
    return {"custom_id": job["id"], "method": "POST", "url": "/v1/chat/completions", "body": body}


def batch_file(jobs: list[Job]) -> list[Job]:
    """A slice of the workload, as someone would have written it for OpenAI's Batch API."""
    picked = jobs[:BATCH_LINES]
    return [
        as_openai_batch(j, "gpt-4.1-mini" if i % 3 else "gpt-4.1") for i, j in enumerate(picked)
    ]


def render(rows: list[Job]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args(argv)
    jobs = workload()
    files = {"workload.jsonl": render(jobs), "openai-batch.jsonl": render(batch_file(jobs))}
    stale = []
    for name, text in files.items():
        path = args.out_dir / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(f"stale: {', '.join(stale)}; run python examples/make_workload.py\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
