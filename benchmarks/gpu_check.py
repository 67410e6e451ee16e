"""Every GPU question in one run: accuracy, speed, memory and routes of the analysis, and GRPO credit.

    python benchmarks/gpu_check.py                              # one CUDA GPU, under 8 minutes (planned)
    python benchmarks/gpu_check.py --device cpu --quick         # the same logic at toy sizes (CI)

Needs torch, transformers, typer/rich and attnrhythm only (TRL + datasets for the GRPO part, which
is skipped without them); nothing is downloaded: the models are random-weight transformers models
built from config objects (full run: ``--layers`` decoder layers of a Qwen3-8B configuration in
bf16; ``--quick``: a toy Qwen3), the GRPO tokenizer a character-level one built in memory.

Checks, written to ``--out`` (JSON) and printed as a table:

1. ``reference``: the capture (route ``auto``: the fused route on CUDA) of a bf16 and an fp16 model
   at ``--ref-n`` tokens (2048) against the float64 dense reference of
   :mod:`attnrhythm.attention.reference` computed from the *same* (rounded) query and key: per
   analysed layer and head the span total, the WAAD rows, the FAI band columns and the receiver
   (proximity, end) columns, as max |error| / max |reference| over all of them; and the end
   metrics (head distance d, WAAD, FAI, receiver heads) from both through the same code.
   Tolerances (:data:`TOLERANCE`): bf16 1e-2, fp16 2e-3, fp32 1e-4.
2. ``timing``: at each ``--ns`` length (8K, 32K): a plain forward (the decoder, SDPA; and
   flash-attention-2 when installed), the same forward with the capture, and a whole
   ``Analyzer.analyze`` (capture + LM head over the response), best of ``--repeats``; CUDA peak
   memory of each and of eager ``output_attentions=True`` where its maps fit in memory.
3. ``routes``: the route every analysed layer took in each captured forward.
4. ``grpo``: ``--grpo-steps`` GRPO steps of a small model (bf16 on CUDA) with rhythm credit in
   TRL's loss forward (``num_iterations=1``), and the credit share of a step: the loss forward of
   the last micro-batch with the capture and shaping minus the same forward with the advantages
   already shaped, over TRL's mean step time.

Each part runs only while the time budget (``--budget``) lasts; a skipped part says why.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from attnrhythm.analyze import AnalysisConfig, Analyzer, TraceInput
from attnrhythm.attention import capture as cap
from attnrhythm.attention.reference import dense_layer_reductions

TOLERANCE = {"bfloat16": 1e-2, "float16": 2e-3, "float32": 1e-4}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
QWEN3_8B = dict(  # the shapes of Qwen3-8B's config (layers set by --layers)
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
)
TOY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
)

console = Console()


@dataclass
class KeepingCapture(cap.Capture):
    """A capture that also keeps each analysed layer's post-RoPE query and key (for the reference)."""

    kept: dict[int, tuple[torch.Tensor, torch.Tensor, float | None]] = field(default_factory=dict)

    def attend(self, module, query, key, value, attention_mask, dropout, scaling, **kwargs):
        layer = getattr(module, "layer_idx", None)
        if layer in self.layers:
            self.kept[layer] = (query.detach(), key.detach(), scaling)
        return super().attend(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def random_qwen3(shape: dict[str, Any], layers: int, dtype: torch.dtype, device: str, seed: int = 0):
    """A random-weight ``Qwen3ForCausalLM`` of ``shape`` with ``layers`` layers, built on ``device``."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(num_hidden_layers=layers, tie_word_embeddings=False, **shape)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(device=device, dtype=dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, device: str, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def peak_bytes(fn, device: str) -> int | None:
    """CUDA peak memory allocated while ``fn`` runs (None on CPU)."""
    if not device.startswith("cuda"):
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return int(torch.cuda.max_memory_allocated())


def captured_forward(analyzer: Analyzer, ids: torch.Tensor, r0: int, keep: bool = False) -> cap.Capture:
    """One decoder forward over ``ids`` (1, N) with the analysis capture (response from ``r0``)."""
    row_weight = torch.zeros(ids.shape, device=ids.device)
    row_weight[:, r0:] = 1.0
    capture = analyzer.new_capture(row_weight)
    if keep:
        capture = KeepingCapture(**{f.name: getattr(capture, f.name) for f in fields(capture)})
    with cap.capturing(capture), torch.no_grad():
        analyzer.model.base_model(input_ids=ids, use_cache=False)
    return capture


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    scale = float(ref.abs().max())
    return float((got - ref).abs().max()) / scale if scale > 0 else float((got - ref).abs().max())


def reference_check(model, dtype_name: str, n: int, device: str) -> dict[str, Any]:
    """The capture of one n-token sequence against the float64 reference on the same q and k."""
    analyzer = Analyzer(model, AnalysisConfig(layers="mid5"))
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=gen).to(device)
    r0 = n // 8
    capture = captured_forward(analyzer, ids, r0, keep=True)
    reference = cap.Capture(
        layers=capture.layers, window=capture.window, bands=capture.bands, row_weight=capture.row_weight
    )
    bands = analyzer.capture_bands()
    for layer, (q, k, scaling) in capture.kept.items():
        reference.results[layer] = dense_layer_reductions(
            q, k, None, scaling=scaling, window=capture.window, bands=bands, row_weight=capture.row_weight
        )
    capture.kept.clear()
    errors: dict[str, float] = {}
    fai_band, receiver_band = bands[0], (analyzer.config.proximity, None)
    for name, pick in (
        ("span", lambda r: r.span),
        ("waad_rows", lambda r: r.waad[..., r0:]),
        ("fai_columns", lambda r: r.cols[fai_band][..., r0:]),
        ("receiver_columns", lambda r: r.cols[receiver_band][..., r0:]),
    ):
        errors[name] = max(
            rel_error(pick(capture.results[layer]), pick(reference.results[layer]))
            for layer in capture.layers
        )
    trace = TraceInput(ids[0].tolist(), r0)
    fast = analyzer.results_from_capture(capture, [trace], [0], [r0])[0]
    ref = analyzer.results_from_capture(reference, [trace], [0], [r0])[0]
    metrics = {
        "distance": rel_error(fast.distance, ref.distance),
        "waad": rel_error(fast.waad, ref.waad),
        "fai": rel_error(fast.fai.nan_to_num(0.0), ref.fai.nan_to_num(0.0)),
        "fai_receiver": rel_error(fast.fai_receiver.nan_to_num(0.0), ref.fai_receiver.nan_to_num(0.0)),
    }
    tolerance = TOLERANCE[dtype_name]
    return {
        "dtype": dtype_name,
        "tokens": n,
        "layers": list(capture.layers),
        "routes": {str(k): v for k, v in sorted(capture.routes.items())},
        "tolerance": tolerance,
        "reduction_errors": errors,
        "metric_errors": metrics,
        "same_head_classes": fast.heads == ref.heads,
        "same_receiver_heads": fast.receivers == ref.receivers,
        "passed": all(v <= tolerance for v in errors.values()),
    }


def timing(model, n: int, device: str, repeats: int, free_bytes: int | None) -> dict[str, Any]:
    """Plain forward vs captured forward vs whole analysis at n tokens; peak memory; routes."""
    from transformers.utils import is_flash_attn_2_available

    analyzer = Analyzer(model, AnalysisConfig(layers="mid5"))
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(2))
    ids = ids.to(device)
    r0 = n // 4
    out: dict[str, Any] = {
        "tokens": n,
        "dtype": str(model.dtype).removeprefix("torch."),
        "analysed_layers": list(analyzer.layers),
    }

    def plain() -> None:
        with torch.no_grad():
            model.base_model(input_ids=ids, use_cache=False)

    captured: dict[str, cap.Capture] = {}

    def with_capture() -> None:
        captured["last"] = captured_forward(analyzer, ids, r0)

    def analysis() -> None:
        analyzer.analyze([TraceInput(ids[0].tolist(), r0)])

    plain()  # warm-up
    with_capture()
    out["seconds"] = {
        "plain_sdpa": best_time(plain, device, repeats),
        "capture": best_time(with_capture, device, repeats),
        "analysis": best_time(analysis, device, repeats),
    }
    out["routes"] = {str(k): v for k, v in sorted(captured["last"].routes.items())}
    out["peak_bytes"] = {
        "plain_sdpa": peak_bytes(plain, device),
        "capture": peak_bytes(with_capture, device),
        "analysis": peak_bytes(analysis, device),
    }
    if is_flash_attn_2_available() and device.startswith("cuda"):
        model.set_attn_implementation("flash_attention_2")
        try:
            out["seconds"]["plain_flash_attention_2"] = best_time(plain, device, repeats)
        finally:
            cap.use_streaming_attention(model)
    else:
        out["flash_attention_2"] = "not installed" if device.startswith("cuda") else "CPU run"
    cfg = model.config
    eager = cfg.num_hidden_layers * cfg.num_attention_heads * n * n * model.dtype.itemsize
    out["eager_maps_bytes_estimate"] = eager
    if free_bytes is None:
        out["eager_output_attentions"] = "CPU run: not measured"
    elif eager * 1.5 > free_bytes:
        out["eager_output_attentions"] = f"does not fit: its maps need about {eager / 2**30:.0f} GiB"
    else:

        def eager_forward() -> None:
            with torch.no_grad():
                model(input_ids=ids, output_attentions=True, use_cache=False, logits_to_keep=1)

        model.set_attn_implementation("eager")
        try:
            out["peak_bytes"]["eager_output_attentions"] = peak_bytes(eager_forward, device)
        except torch.cuda.OutOfMemoryError:
            out["eager_output_attentions"] = "out of memory"
        finally:
            cap.use_streaming_attention(model)
    seconds = out["seconds"]
    out["capture_over_plain"] = seconds["capture"] / seconds["plain_sdpa"]
    out["analysis_over_plain"] = seconds["analysis"] / seconds["plain_sdpa"]
    return out


def char_tokenizer():
    """A character-level fast tokenizer built in memory (printable ASCII + <pad>, <s>, </s>)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab |= {chr(c): i + 3 for i, c in enumerate(range(32, 127))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def grpo_check(device: str, quick: bool, steps: int, repeats: int, out_dir: Path) -> dict[str, Any]:
    """A few GRPO steps with rhythm credit in TRL's loss forward; the credit share of a step."""
    try:
        import datasets
        from trl import GRPOConfig
    except ImportError as err:
        return {"skipped": f"needs TRL and datasets ({err})"}
    from attnrhythm.train import RhythmCreditConfig, RhythmGRPOTrainer

    tokenizer = char_tokenizer()
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    shape = dict(TOY, vocab_size=len(tokenizer)) if quick else dict(
        TOY, vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64,
    )
    model = random_qwen3(shape, 4, dtype, device, seed=3)
    model.config.pad_token_id, model.config.eos_token_id = 0, 2
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 2
    prompts = [f"Add {a} and {b}:" for a in range(8) for b in range(8)]
    data = datasets.Dataset.from_list([{"prompt": p} for p in prompts])

    def lowercase_share(prompts, completions, **kwargs):
        return [sum(c.islower() for c in text) / (len(text) + 1) for text in completions]

    kept: dict[str, Any] = {}

    class Keeping(RhythmGRPOTrainer):
        def _apply_rhythm_credit(self, output):
            kept["batch"] = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
            return super()._apply_rhythm_credit(output)

    args = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=not cuda,
        bf16=cuda,
        report_to=[],
        max_steps=steps,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16 if quick else 256,
        logging_steps=1,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Keeping(
            model,
            reward_funcs=lowercase_share,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            rhythm=RhythmCreditConfig(strategy="coupled", layers="all", fai_horizon=(2, 8), window=4),
        )
        trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    step_time = sum(h["step_time"] for h in logs) / len(logs)
    batch = kept["batch"]  # the last micro-batch, with its plain (B,) advantages
    shaped = dict(batch)
    trainer.compute_loss(trainer.model, shaped)
    with_capture = best_time(lambda: trainer.compute_loss(trainer.model, dict(batch)), device, repeats)
    without = best_time(lambda: trainer.compute_loss(trainer.model, dict(shaped)), device, repeats)
    return {
        "steps": trainer.state.global_step,
        "dtype": str(dtype).removeprefix("torch."),
        "credit_path": trainer.rhythm_credit_path,
        "rhythm_fused": [h.get("rhythm/fused") for h in logs],
        "gamma_mean": [h.get("rhythm/gamma_mean") for h in logs],
        "loss_finite": all(math.isfinite(h.get("loss", float("nan"))) for h in logs),
        "seconds_per_step": step_time,
        "loss_forward_with_capture_s": with_capture,
        "loss_forward_plain_s": without,
        "credit_share": (with_capture - without) / step_time,
    }


def main(
    device: str = typer.Option("cuda", help="cuda (one GPU) or cpu"),
    quick: bool = typer.Option(False, help="toy sizes (CI on CPU)"),
    out: Path = typer.Option(Path("gpu_check.json"), help="JSON file written"),
    layers: int = typer.Option(8, help="decoder layers of the Qwen3-8B-shaped model"),
    ref_n: int = typer.Option(2048, help="tokens of the float64 reference check"),
    ns: str = typer.Option("8192,32768", help="lengths of the timing runs"),
    repeats: int = typer.Option(3, help="timings per measurement (best kept)"),
    grpo_steps: int = typer.Option(3, help="GRPO steps of the credit check"),
    budget: float = typer.Option(420.0, help="seconds after which remaining parts are skipped"),
) -> None:
    started = time.perf_counter()
    if device.startswith("cuda") and not torch.cuda.is_available():
        console.print("[red]error:[/] no CUDA device: run with --device cpu --quick")
        raise typer.Exit(1)
    shape, n_layers = (TOY, 4) if quick else (QWEN3_8B, layers)
    if quick:
        ref_n, ns, repeats, grpo_steps = min(ref_n, 96), "128,256", 1, 2
    cuda = device.startswith("cuda")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "quick": quick,
        "model": {"shape": shape, "layers": n_layers},
        "reference": [],
        "timing": [],
    }

    def left() -> float:
        return budget - (time.perf_counter() - started)

    models = {"bfloat16": random_qwen3(shape, n_layers, torch.bfloat16, device)}
    for name in ("bfloat16", "float16"):
        if left() <= 0:
            report["reference"].append({"dtype": name, "skipped": "time budget"})
            continue
        model = models.get(name) or copy.deepcopy(models["bfloat16"]).to(DTYPES[name])  # .to is in place
        report["reference"].append(reference_check(model, name, ref_n, device))
        if name != "bfloat16":
            del model
    model = models["bfloat16"]
    free = torch.cuda.mem_get_info()[0] if device.startswith("cuda") else None
    for n in [int(x) for x in ns.split(",") if x]:
        if left() <= 0:
            report["timing"].append({"tokens": n, "skipped": "time budget"})
            continue
        try:
            report["timing"].append(timing(model, n, device, repeats, free))
        except torch.cuda.OutOfMemoryError:
            report["timing"].append({"tokens": n, "skipped": "out of memory"})
    del models, model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    report["routes"] = {f"reference-{r['dtype']}": r.get("routes") for r in report["reference"]}
    report["routes"] |= {f"timing-{t['tokens']}": t.get("routes") for t in report["timing"]}
    if left() <= 0:
        report["grpo"] = {"skipped": "time budget"}
    else:
        report["grpo"] = grpo_check(device, quick, grpo_steps, max(repeats, 2), out.with_suffix(".grpo"))
    report["seconds"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    show(report, out)


def show(report: dict[str, Any], out: Path) -> None:
    table = Table(title=f"gpu_check on {report['device']} ({report['seconds']:.0f} s) -> {out}")
    table.add_column("check")
    table.add_column("result")
    for ref in report["reference"]:
        if "skipped" in ref:
            table.add_row(f"reference {ref['dtype']}", ref["skipped"])
            continue
        errors = ", ".join(f"{k} {v:.1e}" for k, v in ref["reduction_errors"].items())
        verdict = "[green]pass[/]" if ref["passed"] else "[red]FAIL[/]"
        table.add_row(
            f"reference {ref['dtype']} {ref['tokens']} tokens",
            f"{verdict} (tol {ref['tolerance']:.0e}): {errors}; same heads {ref['same_head_classes']}",
        )
    for t in report["timing"]:
        if "skipped" in t:
            table.add_row(f"timing {t['tokens']}", t["skipped"])
            continue
        s = t["seconds"]
        mem = t["peak_bytes"]
        text = (
            f"plain {s['plain_sdpa']:.3f} s, capture {t['capture_over_plain']:.2f}x, "
            f"analysis {t['analysis_over_plain']:.2f}x"
        )
        if "plain_flash_attention_2" in s:
            text += f", flash-attn-2 {s['plain_flash_attention_2']:.3f} s"
        if mem["plain_sdpa"] is not None:
            gib = {k: v / 2**30 for k, v in mem.items() if v is not None}
            text += f"; peak GiB plain {gib['plain_sdpa']:.1f}, analysis {gib['analysis']:.1f}"
            eager = gib.get("eager_output_attentions")
            text += f", eager {eager:.1f}" if eager else f", eager: {t.get('eager_output_attentions')}"
        table.add_row(f"timing {t['tokens']} tokens", text)
    for name, routes in report["routes"].items():
        if routes:
            table.add_row(f"routes {name}", ", ".join(f"{k}:{v}" for k, v in routes.items()))
    grpo = report["grpo"]
    if "skipped" in grpo:
        table.add_row("GRPO", grpo["skipped"])
    else:
        table.add_row(
            f"GRPO {grpo['steps']} steps {grpo['dtype']} ({grpo['credit_path']})",
            f"{grpo['seconds_per_step']:.2f} s/step, credit share {grpo['credit_share']:.1%}",
        )
    console.print(table)


if __name__ == "__main__":
    typer.run(main)
