"""Plot what ``python -m fastmp --insight=FILE`` wrote: one horizontal bar
per worker of each pool, split into start-up, busy and idle time.

    python benchmarks/plot_insight.py insight.json [more.json ...] out.png

The docs' plot (docs/insight.png) is examples/cluster_primes.py 1000000,
run with ``--insight=local.json`` and with ``--insight=cluster.json
--cluster local:2``.
"""

import json
import sys


def plot(data, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = data["pools"]
    rows = sum(len(p["workers"]) for p in pools)
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * rows))
    labels = []
    y = 0
    parts = (("startup", "start-up", "#bbbbbb"), ("busy", "busy", "#3b75af"))
    parts += (("idle", "idle", "#f0b35a"),)
    for p in pools:
        for w in p["workers"]:
            left = 0.0
            for key, name, color in parts:
                ax.barh(y, w[key], left=left, color=color, label=name)
                left += w[key]
            ax.text(left, y, "  %d tasks" % w["tasks"], va="center")
            labels.append("%s\n%s" % (p["pool"], w["worker"]))
            y += 1
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the pool was made")
    handles, names = ax.get_legend_handles_labels()
    seen = dict(zip(names, handles))
    ax.legend(seen.values(), seen.keys(), loc="lower right")
    ax.set_title("fastmp --insight: time per worker")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: plot_insight.py INSIGHT.json [...] OUT.png")
    pools = []
    for path in sys.argv[1:-1]:
        with open(path) as f:
            pools.extend(json.load(f)["pools"])
    plot({"pools": pools}, sys.argv[-1])
