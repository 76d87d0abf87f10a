import sys, torch
sys.path.insert(0, 'bench')
import heuristics as h, band_proto as B
from soft_sampler import heuristics_hf as H
torch.set_num_threads(1)
real = h.model_rows()
shapes = {"64x49152": h.rows_for(64, 49152, real), "zipf": h.rows_for(64, 49152, real, "zipf"), "8x128256": h.rows_for(8, 128256, real)}
only = sys.argv[1].split(",") if len(sys.argv) > 1 else ["top_p", "typical"]
for name, x in shapes.items():
    for tf, p in (("top_p", 0.9), ("top_p", 0.95), ("typical", 0.9)):
        if tf not in only: continue
        probs = x.softmax(-1)
        pc = torch.full((len(x), 1), p); m = torch.ones(len(x), 1, dtype=torch.long)
        ok = (B._top_p_band if tf == "top_p" else B._typical_band)(x, probs, pc, m, B._band(x, B._GAP))[1]
        new, old = getattr(B, tf), getattr(H, tf)
        soft, a, b = h.median_ms([lambda y: y.softmax(-1), lambda y: new(y, p), lambda y: old(y, p)], x, 7)
        print(f"{name:9s} {tf} {p}: band rows {float(ok.float().mean()):.2f}  new {a/soft:5.2f}x  old {b/soft:5.2f}x  (softmax {soft:.2f} ms)", flush=True)
