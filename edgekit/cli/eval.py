"""`edgekit eval`: one model's quality, or teacher / student / bundle side by side in one table.

Bundles run on the device runtime (no torch); Hugging Face folders, GGUF files and teacher sources
run in PyTorch (imported only then). Metrics: edgekit.workshop.evaluate; the table: edgekit.workshop.eval_table.
May import: stdlib, click, edgekit (build modules inside the command).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.core.errors import ConfigError

ROLES = ("teacher", "student", "bundle")


@click.command("eval")
@click.argument("model", required=False)
@click.option("--teacher", help="Teacher: a model reference, or 'recipe' for the recipe's teacher.")
@click.option("--student", help="Student: a Hugging Face folder (or any model reference).")
@click.option("--bundle", help="Bundle folder or .tar (run on the device runtime).")
@click.option("--data", "data", multiple=True,
              help="Text file to evaluate on (repeatable) [default: the recipe's held-out text].")
@click.option("--recipe", "-r", default="smollm2-135m", show_default=True, help="Recipe whose held-out text is the default.")
@click.option("--tokens", default=4096, show_default=True, type=click.IntRange(2, None), help="Tokens per text.")
@click.option("--window", default=256, show_default=True, type=click.IntRange(1, None), help="Tokens per window.")
@click.option("--chat", "chat_file", help="Chat examples (JSONL {prompt, answer}) for chat-answer perplexity and "
                                          "top-1 agreement [default: the recipe's held-out chat examples, if any; "
                                          "'none': no chat rows].")
@click.option("--suite", multiple=True, type=click.Choice(["sst2"]), help="Task suite scored by log-likelihood.")
@click.option("--sst2-file", default=None,
              help="SST-2 TSV (sentence<TAB>label) [default: shared:data/sst2/glue_validation.tsv].")
@click.option("--sst2-sentences", default=200, show_default=True, type=click.IntRange(0, None),
              help="First N sentences of SST-2 (0: all).")
@click.option("--sst2-phrasing", default=None,
              help="SST-2 prompts, comma-separated (chat-question, chat-review-first, plain) "
                   "[default: chat-question and plain with a chat template, else plain].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eval_cmd(model, teacher, student, bundle, data, recipe, tokens, window, chat_file, suite, sst2_file,
             sst2_sentences, sst2_phrasing, as_json):
    """Quality of MODEL, or of --teacher / --student / --bundle side by side with ratios to the teacher.

    \b
    Causal LMs: perplexity of held-out text, chat-answer perplexity and teacher-forced top-1 agreement on
    chat examples (--chat), SST-2 accuracy by log-likelihood (--suite sst2). Encoders: STS-B Spearman.
    A model is a bundle (device runtime), a Hugging Face folder, a .gguf file or a teacher source
    (e.g. shared:models/stories260k). The default recipe's teacher (--teacher recipe) is SmolLM2-135M-Instruct
    as a Q4_1 GGUF dequantized to fp32."""
    from edgekit.core.recipes import load_recipe

    columns = {r: v for r, v in zip(ROLES, (teacher, student, bundle)) if v}
    if model and columns:
        raise click.UsageError("give MODEL or --teacher/--student/--bundle, not both")
    if not model and not columns:
        raise click.UsageError("give MODEL or at least one of --teacher/--student/--bundle")
    rcp = load_recipe(recipe)
    run = _encoder_runner(rcp, data) if rcp.task == "feature-extraction" else _causal_runner(
        rcp, data, tokens, window, chat_file, suite, sst2_file, sst2_sentences, sst2_phrasing)
    if rcp.task != "feature-extraction":
        from edgekit.workshop.evaluate import model_source

        for ref in [model] if model else columns.values():
            if ref != "recipe" and not Path(ref).expanduser().exists():
                model_source(ref)  # a missing path fails before a model loads
    if model:
        result = run(model)
        click.echo(json.dumps(result, indent=2) if as_json else "\n".join(single_lines(result)))
        return
    from edgekit.workshop.eval_table import compare, format_table

    results = {role: run(ref) for role, ref in columns.items()}
    table = compare(results)
    if as_json:
        click.echo(json.dumps({**table, "results": results}, indent=2))
    else:
        click.echo("\n".join(format_table(table)))


def _encoder_runner(rcp, data):
    from edgekit.workshop.encoder import eval_encoder

    return lambda ref: eval_encoder(ref, list(data) or rcp.data["data"]["eval"])


def chat_examples(rcp, chat_file: str | None) -> list[dict] | None:
    """The chat examples to score: --chat FILE, 'none' (no chat rows), or the recipe's held-out ones if
    a distillation on this machine made them."""
    from edgekit.device.chat_examples import read_examples
    from edgekit.workshop.evaluate import default_chat_examples

    if chat_file == "none":
        return None
    chat_path = Path(chat_file).expanduser() if chat_file else default_chat_examples(rcp)
    chat = read_examples(chat_path) if chat_path else None
    if chat is not None and not any(e.get("answer") for e in chat):
        raise ConfigError(f"{chat_path}: no example has an \"answer\" to score")
    return chat


def _causal_runner(rcp, data, tokens, window, chat_file, suite, sst2_file, sst2_sentences, sst2_phrasing):
    """Read every input once (a bad path fails before any model loads); returns MODEL -> result."""
    from edgekit.workshop import textdata
    from edgekit.workshop.evaluate import default_eval_texts, eval_causal
    from edgekit.core.paths import resolve_data_ref
    from edgekit.device import sst2

    texts = ({f.name: textdata.read_text(f) for f in textdata.expand_paths(list(data))} if data
             else default_eval_texts(rcp)[0])
    chat = chat_examples(rcp, chat_file)
    rows = None
    if "sst2" in suite:
        path = Path(sst2_file).expanduser() if sst2_file else resolve_data_ref(sst2.DATA_REF)
        rows = sst2.read_sst2(path, sst2_sentences or None)
        if sst2_phrasing:
            sst2.phrasings_for(None, sst2_phrasing)  # an unknown name fails now, not after loading a model
    return lambda ref: eval_causal(ref, texts, tokens, window, recipe=rcp, chat=chat, sst2=rows,
                                   sst2_phrasing=sst2_phrasing)


def single_lines(result: dict) -> list[str]:
    from edgekit.workshop.eval_table import sst2_results

    lines = [f"{result['model']}  [{result['evaluated_with']}]"]
    for name, r in result.get("perplexity", {}).items():
        lines.append(f"  {name:<45} perplexity {r['perplexity']:>10.3f}  ({r['tokens']} tokens)")
    if "chat" in result:
        c = result["chat"]
        lines.append(f"  {'chat answers':<45} perplexity {c['perplexity']:>10.3f}  top-1 agreement "
                     f"{c['agreement']:.4f}  ({c['examples']} examples, {c['tokens']} answer tokens)")
    for s in sst2_results(result):
        lines.append(f"  {'SST-2':<45} accuracy {s['accuracy']:.4f}  ({s['sentences']} sentences, prompt "
                     f"{s['phrasing']}, majority baseline {s['majority_baseline']:.4f})")
    for name, r in result.get("sts", {}).items():
        lines.append(f"  {name:<45} STS-B Spearman {r['spearman']:.4f}  ({r['pairs']} pairs)")
    return lines
