"""Write soft_sampler/data/arithmetic.jsonl: templated arithmetic word problems with known answers.

Seeded and deterministic: `python tools/make_arithmetic.py` regenerates the same file (`--check` exits 1 if stale).
Each line: {"id", "question", "answer" (an int), "operation"}. Written for this project
(no external data set): short one- and two-step problems a small instruction model can attempt.
"""
import argparse, json, os, random, sys, tempfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1]/"soft_sampler"/"data"/"arithmetic.jsonl"
NAMES = ["Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kira", "Leo", "Mia", "Noah", "Olga", "Priya"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "coins", "shells", "cards", "balloons"]

def _add(r, n, it):
    a, b = r.randint(2, 20), r.randint(2, 20)
    return f"{n} has {a} {it}. {n} gets {b} more {it}. How many {it} does {n} have now?", a + b
def _sub(r, n, it):
    a = r.randint(8, 30); b = r.randint(1, a - 1)
    return f"{n} has {a} {it} and gives {b} of them away. How many {it} does {n} have left?", a - b
def _mul(r, n, it):
    a, b = r.randint(2, 9), r.randint(2, 9)
    return f"{n} has {a} boxes with {b} {it} in each box. How many {it} does {n} have in total?", a * b
def _div(r, n, it):
    k, q = r.randint(2, 6), r.randint(2, 9)
    return f"{n} shares {k * q} {it} equally among {k} friends. How many {it} does each friend get?", q
def _two_step(r, n, it):
    a, b = r.randint(5, 20), r.randint(2, 10); c = r.randint(1, a + b - 1)
    return f"{n} has {a} {it}, buys {b} more, then gives {c} to a friend. How many {it} does {n} have now?", a + b - c
def _compare(r, n, it):
    m = r.choice([x for x in NAMES if x != n]); a = r.randint(2, 15); b = r.randint(2, 15)
    return f"{n} has {a} {it}. {m} has {b} more {it} than {n}. How many {it} does {m} have?", a + b

TEMPLATES = {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "two_step": _two_step, "compare": _compare}

def problems(n: int = 150, seed: int = 0) -> list[dict]:
    "n problems cycling through the templates, drawn from a seeded `random.Random`."
    r, out = random.Random(seed), []
    for i in range(n):
        op = list(TEMPLATES)[i % len(TEMPLATES)]
        q, a = TEMPLATES[op](r, r.choice(NAMES), r.choice(ITEMS))
        out.append({"id": i, "question": q, "answer": a, "operation": op})
    return out

def render(n: int = 150, seed: int = 0) -> str:
    return "".join(json.dumps(p) + "\n" for p in problems(n, seed))

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=150); p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT); p.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    text = render(a.n, a.seed)
    if a.check: return int(not a.out.is_file() or a.out.read_text() != text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=a.out.parent, prefix=".arith-")
    with os.fdopen(fd, "w") as f: f.write(text)
    os.replace(tmp, a.out)
    print(f"wrote {a.n} problems to {a.out}")
    return 0

if __name__ == "__main__": sys.exit(main())
