# The device check's table, from what scripts/device-check.sh wrote under OUT.
# usage: python3 scripts/device_table.py OUT
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try: return json.load(open(os.path.join(out, name)))
    except Exception as e: return None
def torch(name):
    try: t = open(os.path.join(out, name)).read()
    except Exception: return None
    m = re.search(r"peak_mem=([\d.]+)GiB.*step=([\d.]+)ms tok/s=(\d+)", t)
    return (float(m.group(2)), float(m.group(3)), float(m.group(1))) if m else None
k = load("kernels.json") or []
bad = [c["op"] for c in k if not c["ok"]]
worst = max([max(c["forward"], c["backward"] or 0) for c in k] or [float("nan")])
tp, tp32 = load("throughput.json"), load("throughput-f32.json")
tb, tf, tt = torch("torch-bf16.txt"), torch("torch-f32.txt"), torch("torch-tf32.txt")
s = load("run/summary.json")
rows = [("kernels vs CPU", f"{len(k) - len(bad)}/{len(k)} ok, worst rel err {worst:.1e}" + (f", off: {bad}" if bad else ""))]
for name, t in (("speedrun (candle CUDA, bf16 autocast)", tp), ("speedrun (candle CUDA, f32)", tp32)):
    if t:
        rows.append((name, f"{t['step_ms_median']:.1f} ms/step, {t['tokens_per_s']:.0f} tok/s "
                     f"(fwd {t['forward_ms_median']:.1f} / bwd {t['backward_ms_median']:.1f} / opt {t['optimizer_ms_median']:.1f} ms), "
                     f"peak mem {t['peak_memory_bytes']/2**30:.1f} GiB, matmul peak {t['matmul_peak_gflops']/1e3:.1f} TFLOP/s"))
for name, t in (("PyTorch eager bf16 autocast", tb), ("PyTorch eager f32", tf), ("PyTorch eager TF32", tt)):
    if t: rows.append((name, f"{t[0]:.1f} ms/step, {t[1]:.0f} tok/s, peak mem {t[2]:.1f} GiB"))
# The goal's ratio: same precision on both sides.
if tp and tb: rows.append(("ratio speedrun / PyTorch, bf16 (the goal: >= 1)", f"{tp['tokens_per_s'] / tb[1]:.3f}"))
if tp32 and tf: rows.append(("ratio speedrun / PyTorch, f32", f"{tp32['tokens_per_s'] / tf[1]:.3f}"))
if tp32 and tt: rows.append(("ratio speedrun f32 / PyTorch TF32", f"{tp32['tokens_per_s'] / tt[1]:.3f}"))
if s:
    valid = s["verdict"]["valid"] if isinstance(s.get("verdict"), dict) else s.get("verdict")
    rows.append(("200 steps", f"status {s['status']}, valid {valid}, val loss {s.get('final_val_loss')}, "
                 f"{s['tokens_per_s']:.0f} tok/s, peak mem {s['peak_memory_bytes']/2**30:.1f} GiB, error {s.get('error')}"))
try:
    b = open(os.path.join(out, "budget.txt")).read()
    m = re.search(r"device memory budget exceeded in [^:]+", b)
    rows.append(("1 GiB budget", m.group(0) if m else "NOT refused: " + b[-200:]))
except Exception: pass
def losses(run):
    try:
        return [json.loads(l)["train_loss"] for l in open(os.path.join(out, run, "metrics.jsonl")) if '"kind":"step"' in l.replace(" ", "")]
    except Exception:
        return None
a, b = losses("single20"), losses("nccl1")
n1 = load("nccl1/summary.json")
if a is not None or n1:
    same = a is not None and a == b and len(a) == 20
    ranks = next((c["detail"] for c in (n1 or {}).get("verdict", {}).get("checks", []) if c["check"] == "ranks"), None)
    rows.append(("NCCL, world size 1", f"losses identical to the single process over 20 steps: {same}; ranks check: {ranks}"))

print("| check | result |\n|---|---|")
for a, b in rows: print(f"| {a} | {b} |")
