"""``side_by_side.run``'s results as the markdown tables of BENCHMARKS.md (formatting only, no measuring)."""


def _cell(value, fmt: str = "{:.1f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) else "–"


def markdown(results: dict, command: str) -> str:
    lines = ["## Side by side: JAX vs PyTorch on this machine", "", f"Command: `{command}`", ""]
    lines += [f"- {key}: {value}" for key, value in {**results["machine"], **results["settings"]}.items()]
    frameworks = [name for name in ("jax", "torch eager", "torch.compile") if any(name in row for row in results["rows"])]
    if results["rows"]:
        torch_names = [name for name in frameworks if name != "jax"]
        header = ["classifier", "step"] + [f"{name} img/s" for name in frameworks]
        header += [f"jax / {name}" for name in torch_names] + ["jax GFLOP/s (% of peak)", "jax compile s"]
        lines += ["", "Images/s: median over the rounds, the frameworks alternating within each round. "
                      "jax compile s: trace + lower + compile of the step, timed apart from the rounds.", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
        for row in results["rows"]:
            cells = [row["classifier"], row["step"]] + [_cell(row.get(name)) for name in frameworks]
            cells += [_cell(row["jax"] / row[name], "{:.2f}x") if "jax" in row and name in row else "–"
                      for name in torch_names]
            gflops = row.get("jax GFLOP/s")
            cells.append(f"{gflops:.1f} ({100 * gflops * 1e9 / results['peak_flops']:.1f} %)"
                         if gflops and results["peak_flops"] else "–")
            cells.append(_cell(row.get("jax compile s")))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Peak used for the % column: {results['peak_flops'] / 1e9:.0f} GFLOP/s = {results['peak_note']}. "
                      "FLOPs per call are XLA's `cost_analysis` of the compiled step."]
    if results["compile"]:
        base_k = 10 if 10 in results["compile"] else min(results["compile"])
        lines += ["", "### Compile time of the FLD + TRADES step against K (the attack is a `lax.fori_loop`)", "",
                  "| K | compile s | / K=%d |" % base_k, "|---:|---:|---:|"]
        for k, seconds in sorted(results["compile"].items()):
            lines.append(f"| {k} | {seconds:.1f} | {seconds / results['compile'][base_k]:.2f}x |")
    if results["pmap"]:
        diff_key = next(key for key in results["pmap"][0] if key.startswith("max |params"))
        lines += ["", "### pmapped FLD + TRADES step at one global batch on N forced host devices", "",
                  "Correctness and overhead, not speed-up: the N 'devices' share the same 2 cores. The parameter "
                  "difference comes from per-device BatchNorm statistics (B/N images each) and per-device dropout "
                  "masks, by design.", "",
                  "| devices | per-device batch | img/s | first call s | " + diff_key + " |", "|---:|---:|---:|---:|---:|"]
        for probe in results["pmap"]:
            lines.append(f"| {probe['devices']} | {probe['per-device batch']} | {probe['images_per_s']:.1f} | "
                         f"{probe['first_s']:.1f} | {probe[diff_key]:.2e} |")
    return "\n".join(lines) + "\n"
