"""How an ablation's result reads: a table for the terminal and a PNG plot (mean bits per
byte per arm with its 95% interval over seeds, the random arm as the reference line)."""

from __future__ import annotations

from pathlib import Path


def _interval(bpb: dict) -> str:
    return f"[{bpb['ci95'][0]:.4f}, {bpb['ci95'][1]:.4f}]" if bpb["ci95"] else "—"


def format_table(result: dict) -> str:
    head = (f"ablation {result['ablation_id']} of job {result['job_id']}: {result['params']['model']} model, "
            f"{result['tokens']} tokens per arm, {result['params']['seeds']} seeds, eval "
            f"{Path(result['eval']['path']).name} ({result['eval']['bytes']} bytes)")
    lines = [head, "", f"{'arm':<34} {'docs':>6} {'bits/byte':>10} {'95% interval':>20} "
             f"{'vs random (paired 95% interval)':>34}  {'13-gram contamination':<24}"]
    for a in sorted(result["arms"], key=lambda a: a["bits_per_byte"]["mean"]):
        c = a["contamination"]
        cont = (f"{c['contaminated']} docs, removed" if c["removed"] else
                f"{c['contaminated']} docs, FLAGGED" if c["flagged"] else "none")
        delta = "" if a["delta_vs_random"] is None else f"{a['delta_vs_random']:+.4f}"
        paired = a.get("delta_vs_random_paired")
        if paired and paired["ci95"]:
            delta += f" [{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}]"
        lines.append(f"{a['name']:<34} {a['docs']:>6} {a['bits_per_byte']['mean']:>10.4f} "
                     f"{_interval(a['bits_per_byte']):>20} {delta:>34}  {cont:<24}")
    lines.append(f"\nwall time {result['wall_seconds']} s; lower bits/byte is better")
    return "\n".join(lines)


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(result["arms"], key=lambda a: a["bits_per_byte"]["mean"], reverse=True)
    means = [a["bits_per_byte"]["mean"] for a in arms]
    bounds = [a["bits_per_byte"]["ci95"] or (m, m) for a, m in zip(arms, means, strict=True)]  # one seed: no bar
    errors = [[m - lo for m, (lo, _) in zip(means, bounds, strict=True)],
              [hi - m for m, (_, hi) in zip(means, bounds, strict=True)]]
    colours = {"curated": "#2a7", "random": "#888", "stage": "#48c"}
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(arms) + 1.6))
    ax.barh([a["name"] for a in arms], means, xerr=errors, capsize=3,
            color=[colours.get(a["kind"], "#48c") for a in arms])
    for a in arms:
        if a["kind"] == "random":
            ax.axvline(a["bits_per_byte"]["mean"], color="#888", linestyle="--", linewidth=1)
    low = min(m - e for m, e in zip(means, errors[0], strict=True))
    high = max(m + e for m, e in zip(means, errors[1], strict=True))
    pad = max(high - low, 1e-3) * 0.3
    ax.set_xlim(max(0.0, low - pad), high + pad)
    ax.set_xlabel(f"bits per byte on {Path(result['eval']['path']).name} (lower is better)")
    ax.set_title(f"{result['job_name'] or result['job_id']}: {result['params']['model']} LM, "
                 f"{result['tokens']:,} tokens per arm, 95% CI over {result['params']['seeds']} seeds", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
