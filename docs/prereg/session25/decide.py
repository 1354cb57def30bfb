"""M2: apply procedure C to the val rows of seeds 42-46; print g*, margins and the registered adoption decision."""
import json
import sys

sys.path.insert(0, "/work/main")
from pipeline.calibration import choose  # noqa: E402

out = {}
for s in (42, 43, 44, 45, 46):
    rows = json.load(open(f"/work/exp/s25/val_{s}.json"))
    rr = [{"guidance": r["sampler"]["guidance"], "margin": r["margin"], "meets_a": r["meets_a"]} for r in rows]
    assert [r["guidance"] for r in rr] == [1.0, 1.25, 1.375, 1.5, 1.75, 2.0]
    g = choose(rr, prefer=1.375)
    m = {r["guidance"]: r["margin"] for r in rr}
    out[s] = {"g_star": g, "margin_g_star": m[g], "margin_1.375": m[1.375], "rows": rr}
    print(s, "g*", g, f"margin at g* {m[g]:+.4f}  at 1.375 {m[1.375]:+.4f}  ",
          " ".join(f"{r['guidance']}:{r['margin']:+.3f}{'' if r['meets_a'] else '(no a)'}" for r in rr))
mc = sum(v["margin_g_star"] for v in out.values()) / 5
mf = sum(v["margin_1.375"] for v in out.values()) / 5
print(f"mean val margin: C {mc:+.4f}, fixed 1.375 {mf:+.4f} -> C adopted: {mc > mf}")
json.dump(out, open("/work/exp/s25/decision.json", "w"), indent=1)
