"""Measure how the lessons read (issue 27): export-cell sizes, demo/test rhythm, imports across modules, docments.

Run: `.venv/bin/python tools/lesson_shape.py` (add `--json` for machine-readable output). It reads `nbs/*.ipynb`
and `soft_sampler/*.py` as text (plus an import of each module for docments) and prints one line a measure,
with the goal of issue 27 beside it where the issue sets one. Nothing is written.
"""
import argparse, ast, dataclasses, importlib, inspect, json, re, statistics, sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT/"soft_sampler"
DIRECTIVE = re.compile(r"^\s*#\|\s*(\S+)")


def cells(nb: Path) -> list[dict]:
    "The notebook's cells as dicts with `type`, `source` (str) and `flags` (the `#|` directives' first words)."
    out = []
    for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        flags = {m.group(1) for line in src.splitlines() if (m := DIRECTIVE.match(line))}
        out.append(dict(type=c["cell_type"], source=src, flags=flags))
    return out


def body_lines(src: str) -> list[str]:
    "Lines of a code cell that count: not blank, not `#|` directives."
    return [l for l in src.splitlines() if l.strip() and not DIRECTIVE.match(l)]


def definitions(src: str) -> int:
    "Top-level `def`/`class` statements in a cell (0 where the cell does not parse)."
    try: tree = ast.parse(src)
    except SyntaxError: return 0
    return sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body)


def is_export(c: dict) -> bool: return c["type"] == "code" and bool(c["flags"] & {"export", "exports"})


def is_demo_or_test(c: dict) -> bool:
    "A visible code cell that computes something (not exported, not only imports), or a hidden cell that tests."
    if c["type"] != "code" or is_export(c) or "exporti" in c["flags"]: return False
    lines = [l for l in body_lines(c["source"]) if not l.lstrip().startswith("#")]
    if "hide" in c["flags"]: return any(re.match(r"\s*(test_\w+\(|assert\b)", l) for l in lines)  # a hidden test counts
    return bool(lines) and not all(re.match(r"\s*(from\s+\S+\s+)?import\s", l) for l in lines)


def notebook_measures(nbs: list[Path]) -> dict:
    sizes, multi, orphan, exports, per_nb = [], 0, 0, 0, {}
    for nb in nbs:
        cs = cells(nb)
        idx = [i for i, c in enumerate(cs) if is_export(c)]
        nb_orphans = 0
        for k, i in enumerate(idx):
            nxt = idx[k+1] if k+1 < len(idx) else len(cs)
            if not any(is_demo_or_test(c) for c in cs[i+1:nxt]): nb_orphans += 1
        nb_sizes = [len(body_lines(cs[i]["source"])) for i in idx]
        nb_multi = sum(definitions(cs[i]["source"]) >= 2 for i in idx)
        sizes += nb_sizes; multi += nb_multi
        exports += len(idx); orphan += nb_orphans
        per_nb[nb.stem] = dict(export_cells=len(idx), orphans=nb_orphans, multi=nb_multi,
                               median_lines=statistics.median(nb_sizes) if nb_sizes else 0)
    q = statistics.quantiles(sizes, n=10) if len(sizes) >= 2 else [0]*9
    return dict(export_cells=exports, median_lines=statistics.median(sizes) if sizes else 0, p90_lines=q[8],
                over_10_lines=sum(s > 10 for s in sizes)/max(len(sizes), 1),
                two_or_more_definitions=multi/max(exports, 1),
                followed_by_demo_or_test=1 - orphan/max(exports, 1), per_notebook=per_nb)


def module_numbers(nbs: list[Path]) -> dict[str, int]:
    "Module name -> its notebook's number, from each notebook's `#| default_exp`."
    out = {}
    for nb in nbs:
        m = re.search(r"#\|\s*default_exp\s+(\S+)", nb.read_text(encoding="utf-8"))
        num = re.match(r"(\d+)", nb.stem)
        if m and num: out[m.group(1).replace("\\n", "").strip('"')] = int(num.group(1))
    return out


def imports(py: Path) -> list[tuple[str, list[str], int]]:
    "(module imported from, names, line) for every import of a soft_sampler module in `py` (lazy ones included)."
    out = []
    for n in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom) and n.module:
            mod = n.module if n.level == 0 else f"soft_sampler.{n.module}"
            if mod.startswith("soft_sampler."): out.append((mod.split(".")[1], [a.name for a in n.names], n.lineno))
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("soft_sampler."): out.append((a.name.split(".")[1], [], n.lineno))
    return out


def import_measures(nums: dict[str, int]) -> dict:
    upward, private, graph = [], [], defaultdict(set)
    for py in sorted(LIB.glob("*.py")):
        me = py.stem
        if me not in nums: continue
        for mod, names, line in imports(py):
            if mod == me or mod not in nums: continue
            graph[me].add(mod)
            if nums[mod] > nums[me]: upward.append(f"{me} ({nums[me]:02d}) -> {mod} ({nums[mod]:02d}) line {line}")
            private += [f"{me} <- {mod}.{n}" for n in names if n.startswith("_") and not n.endswith("__")]
    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
    return dict(upward_imports=upward, private_names_across_modules=private, cycles=[" <-> ".join(c) for c in cycles])


def helper_homes() -> dict:
    "How many library modules define each job that should have one home."
    jobs = {"atomic write (os.replace)": r"os\.replace\(", "_check_int": r"def _check_int\b",
            "encode_prompts": r"def encode_prompts\b", "sample_cli": r"def sample_cli\b"}
    out = {}
    for job, pat in jobs.items():
        out[job] = sorted(p.stem for p in LIB.glob("*.py") if p.stem != "_modidx" and re.search(pat, p.read_text(encoding="utf-8")))
    return out


