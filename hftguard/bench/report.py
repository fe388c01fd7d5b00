"""The results of ``run_bench`` as tables (``--json`` prints the dict itself)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_report(result: dict[str, Any]) -> None:
    """The results as rich tables on stdout (``--json`` prints ``result`` instead).

    Ratios use the CPU-time clock on CPUs and the wall clock (CUDA events) on GPUs; on CPUs both
    clocks are shown so contention from other jobs is visible.
    """
    from hftguard.console import print_table, stdout

    if "runs" in result:  # several precisions: each run, then the side-by-side comparison
        for run in result["runs"].values():
            print_report(run)
        _print_precision_comparison(result["precision_comparison"])
        return
    env = result["environment"]
    cuda = env["device"].startswith("cuda")
    stdout.print(
        f"[bold]hftguard bench[/bold]: {result['model']['name']} on {env['device']} "
        f"({env['device_name']}, {env['dtype']}, {env['torch_threads']} torch threads)",
        highlight=False,
    )

    def mfu(row: dict[str, Any]) -> str:
        return "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}"

    if "defenses" in result:
        opts = result["options"]
        rows = []
        for r in result["defenses"]:
            check = _fmt(r["measured_over_theoretical"]) + ("" if r["within_10pct"] else " !")
            head = [f"{r['stage']}/{r['defense']}", _fmt(r["theoretical_passes"], 2)]
            if cuda:
                rows.append(
                    [
                        *head,
                        _fmt(r["median_step_s"]),
                        _fmt(r["ratio_to_sft"]),
                        check,
                        _fmt(r["peak_memory_mb"], 4),
                        _fmt(r["tokens_per_s"]),
                        mfu(r),
                    ]
                )
            else:
                rows.append(
                    [
                        *head,
                        _fmt(r["cpu_median_step_s"]),
                        _fmt(r["wall_median_step_s"]),
                        _fmt(r["ratio_to_sft"]),
                        check,
                        _fmt(r["extra_memory_mb"], 3),
                    ]
                )
        cols = (
            ["defense", "passes", "s/step", "x SFT", "/passes", "peak MB", "tok/s", "MFU%"]
            if cuda
            else ["defense", "passes", "cpu s", "wall s", "x SFT", "/passes", "RSS+ MB"]
        )
        print_table(
            f"Defenses: median of {opts['steps'] * opts['rounds']} steps, batch "
            f"{opts['batch_size']} x {opts['seq_len']} tokens; x SFT on "
            f"{'wall' if cuda else 'CPU'} time; ! = off by > 10%",
            cols,
            rows,
        )
    if "trainer" in result:
        tr = result["trainer"]
        rows = []
        for name, key in (
            ("hftguard train()", "hftguard"),
            ("transformers.Trainer", "transformers_trainer"),
        ):
            t = tr[key]
            rows.append(
                [name, _fmt(t["median_step_s"]), _fmt(t["tokens_per_s"]), mfu(t)]
                if cuda
                else [name, _fmt(t["cpu_median_step_s"]), _fmt(t["wall_median_step_s"])]
            )
        print_table(
            f"SFT step: ours / Trainer = {tr['ratio']:.3f} "
            f"({'not slower' if tr['not_slower'] else 'SLOWER'})",
            ["loop", "s/step", "tok/s", "MFU%"] if cuda else ["loop", "cpu s/step", "wall s/step"],
            rows,
        )
    if "generation" in result:
        g = result["generation"]
        rows = [
            ["one at a time", _fmt(g["one_at_a_time_s"]), _fmt(g["wall_one_at_a_time_s"]), "1"],
            [
                f"batched ({g['batch_size']})",
                _fmt(g["batched_s"]),
                _fmt(g["wall_batched_s"]),
                _fmt(g["speedup"]),
            ],
        ]
        print_table(
            f"Generation: {g['prompts']} prompts, greedy, {g['max_new_tokens']} new "
            f"tokens; identical outputs: {_fmt(g['identical'])} "
            f"({g['mismatch_count']} differ)",
            ["mode", f"{g['time_basis']} s", "wall s", "speed-up"],
            rows,
        )

    if "padding" in result:
        _print_padding(result["padding"])
    if "repair" in result:
        _print_repair(result["repair"])


def _print_repair(rep: dict[str, Any]) -> None:
    from hftguard.console import print_table, stdout

    if "skipped" in rep:
        stdout.print(f"Repair defenses: skipped ({rep['skipped']})", highlight=False)
        return
    rows = [
        [
            r["defense"],
            _fmt(r["median_s"]),
            _fmt(r["model_load_s"]),
            _fmt(r["compute_s"]),
            str(r["forward_passes"]),
            _fmt(r["sft_steps_measured"]),
            _fmt(r["sft_steps_theoretical"]),
            _fmt(r["measured_over_theoretical"]),
        ]
        for r in rep["rows"]
    ]
    print_table(
        f"Repair defenses: one repair, wall s; {rep['calibration_batches']} calibration batches; "
        "x SFT = compute s / the align SFT step (wall); theory: a forward = 1/3 SFT step",
        ["repair", "total s", "load s", "compute s", "forwards", "x SFT", "theory", "/theory"],
        rows,
    )


def _print_padding(pad: dict[str, Any]) -> None:
    from hftguard.console import print_table

    rows = [
        [
            name,
            str(d["examples"]),
            f"{100 * d['random']['pad_share']:.1f}%",
            f"{100 * d['grouped']['pad_share']:.1f}%",
            _fmt(d["token_ratio"]),
        ]
        for name, d in pad["training"].items()
    ]
    for name, g in pad["generation"].items():
        rows.append(
            [
                f"generate: {name}",
                str(g["prompts"]),
                f"{100 * g['unsorted']['pad_share']:.1f}%",
                f"{100 * g['sorted']['pad_share']:.1f}%",
                _fmt(g["sorted"]["tokens"] / g["unsorted"]["tokens"]),
            ]
        )
    print_table(
        f"Padding (batch {pad['batch_size']}): random vs length-grouped training batches, "
        "unsorted vs sorted generation batches",
        ["data", "examples", "pad random", "pad grouped", "tokens grouped/random"],
        rows,
    )


def _print_precision_comparison(cmp: dict[str, Any]) -> None:
    from hftguard.console import print_table

    names = list(cmp["dtypes"])
    base = cmp["baseline"]
    others = names[1:]
    if cmp["defenses"]:
        rows = [
            [
                f"{r['stage']}/{r['defense']}",
                *(_fmt(r[f"{n}_step_s"]) for n in names),
                *(_fmt(r[f"{n}_speedup"]) for n in others),
                *(_fmt(r[f"{n}_ratio_to_sft"]) for n in names),
            ]
            for r in cmp["defenses"]
        ]
        print_table(
            f"Precision side by side (s/step; speed-up = {base} time / other time)",
            [
                "defense",
                *(f"{n} s" for n in names),
                *(f"{n} speed-up" for n in others),
                *(f"x SFT {n}" for n in names),
            ],
            rows,
        )
    if cmp.get("trainer"):
        print_table(
            "Our SFT loop by precision",
            ["precision", "s/step", "speed-up"],
            [
                [n, _fmt(t["hftguard_step_s"]), _fmt(t["speedup"])]
                for n, t in cmp["trainer"].items()
            ],
        )
    if cmp["generation"]:
        print_table(
            f"Batched generation by precision (greedy outputs compared with {base})",
            ["precision", "batched s", "speed-up", "outputs differing"],
            [
                [
                    n,
                    _fmt(g["batched_s"]),
                    _fmt(g["speedup"]),
                    f"{g['outputs_differing_from_baseline']}/{g['prompts']}",
                ]
                for n, g in cmp["generation"].items()
            ],
        )
