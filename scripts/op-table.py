#!/usr/bin/env python3
"""Prints docs/plugins.md's op table from the sources: each op of
plugin-api/abi/src/ops.rs (name, class, doc) with the `Tensor` method of
plugin-api/src/tensor.rs that calls it. `plugins::the_op_table_lists_every_op`
fails when an op is missing from the docs; rerun this and paste."""
import re, sys, os

root = os.path.join(os.path.dirname(__file__), "..")
ops = open(os.path.join(root, "plugin-api/abi/src/ops.rs")).read()
body = ops[ops.index("ops! {"):ops.index("\n}\n", ops.index("ops! {"))]
entries, doc, group = [], [], ""
for line in body.split("\n"):
    l = line.strip()
    if l.startswith("// ---"):
        group = l.strip("/- ").split(";")[0]
        doc = []
    elif l.startswith("///"):
        doc.append(l[3:].strip())
    else:
        m = re.match(r'([A-Za-z0-9]+) = (\d+), "([a-z_0-9]+)", ([A-Za-z]+);', l)
        if m:
            entries.append((m.group(1), m.group(3), m.group(4), " ".join(doc), group))
            doc = []

ten = open(os.path.join(root, "plugin-api/src/tensor.rs")).read()
methods = {}
for m in re.finditer(r"\n    pub fn ([a-z_0-9]+)(\([^{]*?\))\s*(->\s*[^{]+)?\{", ten):
    start, depth, j = m.end(), 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(ten[j], 0)
        j += 1
    args = re.sub(r"\s+", " ", m.group(2)).replace("( ", "(").replace(", )", ")")
    for op in re.findall(r"Op::([A-Za-z0-9]+)", ten[start:j]):
        methods.setdefault(op, []).append(m.group(1) + args)

where = {"Compute": "any", "ParamRead": "forward hooks", "Write": "`optimizer.*`", "State": "`optimizer.*`"}
print("| op | `Tensor` method | hooks | what |")
print("|---|---|---|---|")
for variant, name, cls, d, group in entries:
    # The frame layout (T = [...], I = ..., → ...) is the ABI's business.
    d = re.split(r"(?:^|\s|: )(?:[TIFS] = |→ )", d)[0].strip().rstrip(".:,")
    if not d:
        d = group
    sigs = ", ".join(f"`{s}`" for s in dict.fromkeys(methods.get(variant, []))) or "—"
    d = d.replace("|", "\\|")
    print(f"| `{name}` | {sigs} | {where[cls]} | {d} |")