def self_tuple_stores(src: str) -> tuple[int, int]:
    """`self.a, self.b = ...` assignments in `src`: (those `store_attr` would do, those of computed state).

    One is store_attr-able when some element stores a parameter of the enclosing function under its own name
    (`self.a = a`): `store_attr('a')` does that part. The rest only store computed state."""
    def params(f):
        a = f.args
        return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    able = computed = 0
    def visit(node, names):
        nonlocal able, computed
        for n in ast.iter_child_nodes(node):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)): visit(n, params(n)); continue
            if (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Tuple)
                    and len(n.targets[0].elts) >= 2 and all(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                                         and t.value.id == "self" for t in n.targets[0].elts)):
                vals = n.value.elts if isinstance(n.value, ast.Tuple) else []
                hit = any(isinstance(v, ast.Name) and v.id == t.attr and v.id in names
                          for t, v in zip(n.targets[0].elts, vals))
                able += hit; computed += not hit
            visit(n, names)
    visit(ast.parse(src), set())
    return able, computed


def text_measures() -> dict:
    long, able, computed = 0, 0, 0
    for py in LIB.glob("*.py"):
        if py.stem == "_modidx": continue
        auto = False  # nbdev's generated `# %% auto` cell (`__all__`) is not hand-written: not counted
        src = py.read_text(encoding="utf-8")
        for line in src.splitlines():
            if line.startswith("# %%"): auto = line.startswith("# %% auto")
            long += len(line) > 120 and not auto
        a, c = self_tuple_stores(src); able += a; computed += c
    return dict(lines_over_120=long, store_attr_able_tuple_stores=able, computed_self_tuple_assignments=computed)


def docments_coverage(nums: dict[str, int]) -> dict:
    "Share of public functions/classes (in `__all__`) with parameters whose every parameter has a docment."
    from fastcore.docments import docments
    total, full, missing = 0, 0, []
    for mod in sorted(nums, key=nums.get):
        try: m = importlib.import_module(f"soft_sampler.{mod}")
        except Exception as e: missing.append(f"{mod}: import failed ({type(e).__name__})"); continue
        for name in getattr(m, "__all__", []):
            obj = getattr(m, name, None)
            if getattr(obj, "__module__", None) != m.__name__: continue
            f = obj.__init__ if inspect.isclass(obj) else obj
            if not callable(f): continue
            try: params = [p for p in inspect.signature(f).parameters if p not in ("self", "cls")]
            except (TypeError, ValueError): continue
            params = [p for p in params if inspect.signature(f).parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
            if not params: continue
            total += 1
            try: d = docments(obj) if dataclasses.is_dataclass(obj) else docments(f)  # a dataclass: its fields' comments
            except Exception: d = {}
            if all(d.get(p) for p in params): full += 1
            else: missing.append(f"{mod}.{name}")
    return dict(public_with_params=total, fully_documented=full / max(total, 1), undocumented=missing)


GOALS = dict(median_lines="<= 8", followed_by_demo_or_test=">= 0.90", upward_imports="none", cycles="none",
             private_names_across_modules="none", lines_over_120="0", fully_documented="1.00")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--per-notebook", action="store_true", help="also list export cells and orphans per notebook")
    a = ap.parse_args(argv)
    nbs = sorted(p for p in (ROOT/"nbs").glob("[0-9]*.ipynb"))
    sys.path.insert(0, str(ROOT))
    nums = module_numbers(nbs)
    res = dict(notebooks=notebook_measures(nbs), imports=import_measures(nums), homes=helper_homes(),
               text=text_measures(), docments=docments_coverage(nums))
    if a.json: print(json.dumps(res, indent=1)); return 0
    n = res["notebooks"]
    rows = [("export cells", n["export_cells"], ""),
            ("export cell lines, median", n["median_lines"], GOALS["median_lines"]),
            ("export cell lines, p90", round(n["p90_lines"], 1), ""),
            ("export cells over 10 lines", f"{n['over_10_lines']:.0%}", ""),
            ("export cells with >= 2 definitions", f"{n['two_or_more_definitions']:.0%}", ""),
            ("export cells followed by a demo/test", f"{n['followed_by_demo_or_test']:.0%}", GOALS["followed_by_demo_or_test"]),
            ("upward imports", len(res["imports"]["upward_imports"]), GOALS["upward_imports"]),
            ("import cycles", len(res["imports"]["cycles"]), GOALS["cycles"]),
            ("private names across modules", len(res["imports"]["private_names_across_modules"]), "none"),
            ("library lines over 120 chars", res["text"]["lines_over_120"], GOALS["lines_over_120"]),
            ("self.a, self.b = a, b (store_attr-able)", res["text"]["store_attr_able_tuple_stores"], "0: store_attr"),
            ("self.a, self.b = ... of computed state", res["text"]["computed_self_tuple_assignments"], ""),
            ("public callables fully docmented", f"{res['docments']['fully_documented']:.0%} of {res['docments']['public_with_params']}", "100%")]
    rows += [(f"modules defining {job}", len(mods), "1") for job, mods in res["homes"].items()]
    w = max(len(r[0]) for r in rows)
    for name, val, goal in rows: print(f"{name:<{w}}  {str(val):>12}  {('goal ' + goal) if goal else ''}")
    for key in ("upward_imports", "cycles", "private_names_across_modules"):
        for item in res["imports"][key]: print(f"  {key}: {item}")
    if a.per_notebook:
        for nb, d in n["per_notebook"].items():
            print(f"  {nb}: {d['export_cells']} export cells, {d['orphans']} without a demo/test after, "
                  f"median {d['median_lines']:g} lines, {d['multi']} with >= 2 definitions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
